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
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from vesper.errors import VesperError
from vesper.store.digest import BUCKETS, bucket_of
from vesper.trust.canonical import canonical

PAGE = 1000
DEFAULT_LIMIT = 100
DEFAULT_TIMEOUT_S = 30.0
_HEX_CHARS = 64
"""A SHA-256 in hex: the store's digest and each bucket's."""


class VerifyError(VesperError):
    """A node could not be asked (unreachable, refused, or not a Vesper node)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("urls", nargs="+", metavar="URL", help="base URL of a node (two or more)")
    parser.add_argument(
        "--token",
        help="API token (default: $VESPER_TOKEN, which keeps it out of the process list)",
    )
    parser.add_argument("--cacert", metavar="FILE", help="CA certificate(s) for https URLs")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"print at most this many differing objects (default {DEFAULT_LIMIT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    urls = [u.rstrip("/") for u in args.urls]
    if len(urls) < 2:
        print("vesper verify: give two or more node URLs to compare", file=sys.stderr)
        return 2
    if len(set(urls)) < len(urls):
        print("vesper verify: a URL is given twice", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("VESPER_TOKEN") or None
    nodes = [NodeClient(u, token, args.cacert, args.timeout) for u in urls]
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


class NodeClient:
    """The two requests verify makes of one node."""

    def __init__(self, url: str, token: str | None, cacert: str | None, timeout: float) -> None:
        self.url = url
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._tls = ssl.create_default_context(cafile=cacert) if url.startswith("https:") else None

    def digest(self) -> dict[str, Any]:
        answer = self._get("/api/digest")
        buckets = answer.get("buckets") if isinstance(answer, dict) else None
        if (
            not isinstance(buckets, list)
            or len(buckets) != BUCKETS
            or not all(_is_digest(b) for b in buckets)
            or not _is_digest(answer.get("digest"))
            or not isinstance(answer.get("revision"), str)
        ):
            raise VerifyError(f"{self.url}/api/digest: not a Vesper digest answer")
        return answer

    def objects_in(self, buckets: set[int]) -> dict[str, bytes]:
        """The canonical form of every object of these buckets, by id."""
        out: dict[str, bytes] = {}
        after = ""
        while True:
            query = {"limit": str(PAGE)}
            if after:
                query["after"] = after
            answer = self._get("/api/objects?" + urllib.parse.urlencode(query))
            page = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(page, list):
                raise VerifyError(f"{self.url}/api/objects: not a Vesper listing")
            for obj in page:
                obj_id = obj.get("id") if isinstance(obj, dict) else None
                if not isinstance(obj_id, str):
                    raise VerifyError(f"{self.url}/api/objects: an object without an id")
                if bucket_of(obj_id) in buckets:
                    out[obj_id] = canonical(obj)
            if len(page) < PAGE:
                return out
            after = page[-1]["id"]

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._tls) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:
            raise VerifyError(f"{self.url}{path.split('?')[0]}: {_http_error(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VerifyError(f"{self.url}: cannot connect ({reason})") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise VerifyError(f"{self.url}{path.split('?')[0]}: the answer is not JSON") from None


def _http_error(exc: urllib.error.HTTPError) -> str:
    detail = ""
    try:
        answer = orjson.loads(exc.read())
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            detail = f": {answer['error']}"
    except (orjson.JSONDecodeError, OSError):
        pass
    hint = ""
    if exc.code == 401:
        hint = " (give the API token: --token or $VESPER_TOKEN)"
    elif exc.code == 404:
        hint = " (not a Vesper node, or one too old to serve /api/digest)"
    return f"HTTP {exc.code}{detail}{hint}"


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _HEX_CHARS
        and all(c in "0123456789abcdef" for c in value)
    )
