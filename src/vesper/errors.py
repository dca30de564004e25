"""One error hierarchy for Vesper.

Front ends (HTTP, CLI) translate these into statuses or one-line messages; the core
raises them with a message that names the bad value and, where it helps, the fix.
"""


class VesperError(Exception):
    """Base class of every error Vesper raises on purpose."""

    #: True when repeating the same call later may succeed (a loop may retry it).
    retryable: bool = False


class ConfigError(VesperError):
    """A configuration variable is unknown or has an invalid value."""


class InvalidDocument(VesperError):
    """A document, id, patch or value is not acceptable (not an object, NaN, ...)."""


class InvalidOperation(VesperError):
    """A transaction operation is malformed or unknown."""


class DocumentExists(VesperError):
    """Create was asked for an id that already names a live object."""


class DocumentNotFound(VesperError):
    """The operation needs an object that does not exist (or is deleted)."""


class PreconditionFailed(VesperError):
    """A conditional write (``if_version``, ``If-Match``, ``If-None-Match``) found the
    object at another version, or present or absent against the condition."""


class AccessDenied(VesperError):
    """A request without a valid token, or with a read-only one for a write."""


class IdempotencyKeyReused(VesperError):
    """An idempotency key given again with a different request."""


class InvalidRevision(VesperError):
    """A revision string does not parse as a version vector."""


class InvalidChangeset(VesperError):
    """A changeset given to ``apply`` is malformed; the store is left untouched."""


class HistoryDisabled(VesperError):
    """The operation needs ``save_history = True``."""


class StoreClosed(VesperError):
    """The store was closed."""


class WritesRefused(VesperError):
    """This node does not take local writes now; the message says why and what to do."""

    retryable = True


class StorageError(VesperError):
    """The storage backend failed (disk full, locked database, corrupt file)."""

    retryable = True


class StoreDamaged(StorageError):
    """The store's file or its history is damaged: SQLite reports corruption, or a stored
    changeset no longer matches the hash chain. Retrying cannot cure it, so the store
    takes no more writes or changesets; the message names the file and the fix."""

    retryable = False
