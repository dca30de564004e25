"""Replication counters, shared by the threads (plain ints: the GIL makes += safe
enough for counters read only for display)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stats:
    messages_sent: int = 0
    changesets_sent: int = 0
    messages_received: int = 0
    changesets_received: int = 0
    send_errors: int = 0
    receive_errors: int = 0
    last_message_received: str | None = None
    catchup_requests_sent: int = 0
    catchup_requests_answered: int = 0
    catchup_changesets_received: int = 0
    forks: int = 0
