"""Server and client configuration: the msgspec Structs and what makes one valid.

``secret_key`` is raw bytes in Python and base64 text in JSON files; passing base64
text (``str``) directly is accepted too. Every field is range-checked here, with an
error that names the field and never echoes a secret. Where a config comes from (its
file, the environment, a secret file) and how one is saved is
:mod:`arraycrypto.core.loading`. Pure: no files, no sockets, no clock.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NoReturn, TypeVar

import msgspec

from .exceptions import ConfigError
from .keys import MAX_SECRET_SIZE, MIN_SECRET_SIZE

__all__ = [
    "LOG_LEVELS",
    "CryptoConfig",
    "ServerConfig",
    "convert",
    "server_url_for",
    "websocket_url",
]

#: The log levels a config may name.
LOG_LEVELS = ("debug", "info", "warning", "error")


def _secret(value: object, field: str) -> bytes:
    """Normalise a secret given as bytes or base64 text; never echo it in errors."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ConfigError(f"`{field}` is not valid base64") from None
    if not isinstance(value, bytes):
        raise ConfigError(f"`{field}` must be bytes or base64 text")
    if not MIN_SECRET_SIZE <= len(value) <= MAX_SECRET_SIZE:
        raise ConfigError(
            f"`{field}` must decode to {MIN_SECRET_SIZE}..{MAX_SECRET_SIZE} bytes"
            f" (got {len(value)})"
        )
    return value


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # bool is an int subclass: reject it explicitly so `"port": true` is an error.
    if isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"`{name}` must be between {low} and {high}")


