"""Durable topic subscriptions, named from either broker's SUBSCRIBE headers.

ActiveMQ style: ``client-id`` on CONNECT plus ``activemq.subscriptionName`` on
SUBSCRIBE. RabbitMQ style: ``durable:true`` (or ``persistent:true``),
``auto-delete:false`` and the subscription ``id`` (``x-queue-name`` overrides the
name). Both map to one mailbox name; see docs/broker.md.
"""

from __future__ import annotations

from vesper.broker.errors import ProtocolError

AMQ_NAME = "activemq.subscriptionName"


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _rabbit_name(headers: dict[str, str], sub_id: str, destination: str) -> str:
    return "rabbitmq:" + (headers.get("x-queue-name") or f"{sub_id}@{destination}")


def activemq_prefix(client_id: str) -> str:
    """The start of every ActiveMQ-style name of ``client_id``. A ``:`` (and ``\\``) in
    the client-id is escaped, so no other client-id's names share the prefix."""
    return "activemq:" + client_id.replace("\\", "\\\\").replace(":", "\\c") + ":"


def _activemq_name(amq: str, client_id: str | None) -> str:
    """ActiveMQ keys a durable subscription on (client-id, subscriptionName)."""
    if not client_id:
        raise ProtocolError(
            "durable subscription needs a client-id",
            f"{AMQ_NAME}:{amq} requires a client-id header on CONNECT",
        )
    return activemq_prefix(client_id) + amq


def subscribe_name(
    headers: dict[str, str], client_id: str | None, sub_id: str, destination: str
) -> str | None:
    """The durable subscription a SUBSCRIBE asks for, or None for a plain one."""
    if not destination.startswith("/topic/"):
        return None
    amq = headers.get(AMQ_NAME)
    if amq is not None:
        return _activemq_name(amq, client_id)
    durable = _is_true(headers.get("durable")) or _is_true(headers.get("persistent"))
    # RabbitMQ deletes a durable:true queue on disconnect unless auto-delete:false.
    if durable and headers.get("auto-delete", "").strip().lower() == "false":
        return _rabbit_name(headers, sub_id, destination)
    return None


def unsubscribe_name(
    headers: dict[str, str],
    client_id: str | None,
    sub_id: str,
    live_name: str | None,
    live_destination: str | None,
) -> str | None:
    """The durable subscription an UNSUBSCRIBE asks to delete, or None to only detach."""
    amq = headers.get(AMQ_NAME)
    if amq is not None:
        return _activemq_name(amq, client_id)
    if _is_true(headers.get("durable")) or _is_true(headers.get("persistent")):
        if live_name is not None and live_name.startswith("rabbitmq:"):
            return live_name
        destination = headers.get("destination") or live_destination
        if destination:
            return _rabbit_name(headers, sub_id, destination)
    return None
