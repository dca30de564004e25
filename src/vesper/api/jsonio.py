"""JSON in and out without pydantic: raw bodies through orjson, strict query strings.

Hot paths read the raw body once and hand the parsed value to the store, which
validates documents itself; the OpenAPI document describes the same shapes. Every
JSON body and JSON parameter goes through vesper.document.strict_json, which refuses
duplicate keys and integers outside the signed 64-bit range (orjson alone would keep
the last key and turn the integer into a float).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

from vesper.api.errors import JSON_TYPE, HttpError
from vesper.document import strict_json


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status, media_type=JSON_TYPE)


def raw_json_response(text: str | bytes, status: int = 200) -> Response:
    """A response from JSON text the store already holds (no re-encoding)."""
    return Response(text, status, media_type=JSON_TYPE)


async def read_json(request: Request, what: str = "request body") -> Any:
    """The parsed JSON body; InvalidDocument (400) naming the problem when it is not
    JSON, repeats a key or holds an integer out of range."""
    return strict_json.loads(await request.body(), what)


async def read_json_object(request: Request, what: str = "request body") -> dict[str, Any]:
    value = await read_json(request, what)
    if type(value) is not dict:
        raise HttpError(400, f"{what} must be a JSON object, got {json_type(value)}")
    return value


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def query_params(request: Request, allowed: Collection[str] = ()) -> dict[str, str]:
    """The query parameters, each given at most once and all of them in ``allowed``."""
    query = request.scope["query_string"]
    if not query:
        return {}
    try:
        # Percent-decoded strictly: decoded leniently, %FF and %FE would both become
        # U+FFFD (Starlette's request.query_params decodes leniently).
        items = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "the query string is not valid UTF-8 once percent-decoded") from None
    found: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            expected = (
                f"this endpoint takes {', '.join(sorted(allowed))}"
                if allowed
                else "this endpoint takes no query parameters"
            )
            raise HttpError(400, f"unknown query parameter {name!r}: {expected}")
        if name in found:
            raise HttpError(400, f"query parameter {name!r} is given more than once")
        found[name] = value
    return found


def int_param(params: dict[str, str], name: str) -> int | None:
    """A non-negative integer parameter, or None when absent."""
    text = params.get(name)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise HttpError(
            400, f"query parameter {name!r} must be a non-negative integer, got {text!r}"
        )
    return int(text)


def json_object_param(params: dict[str, str], name: str) -> dict[str, Any] | None:
    text = params.get(name)
    if text is None:
        return None
    value = strict_json.loads(text, f"query parameter {name!r}")
    if type(value) is not dict:
        raise HttpError(
            400, f"query parameter {name!r} must be a JSON object, got {json_type(value)}"
        )
    return value
