"""The HTTP requests the ``vesper`` commands that watch nodes (``status``, ``verify``)
make of a node, with the token, CA and timeout options they share.

Plain urllib: a few GETs of JSON need no HTTP client library, and the commands stay
usable wherever Vesper is installed.
"""

from __future__ import annotations

import argparse
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from vesper.errors import VesperError
from vesper.store.digest import BUCKETS, bucket_of
from vesper.trust.canonical import canonical

PAGE = 1000
DEFAULT_TIMEOUT_S = 30.0
_HEX_CHARS = 64
"""A SHA-256 in hex: the store's digest and each bucket's."""


class NodeClientError(VesperError):
    """A node could not be asked (unreachable, refused, or not a Vesper node)."""


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        help="API token (default: $VESPER_TOKEN, which keeps it out of the process list)",
    )
    parser.add_argument("--cacert", metavar="FILE", help="CA certificate(s) for https URLs")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )


class NodeClient:
    """The two requests verify makes of one node."""

    @classmethod
    def from_args(cls, url: str, args: argparse.Namespace) -> NodeClient:
        """A client with the options of :func:`add_client_arguments`."""
        token = args.token or os.environ.get("VESPER_TOKEN") or None
        return cls(url, token, args.cacert, args.timeout)

    def __init__(self, url: str, token: str | None, cacert: str | None, timeout: float) -> None:
        self.url = url
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._tls = ssl.create_default_context(cafile=cacert) if url.startswith("https:") else None

    def status(self) -> dict[str, Any]:
        answer = self._get("/api/status")
        if not isinstance(answer, dict) or not isinstance(answer.get("replication"), dict):
            raise NodeClientError(f"{self.url}/api/status: not a Vesper status answer")
        return answer

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
            raise NodeClientError(f"{self.url}/api/digest: not a Vesper digest answer")
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
                raise NodeClientError(f"{self.url}/api/objects: not a Vesper listing")
            for obj in page:
                obj_id = obj.get("id") if isinstance(obj, dict) else None
                if not isinstance(obj_id, str):
                    raise NodeClientError(f"{self.url}/api/objects: an object without an id")
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
            raise NodeClientError(f"{self.url}{path.split('?')[0]}: {_http_error(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeClientError(f"{self.url}: cannot connect ({reason})") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            where = self.url + path.split("?")[0]
            raise NodeClientError(f"{where}: the answer is not JSON") from None


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
        hint = " (not a Vesper node, or one too old to serve this)"
    return f"HTTP {exc.code}{detail}{hint}"


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _HEX_CHARS
        and all(c in "0123456789abcdef" for c in value)
    )
