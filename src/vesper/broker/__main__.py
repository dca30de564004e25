"""``python -m vesper.broker``: the same options as ``vesper broker``."""

from __future__ import annotations

import argparse
import sys

from vesper.broker.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vesper.broker", description="Vesper's embedded STOMP broker."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
