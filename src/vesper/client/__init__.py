"""A Python client for a remote Vesper node over its HTTP API (docs/client.md)."""

from vesper.client.asynchronous import AsyncClient
from vesper.client.calls import Commit
from vesper.client.synchronous import Client

__all__ = ["AsyncClient", "Client", "Commit"]
