"""The HTTP API of a node (docs/http-api.md), on Starlette and uvicorn."""

from vesper.api.app import create_app

__all__ = ["create_app"]
