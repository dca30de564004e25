"""What an ActiveMQ broker holds for a destination, asked over STOMP.

ActiveMQ's statistics plugin (``<statisticsBrokerPlugin/>``, which
``scripts/brokers/activemq.sh`` enables) answers a message sent to
``ActiveMQ.Statistics.Destination.<name>`` with a map message of that destination's
counters, sent to the message's ``reply-to``. STOMP delivers map messages only with a
``transformation`` header, through XStream on the broker's classpath (Debian's
libxstream-java: activemq.sh links it when installed).

What ActiveMQ 5.17 does NOT tell: how many messages one durable subscription holds.
A topic's ``size`` is always 0, and the plugin's subscription statistics need JMX and
leave durable subscriptions out. Its topic counters (since the broker started) do
give the number held for all the topic's durable subscriptions together, as
``durable_backlog`` computes it: each message sent is stored once per durable
subscription, and leaves it when acknowledged or expired.
"""

from __future__ import annotations

import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import stomp

STATS_PREFIX = "ActiveMQ.Statistics.Destination."
END_OF_LIST = "ActiveMQ.Statistics.Destination.List.End.With.Null"
"""Appended to a query, makes the broker send an empty map after the answers, so that
an unknown destination is an answer too (otherwise nothing comes back)."""


@dataclass(frozen=True)
class DestinationStats:
    """One destination's counters, since the broker started."""

    enqueued: int
    """Messages sent to it (a topic counts each message once)."""
    dequeued: int
    """Messages acknowledged (a topic counts once per subscription)."""
    expired: int
    """Messages that expired (a topic counts once per subscription)."""
    dispatched: int
    in_flight: int
    """Dispatched, not yet acknowledged."""
    consumers: int
    """A topic's durable subscriptions, online or not, plus its live subscribers."""
    size: int
    """Messages held by a queue; always 0 for a topic."""


def destination_stats(
    host: str,
    port: int,
    destination: str,
    *,
    login: str | None = None,
    passcode: str | None = None,
    timeout: float = 10.0,
) -> DestinationStats | None:
    """The counters of ``destination`` (``/topic/NAME`` or ``/queue/NAME``), or None
    when the broker has no such destination."""
    kind, _, name = destination.lstrip("/").partition("/")
    if kind not in ("topic", "queue") or not name:
        raise ValueError(f"not a /topic/ or /queue/ destination: {destination}")
    maps = _ask(host, port, f"/{kind}/{STATS_PREFIX}{name}{END_OF_LIST}", login, passcode, timeout)
    for entries in maps:
        if entries.get("destinationName") == f"{kind}://{name}":
            return DestinationStats(
                enqueued=int(entries["enqueueCount"]),
                dequeued=int(entries["dequeueCount"]),
                expired=int(entries["expiredCount"]),
                dispatched=int(entries["dispatchCount"]),
                in_flight=int(entries["inflightCount"]),
                consumers=int(entries["consumerCount"]),
                size=int(entries["size"]),
            )
    return None


def durable_backlog(
    host: str,
    port: int,
    topic: str,
    *,
    login: str | None = None,
    passcode: str | None = None,
    timeout: float = 10.0,
) -> int:
    """Messages the broker holds for the durable subscriptions of ``topic`` (a name,
    without ``/topic/``), counting delivered ones not yet acknowledged: for one
    subscription while the others have acknowledged everything.

    Exact when every subscription of the topic is durable, all of them existed before
    its first message, the broker has not restarted since (the counters start at 0),
    and at most one subscription is offline when messages expire: the broker's expiry
    task counts a message once for every offline subscription, even one that had
    acknowledged it. That is a Vesper channel's changeset topic in a test that starts
    its nodes before writing and stops one. A topic the broker does not know holds
    nothing.
    """
    stats = destination_stats(
        host, port, f"/topic/{topic}", login=login, passcode=passcode, timeout=timeout
    )
    if stats is None:
        return 0
    held = stats.enqueued * stats.consumers - stats.dequeued - stats.expired
    if held < 0:
        raise AssertionError(f"{topic}: {stats} do not count one topic's backlog (see above)")
    return held


class _Answers(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.maps: list[dict[str, str]] = []
        self.done = threading.Event()
        self.error: str | None = None

    def on_message(self, frame: stomp.utils.Frame) -> None:
        root = ET.fromstring(frame.body)
        entries = {}
        for entry in root:
            key, value = list(entry)
            entries[key.text or ""] = value.text or ""
        if entries:
            self.maps.append(entries)
        else:
            self.done.set()

    def on_error(self, frame: stomp.utils.Frame) -> None:
        self.error = frame.headers.get("message", "ERROR")
        self.done.set()


def _ask(
    host: str, port: int, query: str, login: str | None, passcode: str | None, timeout: float
) -> list[dict[str, str]]:
    conn = stomp.Connection12(
        [(host, port)], heartbeats=(0, 0), vhost="/", auto_decode=False, timeout=timeout
    )
    answers = _Answers()
    conn.set_listener("stats", answers)
    conn.connect(login, passcode, wait=True)
    try:
        reply = f"/temp-queue/stats-{uuid.uuid4().hex[:8]}"
        conn.subscribe(reply, id="stats", ack="auto", headers={"transformation": "jms-map-xml"})
        conn.send(query, body="", headers={"reply-to": reply})
        if not answers.done.wait(timeout):
            raise AssertionError(
                f"no statistics from {host}:{port} after {timeout:g} s: is "
                "statisticsBrokerPlugin enabled, and XStream on the broker's classpath?"
            )
        if answers.error is not None:
            raise AssertionError(f"{host}:{port} refused the statistics query: {answers.error}")
        return answers.maps
    finally:
        conn.disconnect()
