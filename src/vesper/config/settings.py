"""The typed, validated settings of one node and the table of every variable.

``VARIABLES`` is the single source of truth: ``known_variables()``, the alias and typo
handling, the override parser and docs/configuration.md are all derived from it.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, cast

from vesper.errors import ConfigError
from vesper.storage.url import parse_storage_url

DEFAULT_TRUNK_ID: Final = "0A"
DEFAULT_SAVE_HISTORY: Final = False
DEFAULT_SEND_STOMP_ACK: Final = True
DEFAULT_REPLICATION_HEARTBEAT_MS: Final = 1000
DEFAULT_WORK_DIR: Final = "vesper_work"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
DEFAULT_API_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_LOG_LEVEL: Final = "info"
DEFAULT_REPLICATION_PEER_EXPIRY_S: Final = 7 * 24 * 3600
DEFAULT_REPLICATION_MAX_PENDING: Final = 100_000
DEFAULT_REPLICATION_PEER_GONE_AFTER_S: Final = 60
DEFAULT_REPLICATION_READY_TIMEOUT_S: Final = 60
DEFAULT_LOG_FORMAT: Final = "text"
DEFAULT_REPLICATION_TLS_VERIFY: Final = True
DEFAULT_API_HEADER_TIMEOUT_S: Final = 10.0
DEFAULT_API_BODY_TIMEOUT_S: Final = 60.0
DEFAULT_API_IDLE_TIMEOUT_S: Final = 5.0
DEFAULT_API_FEED_BUFFER_BYTES: Final = 1024 * 1024
DEFAULT_API_MAX_CONNECTIONS: Final = 1000
#: A bearer token shorter than this is refused: it could be guessed.
MIN_API_TOKEN_CHARS: Final = 16

BROKERS = ("activemq", "rabbitmq", "vesper", "coilmq")
QUEUE_TYPES = ("classic", "quorum")
DEFAULT_REPLICATION_QUEUE_TYPE: Final = "classic"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_PORT = 65535

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.-]+")
_SECRETS = frozenset({"replication_passcode", "api_token", "api_read_token"})
_TLS_SCHEME, _PLAIN_SCHEME = "stomp+ssl://", "stomp://"

Check = Callable[[str, object], object]


def _fail(name: str, expected: str, value: object) -> ConfigError:
    if name in _SECRETS:
        # Never echo a password into logs; its type is enough to find the mistake.
        shown = f"a value of type {type(value).__name__}"
    else:
        shown = repr(value)
        if len(shown) > 100:
            shown = shown[:97] + "..."
    return ConfigError(f"{name}: expected {expected}, got {shown}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)
    return value


def _int_range(low: int, high: int | None = None) -> Check:
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def check(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(name, expected, value)
        if value < low or (high is not None and value > high):
            raise _fail(name, expected, value)
        return value

    return check


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise _fail(name, "1 to 64 characters of A-Z a-z 0-9 _ -", value)
    return value


def _check_optional_id(name: str, value: object) -> str | None:
    return None if value is None else _check_id(name, value)


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, "a non-empty string", value)
    return value


def _check_optional_str(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(name, "a string or None", value)
    return value


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise _fail(name, "a number of seconds > 0", value)
    return float(value)


def _check_tokens(name: str, value: object) -> tuple[str, ...] | None:
    expected = (
        f"a token of at least {MIN_API_TOKEN_CHARS} printable ASCII characters without "
        "spaces, a list of them (to rotate), or None"
    )
    if value is None:
        return None
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list | tuple):
        raise _fail(name, expected, value)
    for token in listed:
        # Printable ASCII only: the token travels in an HTTP header.
        ok = isinstance(token, str) and len(token) >= MIN_API_TOKEN_CHARS
        if not ok or not all("!" <= c <= "~" for c in token):
            raise _fail(name, expected, token)
    return tuple(listed) or None


def _choice(options: tuple[str, ...], optional: bool = False) -> Check:
    expected = "one of " + ", ".join(repr(o) for o in options) + (" or None" if optional else "")

    def check(name: str, value: object) -> str | None:
        if value is None and optional:
            return None
        # Case is forgiven ("INFO" is a common spelling); the stored value is lower case.
        if not isinstance(value, str) or value.lower() not in options:
            raise _fail(name, expected, value)
        return value.lower()

    return check


def _check_channel(name: str, value: object) -> str:
    if not isinstance(value, str) or not _CHANNEL_RE.fullmatch(value):
        raise _fail(name, "a non-empty channel name of A-Z a-z 0-9 _ . -", value)
    return value


def _check_optional_channel(name: str, value: object) -> str | None:
    return None if value is None else _check_channel(name, value)


def _check_channels(name: str, value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise _fail(name, "a list of channel names or None", value)
    channels = tuple(_check_channel(name, item) for item in value)
    for channel in channels:
        if channels.count(channel) > 1:
            raise ConfigError(f"{name}: expected distinct channels, got {channel!r} twice")
    return channels or None


def _check_indexes(name: str, value: object) -> tuple[str, ...]:
    expected = "a list of property paths such as ['price', 'owner.name']"
    if not isinstance(value, list | tuple):
        raise _fail(name, expected, value)
    paths = []
    for item in value:
        if (
            not isinstance(item, str)
            or not item
            or len(item) > 1_000
            or any(not part for part in item.split("."))
        ):
            raise _fail(name, expected, item)
        if item not in paths:
            paths.append(item)
    return tuple(paths)


def _parse_host_port(name: str, item: object) -> tuple[str, int]:
    expected = (
        "'host:port', 'stomp+ssl://host:port' or a (host, port) pair with a port from 1 to 65535"
    )
    if isinstance(item, str):
        text = item.strip()
        for scheme in (_TLS_SCHEME, _PLAIN_SCHEME):
            text = text.removeprefix(scheme)
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise _fail(name, expected, item)
        host, port = host.removeprefix("[").removesuffix("]"), int(port_text)
    elif isinstance(item, list | tuple) and len(item) == 2:
        host, port = item
    else:
        raise _fail(name, expected, item)
    if not isinstance(host, str) or not host or any(c.isspace() or c == "/" for c in host):
        raise _fail(name, expected, item)
    if not _is_int(port) or not 1 <= port <= MAX_PORT:
        raise _fail(name, expected, item)
    return host, port


def _tls_hosts(value: object) -> frozenset[tuple[str, int]]:
    """The entries of ``replication_hosts`` written as ``stomp+ssl://host:port``."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return frozenset()
    return frozenset(
        _parse_host_port("replication_hosts", item)
        for item in items
        if isinstance(item, str) and item.strip().startswith(_TLS_SCHEME)
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_hosts(name: str, value: object) -> tuple[tuple[str, int], ...] | None:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()] if value.strip() else []
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise _fail(name, "a list of (host, port) pairs, 'h1:p1,h2:p2' or None", value)
    if len(value) == 2 and _is_int(value[1]):
        value = [value]  # one bare pair: no list of hosts can have a number as an item
    return tuple(_parse_host_port(name, item) for item in value) or None


