"""Errors raised by the embedded STOMP broker."""

from vesper.errors import VesperError


class BrokerError(VesperError):
    """Base class of the broker's own errors."""


class BrokerConfigError(BrokerError):
    """A broker setting (port, limit, fault fraction, users file) has an invalid value."""


class ProtocolError(BrokerError):
    """A client sent a frame the broker refuses; it gets an ERROR frame and is disconnected.

    ``message`` becomes the ERROR frame's ``message`` header; ``detail`` its body.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class BrokerStartError(BrokerError):
    """A broker (thread or subprocess) did not start listening before its deadline."""

    retryable = True


class ControlError(BrokerError):
    """A control-channel request was refused (channel disabled, bad JSON, unknown setting)."""
