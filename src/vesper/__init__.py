"""Vesper: a JSON document datastore with full revision history, replicated over STOMP."""

__version__ = "0.1.0"
