"""``vesper keygen [--out FILE]``: a new Ed25519 key pair for ``replication_key_file``.

The private key (PKCS#8 PEM) goes to stdout or, with ``--out``, to a new file of mode
0600; the public key, as peers list it in ``replication_trusted_keys``, goes to stderr
so that ``vesper keygen > node.key`` leaves only the private key in the file.
"""

from __future__ import annotations

import argparse
import os
import sys

from vesper.errors import ConfigError
from vesper.trust.keys import NodeKey


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help="write the private key to a new file")


def run(args: argparse.Namespace) -> int:
    key = NodeKey.generate()
    if args.out:
        try:
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{args.out} exists; keygen never overwrites a key") from None
        with os.fdopen(fd, "wb") as out:
            out.write(key.pem())
    else:
        sys.stdout.buffer.write(key.pem())
        sys.stdout.flush()
    print(f"public key: {key.public}", file=sys.stderr)
    return 0
