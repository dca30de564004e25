"""Errors raised by the embedded STOMP broker."""

import logging

from vesper.errors import VesperError


class BrokerError(VesperError):
    """Base class of the broker's own errors."""


class BrokerConfigError(BrokerError):
    """A broker setting (port, limit, fault fraction, users file, TLS file) is invalid."""


class ProtocolError(BrokerError):
    """A client sent a frame the broker refuses; it gets an ERROR frame and is disconnected.

    ``message`` becomes the ERROR frame's ``message`` header; ``detail`` its body.
    """

    log_level = logging.INFO
    """How the broker logs it: client mistakes are INFO, refusals WARNING."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BrokerStartError(BrokerError):
    """A broker (thread or subprocess) did not start listening before its deadline."""

    retryable = True


class ControlError(BrokerError):
    """A control-channel request was refused (channel disabled, bad JSON, unknown setting)."""


class AccessDenied(ProtocolError):
    """An authenticated client asked for something its user may not do.

    Like every ProtocolError it becomes an ERROR frame and a close; the broker also logs
    it at WARNING, naming the user and the destination.
    """

    log_level = logging.WARNING


class LimitExceeded(ProtocolError):
    """A client went past a limit meant to protect the broker (too many
    subscriptions); logged at WARNING like an access refusal."""

    log_level = logging.WARNING