class _Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Shared behaviour: secrets hidden from repr, never pickled."""

    def __repr__(self) -> str:
        fields = []
        for name in self.__struct_fields__:
            shown = "<hidden>" if "secret" in name else repr(getattr(self, name))
            fields.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(fields)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds a secret and cannot be pickled")


class ServerConfig(_Config, kw_only=True):
    """Configuration of ``arraycrypto serve`` (the seed's ``server_config.json``).

    The seed's fields come first; the rest are limits and options with safe defaults,
    documented in the README.
    """

    secret_key: bytes
    tick_interval: float = 1.0
    host: str = "0.0.0.0"
    port: int = 8000
    hash_size: int = 16
    #: WebSocket path; any other path is plain HTTP.
    path: str = "/ws"
    max_connections: int = 20_000
    #: Connections not yet authenticated (TLS, the request head, the handshake) held at
    #: once; a newcomer evicts the oldest beyond it. None: a quarter of max_connections.
    max_pending: int | None = None
    max_frame_size: int = 4096
    handshake_timeout: float = 5.0
    http_max_request_size: int = 8192
    http_read_timeout: float = 5.0
    write_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: Origins allowed by CORS on the HTTP shim; empty means no CORS headers at all.
    cors_origins: list[str] = msgspec.field(default_factory=list)
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    #: On SIGTERM, seconds to close clients gradually (lame duck) before exiting; 0:
    #: close them all at once.
    drain_seconds: float = 0.0
    #: The server's log level: debug, info, warning or error (reloadable).
    log_level: str = "info"

    def __post_init__(self) -> None:
        self.secret_key = _secret(self.secret_key, "secret_key")
        _check_range("tick_interval", self.tick_interval, 0.01, 3600)
        _check_range("drain_seconds", self.drain_seconds, 0, 3600)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"`log_level` must be one of {', '.join(LOG_LEVELS)}")
        _check_range("port", self.port, 0, 65535)
        _check_range("hash_size", self.hash_size, 16, 32)
        _check_range("max_connections", self.max_connections, 1, 1_000_000)
        _check_range("max_frame_size", self.max_frame_size, 512, 1 << 20)
        _check_range("handshake_timeout", self.handshake_timeout, 0.01, 300)
        _check_range("http_max_request_size", self.http_max_request_size, 1024, 1 << 20)
        _check_range("http_read_timeout", self.http_read_timeout, 0.01, 300)
        _check_range("write_timeout", self.write_timeout, 0.01, 300)
        _check_range("ping_interval", self.ping_interval, 0.01, 3600)
        _check_range("ping_timeout", self.ping_timeout, 0.01, 3600)
        if self.max_pending is not None:
            _check_range("max_pending", self.max_pending, 1, self.max_connections)
        if not self.path.startswith("/"):
            raise ConfigError("`path` must start with '/'")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ConfigError("`tls_certfile` and `tls_keyfile` must be given together")

    @property
    def pending_limit(self) -> int:
        """``max_pending``, or its default: a quarter of ``max_connections`` (at least 1)."""
        if self.max_pending is not None:
            return self.max_pending
        return max(1, self.max_connections // 4)


class CryptoConfig(_Config, kw_only=True):
    """Configuration of :class:`~arraycrypto.CryptoClient` (the seed's ``client_config.json``).

    ``handshake_points`` is accepted for compatibility with the seed's files and has no
    effect: the handshake is an HMAC challenge-response whose strength does not depend on
    it. ``hash_size`` is the shortest snapshot signature (in bytes, 16..32) the client
    accepts.
    """

    server_url: str = "http://localhost:8000"
    secret_key: bytes
    max_drift: float = 60.0
    handshake_points: int = 8
    hash_size: int = 16
    #: More servers to fail over to, tried in turn after ``server_url``.
    server_urls: list[str] = msgspec.field(default_factory=list)
    #: Retired secrets, decrypt-only: kept so ciphertexts made under them still decrypt,
    #: never trusted to sign a handshake or a snapshot again.
    old_secret_keys: list[bytes] = msgspec.field(default_factory=list)
    #: Secrets the server may move to: trusted to sign (and to decrypt) ahead of
    #: ``secret_key``, so a rotation never has a moment where clients refuse the server.
    next_secret_keys: list[bytes] = msgspec.field(default_factory=list)
    #: CA bundle for servers with private certificates (``https://``/``wss://``).
    ca_file: str | None = None
    #: Snapshots whose ciphers decryption remembers (about 4 KiB each): raise it for a
    #: service that decrypts data from many different ticks over and over.
    decrypt_cache_size: int = 64
    connect_timeout: float = 10.0
    #: How long an encrypt waits for the first snapshot before raising SnapshotError.
    snapshot_timeout: float = 10.0
    reconnect_max_delay: float = 30.0

    def __post_init__(self) -> None:
        self.secret_key = _secret(self.secret_key, "secret_key")
        self.old_secret_keys = [
            _secret(k, f"old_secret_keys[{i}]") for i, k in enumerate(self.old_secret_keys)
        ]
        self.next_secret_keys = [
            _secret(k, f"next_secret_keys[{i}]") for i, k in enumerate(self.next_secret_keys)
        ]
        trusted = {self.secret_key, *self.next_secret_keys}
        if any(k in trusted for k in self.old_secret_keys):
            raise ConfigError(
                "`old_secret_keys` holds a secret that is also `secret_key` or in"
                " `next_secret_keys`: a retired secret only decrypts"
            )
        _check_range("max_drift", self.max_drift, 0.1, 86400)
        _check_range("handshake_points", self.handshake_points, 1, 1024)
        _check_range("hash_size", self.hash_size, 16, 32)
        _check_range("connect_timeout", self.connect_timeout, 0.01, 300)
        _check_range("decrypt_cache_size", self.decrypt_cache_size, 1, 1_000_000)
        _check_range("snapshot_timeout", self.snapshot_timeout, 0, 300)
        _check_range("reconnect_max_delay", self.reconnect_max_delay, 0.01, 3600)
        for url in (self.server_url, *self.server_urls):
            if not url.startswith(("http://", "https://", "ws://", "wss://")):
                raise ConfigError("server URLs must start with http://, https://, ws:// or wss://")


_C = TypeVar("_C", ServerConfig, CryptoConfig)


def convert(data: dict[str, Any], kind: type[_C]) -> _C:
    """Build a config from a mapping, raising ConfigError that names the bad field."""
    try:
        return msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def websocket_url(server_url: str, path: str = "/ws") -> str:
    """Return the WebSocket URL for a ``server_url`` (PROTOCOL.md, section 4).

    ``http://h:p[/prefix]`` becomes ``ws://h:p[/prefix]/ws``, ``https`` becomes ``wss``;
    a ``ws://`` or ``wss://`` URL is used as it is.
    """
    if server_url.startswith(("ws://", "wss://")):
        return server_url
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if server_url.startswith(http):
            rest = server_url[len(http) :]
            authority, slash, prefix = rest.partition("/")
            prefix = ("/" + prefix).rstrip("/") if slash else ""
            return f"{ws}{authority}{prefix}{path}"
    raise ConfigError("server URLs must start with http://, https://, ws:// or wss://")


def server_url_for(config: ServerConfig) -> str:
    """The ``server_url`` that reaches the server of ``config`` from the same machine.

    Its port and its scheme (TLS or not); ``localhost`` for a wildcard host. A ``path``
    ending in ``/ws`` gives an ``http(s)://`` URL (the client adds ``/ws``, and the HTTP
    routes sit beside it); any other path a ``ws(s)://`` URL with that path, used as it
    is (PROTOCOL.md, section 4).
    """
    host = "localhost" if config.host in ("0.0.0.0", "::", "") else config.host
    if ":" in host:
        host = f"[{host}]"
    tls = config.tls_certfile is not None
    if config.path.endswith("/ws"):
        return f"{'https' if tls else 'http'}://{host}:{config.port}{config.path[:-3]}"
    return f"{'wss' if tls else 'ws'}://{host}:{config.port}{config.path}"
