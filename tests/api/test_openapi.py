"""The hand-written OpenAPI document lists exactly the routes the app serves."""

from __future__ import annotations

from starlette.routing import Route

from vesper.api import create_app
from vesper.api.openapi import openapi_document
from vesper.config import Settings
from vesper.node import Node


def served_operations() -> set[tuple[str, str]]:
    app = create_app(Node(Settings(storage_url="mem://")))
    operations = set()
    for route in app.app.routes:
        assert isinstance(route, Route)
        if not route.include_in_schema:
            continue
        path = route.path.replace(":path}", "}")
        operations |= {(path, m.lower()) for m in route.methods or () if m != "HEAD"}
    return operations


def test_every_route_is_documented_and_nothing_else() -> None:
    document = openapi_document()
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == served_operations()


def test_every_reference_resolves() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]

    def walk(value: object) -> None:
        if isinstance(value, dict):
            ref = value.get("$ref")
            if ref is not None:
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
