"""Replication over STOMP: outbox sender, apply worker, catch-up, failover."""