def _check_trusted_keys(name: str, value: object) -> dict[str, tuple[str, ...]] | None:
    # Imported here: the settings table must load without the crypto package.
    from vesper.trust.keys import is_public_key

    expected = "a mapping of branch id to an 'ed25519:...' public key or a list of them"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(name, expected, value)
    out: dict[str, tuple[str, ...]] = {}
    for branch, keys in value.items():
        if not isinstance(branch, str) or not _ID_RE.fullmatch(branch):
            raise _fail(name, "branch ids of 1 to 64 characters of A-Z a-z 0-9 _ - as keys", branch)
        listed = [keys] if isinstance(keys, str) else keys
        if not isinstance(listed, list | tuple) or not listed:
            raise _fail(name, expected, keys)
        for key in listed:
            if not is_public_key(key):
                raise ConfigError(
                    f"{name}: {branch!r} has {str(key)[:60]!r}, which is not an Ed25519 "
                    "public key as 'vesper keygen' prints it ('ed25519:...')"
                )
        out[branch] = tuple(listed)
    return out or None


def _check_pair(settings: object, first: str, second: str) -> None:
    if (getattr(settings, first) is None) != (getattr(settings, second) is None):
        given, missing = (first, second) if getattr(settings, first) else (second, first)
        raise ConfigError(f"{given} is set without {missing}: set both or neither")


def _check_storage_url(name: str, value: object) -> str | None:
    if value is None:
        return None
    parse_storage_url(value, name)
    return cast(str, value)


@dataclass(frozen=True)
class Variable:
    """One configuration variable as users see it."""

    name: str
    type: str
    """The accepted type, as written in the docs."""
    default: object
    description: str
    """One line: what it does and what empty, zero or None means."""
    example: str
    """A value as written in a Vesper-style file."""
    check: Check = field(repr=False, compare=False)
    """Validates and normalises a value; raises ConfigError."""
    aliases: tuple[str, ...] = ()


