"""Vesper's embedded STOMP broker: see docs/broker.md."""

from vesper.broker.config import BrokerConfig
from vesper.broker.errors import (
    AccessDenied,
    BrokerConfigError,
    BrokerError,
    BrokerStartError,
    ControlError,
    LimitExceeded,
    ProtocolError,
)
from vesper.broker.faults import Faults, FaultSettings
from vesper.broker.process import BrokerProcess, BrokerThread
from vesper.broker.server import Broker

__all__ = [
    "AccessDenied",
    "Broker",
    "BrokerConfig",
    "BrokerConfigError",
    "BrokerError",
    "BrokerProcess",
    "BrokerStartError",
    "BrokerThread",
    "ControlError",
    "FaultSettings",
    "Faults",
    "LimitExceeded",
    "ProtocolError",
]
