"""``vesper verify URL URL...``: do these nodes hold the same objects? If not, which differ?

Fetches each node's ``GET /api/digest``. Equal digests: the nodes hold the same live
objects (each digest is of the revision it names), and that costs one small request per
node however large the stores are. Otherwise the 256 bucket digests say where they
differ: the objects of those buckets are listed on every node (``GET /api/objects``,
paged, filtered here by the bucket formula ``sha256(id)[0]``) and each object that is
not the same everywhere is printed with every node's version of it.

Nodes that are still replicating differ for a moment: run it again, or compare the
revisions printed. Exit status 0: in sync; 1: they differ; 2: usage or connection error.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from vesper.cli.node_client import NodeClient, add_client_arguments
from vesper.store.digest import BUCKETS, bucket_of

DEFAULT_LIMIT = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="base URL of a node (two or more)")
    add_client_arguments(parser)
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"print at most this many differing objects (default {DEFAULT_LIMIT})",
    )


def run(args: argparse.Namespace) -> int:
    urls = [u.rstrip("/") for u in args.urls]
    if len(urls) < 2:
        print("vesper verify: give two or more node URLs to compare", file=sys.stderr)
        return 2
    if len(set(urls)) < len(urls):
        print("vesper verify: a URL is given twice", file=sys.stderr)
        return 2
    nodes = [NodeClient.from_args(u, args) for u in urls]
    digests = [node.digest() for node in nodes]
    width = max(len(u) for u in urls)
    for url, answer in zip(urls, digests, strict=True):
        print(f"{url:<{width}}  revision {answer['revision'] or '(empty)'}  {answer['digest']}")
    if len({d["digest"] for d in digests}) == 1:
        print(f"in sync: {len(nodes)} nodes hold the same objects")
        return 0
    buckets = sorted(b for b in range(BUCKETS) if len({d["buckets"][b] for d in digests}) > 1)
    print(f"differ in {len(buckets)} of {BUCKETS} buckets: {', '.join(map(str, buckets))}")
    wanted = set(buckets)
    held = [node.objects_in(wanted) for node in nodes]
    differing = sorted(
        obj_id for obj_id in set().union(*held) if len({h.get(obj_id) for h in held}) > 1
    )
    for obj_id in differing[: max(0, args.limit)]:
        # As a JSON string: an id may hold any character, a newline too.
        print(f"{orjson.dumps(obj_id).decode()} (bucket {bucket_of(obj_id)})")
        for url, objects in zip(urls, held, strict=True):
            version = objects.get(obj_id)
            shown = version.decode() if version is not None else "(absent)"
            print(f"  {url:<{width}}  {shown}")
    hidden = len(differing) - max(0, args.limit)
    if hidden > 0:
        print(f"... and {hidden} more")
    if len(differing) == 1:
        print("1 object differs")
    elif differing:
        print(f"{len(differing)} objects differ")
    else:
        print("the listings agree: the nodes changed while they were compared; run again")
    return 1