# fmt: off
VARIABLES: tuple[Variable, ...] = (
    Variable("branch_id", "str", None,
             "this node's id, unique among all nodes that ever share data; "
             "unset means the same as trunk_id",
             "'0B'", _check_optional_id, aliases=("branchId",)),
    Variable("trunk_id", "str", DEFAULT_TRUNK_ID,
             "id of the original trunk branch (kept for Vesper compatibility)",
             "'0A'", _check_id),
    Variable("save_history", "bool", DEFAULT_SAVE_HISTORY,
             "keep the revision history; replication requires it",
             "True", _check_bool, aliases=("saveHistory",)),
    Variable("indexes", "list of str", (),
             "property paths to index for queries (built in the background when added)",
             "['price', 'owner.name']", _check_indexes),
    Variable("replication_hosts", "list of (host, port) | str | None", None,
             "STOMP brokers, tried in order (more than one enables failover); "
             "None or empty means no replication",
             "[('localhost', 61613)] or 'h1:61613,h2:61613'", _check_hosts),
    Variable("replication_channel", "str | None", None,
             "the one channel this node replicates on (broker destination /topic/<channel>)",
             "'orders'", _check_optional_channel),
    Variable("replication_channels", "list of str | None", None,
             "several channels for a hub node that relays between them; "
             "use instead of replication_channel; empty means None",
             "['site1', 'all_sites']", _check_channels),
    Variable("send_stomp_ack", "bool", DEFAULT_SEND_STOMP_ACK,
             "acknowledge each message once durably applied; False for brokers without ACK",
             "False", _check_bool),
    Variable("replication_broker", "str | None", None,
             "broker product: 'activemq', 'rabbitmq', 'vesper' or 'coilmq'; "
             "None detects it from the CONNECTED frame",
             "'rabbitmq'", _choice(BROKERS, optional=True)),
    Variable("replication_queue_type", "str", DEFAULT_REPLICATION_QUEUE_TYPE,
             "RabbitMQ only: 'classic' or 'quorum', the type of this node's durable "
             "subscription queue and node queue; 'quorum' replicates them across a "
             "RabbitMQ cluster; every node of a channel must use the same",
             "'quorum'", _choice(QUEUE_TYPES)),
    Variable("replication_login", "str | None", None,
             "broker login; None connects without credentials",
             "'vesper'", _check_optional_str),
    Variable("replication_passcode", "str | None", None,
             "broker passcode; never shown in error messages or repr",
             "'secret'", _check_optional_str),
    Variable("replication_tls", "bool", False,
             "connect to every broker over TLS (stomp+ssl); False uses TLS only for "
             "replication_hosts entries written 'stomp+ssl://host:port'",
             "True", _check_bool),
    Variable("replication_tls_ca", "str | None", None,
             "PEM file of the certificate authorities that sign the brokers' certificates; "
             "None means the system's trusted authorities",
             "'/etc/vesper/broker-ca.pem'", _check_optional_str),
    Variable("replication_tls_cert", "str | None", None,
             "PEM client certificate presented to brokers that require one (with "
             "replication_tls_key); None presents none",
             "'/etc/vesper/node.crt'", _check_optional_str),
    Variable("replication_tls_key", "str | None", None,
             "PEM private key of replication_tls_cert",
             "'/etc/vesper/node-tls.key'", _check_optional_str),
    Variable("replication_tls_verify", "bool", DEFAULT_REPLICATION_TLS_VERIFY,
             "check the broker's certificate and host name; False accepts any "
             "certificate (encryption without authentication: tests only)",
             "False", _check_bool),
    Variable("replication_heartbeat_ms", "int", DEFAULT_REPLICATION_HEARTBEAT_MS,
             "STOMP heart-beat interval in milliseconds; 0 disables heart-beats",
             "10000", _int_range(0)),
    Variable("replication_key_file", "str | None", None,
             "this node's Ed25519 private key (PEM, mode 0600, as 'vesper keygen' "
             "writes it); None means <work_dir>/<branch_id>.key, created on first start",
             "'/etc/vesper/node.key'", _check_optional_str),
    Variable("replication_trusted_keys", "dict of str to str or list | None", None,
             "branch id -> its public key(s) (several during a rotation); changesets and "
             "control messages of other branches or keys are refused; None or empty "
             "means trust on first use (the first key seen for a branch is pinned)",
             "{'0A': 'ed25519:...', '0B': ['ed25519:...', 'ed25519:...']}",
             _check_trusted_keys),
    Variable("replication_peer_expiry", "int", DEFAULT_REPLICATION_PEER_EXPIRY_S,
             "seconds after its last announcement a peer leaves the peer list and "
             "catch-up stops asking it; must be > 0",
             "86400", _int_range(1)),
    Variable("replication_peer_gone_after", "int", DEFAULT_REPLICATION_PEER_GONE_AFTER_S,
             "seconds without an announcement after which a peer is shown as gone "
             "(it stays listed until replication_peer_expiry); must be > 0",
             "300", _int_range(1)),
    Variable("replication_ready_timeout", "int", DEFAULT_REPLICATION_READY_TIMEOUT_S,
             "seconds replication may stay disconnected from every broker before /ready "
             "answers 503; must be > 0",
             "300", _int_range(1)),
    Variable("replication_message_ttl", "int", 0,
             "seconds a changeset message may wait on the broker for a node that is away "
             "(sent as ActiveMQ's expires and RabbitMQ's expiration); a node away longer "
             "gets what it missed from its peers by catch-up; 0 means no expiry",
             "604800", _int_range(0)),
    Variable("replication_max_pending", "int", DEFAULT_REPLICATION_MAX_PENDING,
             "most changesets kept waiting for a missing predecessor (one origin may "
             "hold a quarter of them); past it they are dropped and fetched again by "
             "catch-up later; must be > 0",
             "20000", _int_range(1)),
    Variable("storage_url", "str | None", None,
             "'sqlite:///relative.db', 'sqlite:////abs/path.db' (optionally with "
             "'?synchronous=normal|full') or 'mem://'; None means <work_dir>/<branch_id>.db",
             "'sqlite:////var/lib/vesper/node.db'", _check_storage_url),
    Variable("work_dir", "str", DEFAULT_WORK_DIR,
             "directory for data files, relative to the working directory unless absolute",
             "'/var/lib/vesper'", _check_text),
    Variable("host", "str", DEFAULT_HOST,
             "HTTP listen address; '0.0.0.0' listens on every interface",
             "'0.0.0.0'", _check_text),
    Variable("port", "int", DEFAULT_PORT,
             "HTTP listen port from 0 to 65535; 0 picks a free port",
             "8001", _int_range(0, MAX_PORT)),
    Variable("api_max_body_bytes", "int", DEFAULT_API_MAX_BODY_BYTES,
             "largest HTTP request body accepted, in bytes; must be > 0",
             "1048576", _int_range(1)),
    Variable("api_token", "str | list of str | None", None,
             f"bearer token(s) for reading and writing (several while rotating; each at "
             f"least {MIN_API_TOKEN_CHARS} characters); None leaves the API open, which "
             "is allowed only on a loopback host or with api_allow_anonymous",
             "'9f2c...' or ['new-token...', 'old-token...']", _check_tokens),
    Variable("api_read_token", "str | list of str | None", None,
             "bearer token(s) that may only read (GET and HEAD); needs api_token; "
             "None means no read-only token",
             "'c41d...'", _check_tokens),
    Variable("api_metrics_public", "bool", False,
             "serve /metrics without a token; False asks for api_read_token or api_token "
             "when tokens are set",
             "True", _check_bool),
    Variable("api_allow_anonymous", "bool", False,
             "serve the API without a token on a host other than loopback (anyone who "
             "reaches the port reads and writes everything)",
             "True", _check_bool),
    Variable("api_tls_cert", "str | None", None,
             "PEM certificate (chain) for HTTPS, with api_tls_key; None serves plain HTTP",
             "'/etc/vesper/api.crt'", _check_optional_str),
    Variable("api_tls_key", "str | None", None,
             "PEM private key of api_tls_cert",
             "'/etc/vesper/api.key'", _check_optional_str),
    Variable("api_header_timeout", "float", DEFAULT_API_HEADER_TIMEOUT_S,
             "seconds a client has to send a request's headers, counted from the "
             "connection or the request's first byte; must be > 0",
             "5", _check_seconds),
    Variable("api_body_timeout", "float", DEFAULT_API_BODY_TIMEOUT_S,
             "seconds a client has to send a whole request body after its headers; "
             "must be > 0",
             "120", _check_seconds),
    Variable("api_idle_timeout", "float", DEFAULT_API_IDLE_TIMEOUT_S,
             "seconds an idle keep-alive connection stays open between requests; must be > 0",
             "30", _check_seconds),
    Variable("api_feed_buffer_bytes", "int", DEFAULT_API_FEED_BUFFER_BYTES,
             "bytes of changes a continuous or SSE feed holds for a client that does "
             "not take them; past it the client is cut off (it resumes from its last "
             "seq); must be > 0",
             "4194304", _int_range(1)),
    Variable("api_max_connections", "int", DEFAULT_API_MAX_CONNECTIONS,
             "most HTTP connections open at once; further ones are closed at once; "
             "must be > 0",
             "200", _int_range(1)),
    Variable("log_level", "str", DEFAULT_LOG_LEVEL,
             "one of 'debug', 'info', 'warning', 'error' (any case)",
             "'debug'", _choice(LOG_LEVELS)),
    Variable("log_format", "str", DEFAULT_LOG_FORMAT,
             "'text' (one line per event, for people) or 'json' (one JSON object per "
             "line, for log collectors); node and broker write the same fields",
             "'json'", _choice(LOG_FORMATS)),
)
# fmt: on

