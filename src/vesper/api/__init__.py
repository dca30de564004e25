"""The HTTP API of a node (SPEC section 4), on Starlette and uvicorn."""

from vesper.api.app import create_app

__all__ = ["create_app"]