_BY_NAME = {v.name: v for v in VARIABLES}
_ALIASES = {alias: v.name for v in VARIABLES for alias in v.aliases}


def known_variables() -> tuple[Variable, ...]:
    """Every configuration variable with its type, default and description."""
    return VARIABLES


def resolve_names(mapping: Mapping[str, object]) -> dict[str, object]:
    """Map aliases to names; reject unknown names and a name given twice."""
    resolved: dict[str, object] = {}
    given_as: dict[str, str] = {}
    for key, value in mapping.items():
        name = _ALIASES.get(key, key) if isinstance(key, str) else key
        if name not in _BY_NAME:
            raise ConfigError(_unknown_message(key))
        if name in resolved:
            raise ConfigError(f"{name}: given twice, as {given_as[name]!r} and {key!r}; keep one")
        resolved[name], given_as[name] = value, key
    return resolved


def _unknown_message(key: object) -> str:
    message = f"unknown configuration variable {key!r}"
    if isinstance(key, str):
        candidates = {c.lower(): c for c in [*_BY_NAME, *_ALIASES]}
        close = difflib.get_close_matches(key.lower(), list(candidates), n=1)
        if close:
            message += f" (did you mean {candidates[close[0]]!r}?)"
    return message


def takes_text(name: str) -> bool:
    """True when ``name`` (or its alias) holds a plain string such as an id or a path."""
    variable = _BY_NAME.get(_ALIASES.get(name, name))
    return variable is not None and variable.type.startswith("str")


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one node; see ``VARIABLES`` for each field.

    Construction validates and normalises every field and raises ConfigError on the
    first problem. ``branch_id`` given as None becomes ``trunk_id``, so an instance
    always holds a string there.
    """

    trunk_id: str = DEFAULT_TRUNK_ID
    branch_id: str | None = None
    save_history: bool = DEFAULT_SAVE_HISTORY
    replication_hosts: tuple[tuple[str, int], ...] | None = None
    replication_channel: str | None = None
    replication_channels: tuple[str, ...] | None = None
    indexes: tuple[str, ...] = ()
    send_stomp_ack: bool = DEFAULT_SEND_STOMP_ACK
    replication_broker: Literal["activemq", "rabbitmq", "vesper", "coilmq"] | None = None
    replication_queue_type: Literal["classic", "quorum"] = DEFAULT_REPLICATION_QUEUE_TYPE
    replication_login: str | None = None
    replication_passcode: str | None = field(default=None, repr=False)
    replication_tls: bool = False
    replication_tls_ca: str | None = None
    replication_tls_cert: str | None = None
    replication_tls_key: str | None = None
    replication_tls_verify: bool = DEFAULT_REPLICATION_TLS_VERIFY
    replication_heartbeat_ms: int = DEFAULT_REPLICATION_HEARTBEAT_MS
    replication_key_file: str | None = None
    replication_trusted_keys: dict[str, tuple[str, ...]] | None = None
    replication_peer_expiry: int = DEFAULT_REPLICATION_PEER_EXPIRY_S
    replication_max_pending: int = DEFAULT_REPLICATION_MAX_PENDING
    replication_message_ttl: int = 0
    replication_peer_gone_after: int = DEFAULT_REPLICATION_PEER_GONE_AFTER_S
    replication_ready_timeout: int = DEFAULT_REPLICATION_READY_TIMEOUT_S
    storage_url: str | None = None
    work_dir: str = DEFAULT_WORK_DIR
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_max_body_bytes: int = DEFAULT_API_MAX_BODY_BYTES
    api_token: tuple[str, ...] | None = field(default=None, repr=False)
    api_read_token: tuple[str, ...] | None = field(default=None, repr=False)
    api_metrics_public: bool = False
    api_allow_anonymous: bool = False
    api_tls_cert: str | None = None
    api_tls_key: str | None = None
    api_header_timeout: float = DEFAULT_API_HEADER_TIMEOUT_S
    api_body_timeout: float = DEFAULT_API_BODY_TIMEOUT_S
    api_idle_timeout: float = DEFAULT_API_IDLE_TIMEOUT_S
    api_feed_buffer_bytes: int = DEFAULT_API_FEED_BUFFER_BYTES
    api_max_connections: int = DEFAULT_API_MAX_CONNECTIONS
    log_level: Literal["debug", "info", "warning", "error"] = DEFAULT_LOG_LEVEL
    log_format: Literal["text", "json"] = DEFAULT_LOG_FORMAT

    def __post_init__(self) -> None:
        given_hosts = self.replication_hosts
        for variable in VARIABLES:
            value = variable.check(variable.name, getattr(self, variable.name))
            object.__setattr__(self, variable.name, value)
        object.__setattr__(self, "_tls_hosts", _tls_hosts(given_hosts))
        if self.branch_id is None:
            object.__setattr__(self, "branch_id", self.trunk_id)
        self._check_replication()
        self._check_api()
        _check_pair(self, "replication_tls_cert", "replication_tls_key")
        _check_pair(self, "api_tls_cert", "api_tls_key")

    def _check_api(self) -> None:
        if self.api_read_token and not self.api_token:
            raise ConfigError(
                "api_read_token is set without api_token: set api_token too, or nobody could write"
            )
        if self.api_token and self.api_read_token:
            shared = set(self.api_token) & set(self.api_read_token)
            if shared:
                raise ConfigError(
                    "api_token and api_read_token share a token: use different tokens"
                )
        if not self.api_token and not self.api_allow_anonymous and not _is_loopback(self.host):
            raise ConfigError(
                f"host is {self.host!r} but api_token is not set, so anyone who reaches "
                "the port could read and write everything: set api_token (and "
                "api_read_token for readers), or api_allow_anonymous = True to serve "
                "without one"
            )

    def _check_replication(self) -> None:
        if self.replication_channel is not None and self.replication_channels is not None:
            raise ConfigError(
                "replication_channel and replication_channels are both set: "
                "list every channel in replication_channels and remove replication_channel"
            )
        if self.replication_hosts is None:
            if self.channels:
                raise ConfigError(
                    "a replication channel is set but replication_hosts is not: set "
                    "replication_hosts, e.g. [('localhost', 61613)], or remove the channel"
                )
            return
        if not self.save_history:
            raise ConfigError(
                "replication_hosts is set but save_history is False: replication needs "
                "the revision history; set save_history = True (--save_history=True)"
            )
        if not self.channels:
            raise ConfigError(
                "replication_hosts is set without a channel: set replication_channel "
                "(or replication_channels for a hub node)"
            )
        broker = self.replication_broker
        if self.replication_queue_type != "classic" and broker not in (None, "rabbitmq"):
            raise ConfigError(
                f"replication_queue_type is {self.replication_queue_type!r}, which only "
                f"RabbitMQ has, but replication_broker is {broker!r}: remove one of them"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> Settings:
        """Settings from names or aliases to values, as read from a file."""
        return cls(**resolve_names(mapping))  # type: ignore[arg-type]

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this node replicates on; empty when replication is off."""
        if self.replication_channels:
            return self.replication_channels
        return (self.replication_channel,) if self.replication_channel else ()

    @property
    def effective_storage_url(self) -> str:
        """``storage_url``, or the SQLite file ``<work_dir>/<branch_id>.db`` when unset."""
        if self.storage_url is not None:
            return self.storage_url
        # An absolute work_dir yields four slashes, the SQLAlchemy form of an absolute path.
        return "sqlite:///" + posixpath.join(self.work_dir, f"{self.branch_id}.db")

    def broker_tls(self, host: tuple[str, int]) -> bool:
        """True when this node reaches the broker ``host`` over TLS."""
        return self.replication_tls or host in self._tls_hosts  # type: ignore[attr-defined]

    @property
    def effective_key_file(self) -> str:
        """``replication_key_file``, or ``<work_dir>/<branch_id>.key`` when unset."""
        if self.replication_key_file is not None:
            return self.replication_key_file
        return posixpath.join(self.work_dir, f"{self.branch_id}.key")
