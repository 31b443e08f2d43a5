"""Server and client configuration: msgspec Structs, JSON files, validation.

Pure apart from reading and writing the config file itself (and a ``secret_key_file``):
no sockets, no clock, and the environment only as the mapping a caller passes in.

Precedence, highest first: what the caller applies on top (the CLI's flags), the
environment (``ARRAYCRYPTO_<FIELD>``), the file, the default.

``secret_key`` is raw bytes in Python and base64 text in JSON files; passing base64
text (``str``) directly is accepted too. A missing server config file is created with a
fresh random key, mode 0600, and never overwritten.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import msgspec

from .exceptions import ConfigError
from .keys import MAX_SECRET_SIZE, MIN_SECRET_SIZE, generate_secret

__all__ = [
    "CryptoConfig",
    "ServerConfig",
    "load_client_config",
    "load_server_config",
    "save_config",
    "server_url_for",
    "websocket_url",
]

_MAX_CONFIG_FILE = 1 << 20
_MAX_SECRET_FILE = 1 << 16
#: Every field of a config can also be set by ARRAYCRYPTO_<FIELD NAME IN CAPITALS>.
ENV_PREFIX: Final = "ARRAYCRYPTO_"
logger = logging.getLogger("arraycrypto.config")
#: A config file that holds a secret itself (a name, not a secret_key_file).
_HOLDS_SECRET = re.compile(rb'"(secret_key|old_secret_keys|next_secret_keys)"\s*:')
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


_warned: set[str] = set()  # files already warned about, by path: said once per process


def warn_if_readable_by_others(path: Path, mode: int) -> None:
    """Warn (once per file) that a file holding a secret is open to others, as ssh does.

    Any group or other permission bit counts: a secret must be the owner's alone. The
    warning names the file and the fix, never the secret.
    """
    bits = stat.S_IMODE(mode)
    if not bits & 0o077 or str(path) in _warned:
        return
    _warned.add(str(path))
    logger.warning(
        "permissions %04o for %s are too open: it holds a secret that others on this"
        " machine can read; chmod 600 %s",
        bits,
        path,
        path,
    )


def _read_file(path: Path) -> dict[str, Any]:
    """The JSON object in a config file (warning if it holds a secret others can read)."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CONFIG_FILE + 1)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    if _HOLDS_SECRET.search(raw):
        warn_if_readable_by_others(path, mode)
    if len(raw) > _MAX_CONFIG_FILE:
        raise ConfigError(f"{path}: config file is larger than 1 MiB")
    try:
        data: dict[str, Any] = msgspec.json.decode(raw, type=dict[str, Any])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return data


def _from_environment(kind: type[_C], env: Mapping[str, str]) -> dict[str, Any]:
    """The fields ``env`` sets (``ARRAYCRYPTO_<FIELD>``), typed; ConfigError names the variable.

    Numbers are parsed from text; a list is a JSON array or comma-separated values;
    secrets stay base64 text (the config checks them as it does a file's).
    """
    values: dict[str, Any] = {}
    for field in (*msgspec.structs.fields(kind), None):
        name, kind_of = ("secret_key_file", str) if field is None else (field.name, field.type)
        variable = ENV_PREFIX + name.upper()
        if variable not in env:
            continue
        text = env[variable]
        value: Any = text
        if typing.get_origin(kind_of) is list:
            item = typing.get_args(kind_of)[0]
            if text.lstrip().startswith("["):
                try:
                    value = msgspec.json.decode(text)
                except msgspec.DecodeError:
                    raise ConfigError(f"{variable}: not a valid JSON array") from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
            kind_of = list[str] if item is bytes else kind_of
        elif kind_of is bytes:
            kind_of = str
        try:
            values[name] = msgspec.convert(value, type=kind_of, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{variable}: {exc}") from None
    return values


def _read_secret_file(path: str) -> bytes:
    """The secret in ``secret_key_file``: base64 text, as ``arraycrypto keygen`` prints it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_SECRET_FILE + 1)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as exc:
        raise ConfigError(f"`secret_key_file` {path}: cannot read it ({exc.strerror})") from None
    warn_if_readable_by_others(Path(path), mode)
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"`secret_key_file` {path}: not valid base64 (arraycrypto keygen makes one)"
        ) from None


def _secret_in(env: Mapping[str, str]) -> bool:
    return any(ENV_PREFIX + name in env for name in ("SECRET_KEY", "SECRET_KEY_FILE"))


def _build(
    kind: type[_C], path: Path | None, env: Mapping[str, str] | None, *, required: bool
) -> _C:
    """Merge the default, the file and the environment (highest last) into a config."""
    env = env or {}
    from_env = _from_environment(kind, env)
    read = path is not None and (required or path.exists())
    from_file = _read_file(path) if read and path is not None else {}
    both = "give `secret_key` or `secret_key_file`, not both"
    if "secret_key" in from_file and "secret_key_file" in from_file:
        raise ConfigError(f"{path}: {both}")
    if "secret_key" in from_env and "secret_key_file" in from_env:
        raise ConfigError(
            f"the environment: {both} (ARRAYCRYPTO_SECRET_KEY or ARRAYCRYPTO_SECRET_KEY_FILE)"
        )
    merged = dict(from_file)
    if "secret_key" in from_env or "secret_key_file" in from_env:
        # One setting in two forms: the environment's replaces the file's, whichever form.
        merged.pop("secret_key", None)
        merged.pop("secret_key_file", None)
    merged.update(from_env)
    variables = ", ".join(ENV_PREFIX + name.upper() for name in from_env)
    if not from_env:
        origin = str(path)
    elif from_file:
        origin = f"{path} with {variables}"
    else:
        origin = f"the environment ({variables})"
    secret_file = merged.pop("secret_key_file", None)
    if secret_file is not None:
        merged["secret_key"] = _read_secret_file(str(secret_file))
    try:
        return msgspec.convert(merged, type=kind)
    except msgspec.ValidationError as exc:
        if not from_env and not from_file:
            raise ConfigError(f"no config file, and the environment has no secret: {exc}") from None
        raise ConfigError(f"{origin}: {exc}") from None


def convert(data: dict[str, Any], kind: type[_C]) -> _C:
    """Build a config from a mapping, raising ConfigError that names the bad field."""
    try:
        return msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def load_client_config(
    path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None
) -> CryptoConfig:
    """Load a client config; raise ConfigError naming the bad field (and where it came from).

    ``env`` (the CLI and the clients pass ``os.environ``) overrides the file field by
    field: ``ARRAYCRYPTO_SERVER_URL``, ``ARRAYCRYPTO_SECRET_KEY``... (see the README).
    The file is optional when ``env`` holds the secret (``ARRAYCRYPTO_SECRET_KEY`` or
    ``ARRAYCRYPTO_SECRET_KEY_FILE``); ``path`` None reads no file at all.
    """
    p = None if path is None else Path(path)
    return _build(CryptoConfig, p, env, required=not _secret_in(env or {}))


def load_server_config(
    path: str | os.PathLike[str] | None,
    *,
    create: bool = True,
    env: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Load a server config, first creating it with defaults if it does not exist.

    The created file holds a fresh random 32-byte ``secret_key`` and has mode 0600. An
    existing file is never overwritten, even if two processes race to create it. ``env``
    overrides the file as for :func:`load_client_config`; when it holds the secret, a
    missing file is neither created nor needed.
    """
    p = None if path is None else Path(path)
    from_env = _secret_in(env or {})
    if p is not None and create and not from_env and not p.exists():
        try:
            save_config(p, ServerConfig(secret_key=generate_secret()), exclusive=True)
        except FileExistsError:
            pass  # another process created it first; use theirs
        except OSError as exc:
            raise ConfigError(f"{p}: cannot create config file ({exc.strerror})") from None
    return _build(ServerConfig, p, env, required=not from_env)


def save_config(
    path: str | os.PathLike[str], config: ServerConfig | CryptoConfig, *, exclusive: bool = False
) -> None:
    """Write ``config`` as indented JSON with file mode 0600 (it holds a secret).

    With ``exclusive``, fail with FileExistsError rather than replace an existing file.
    """
    data = msgspec.json.format(msgspec.json.encode(config), indent=4) + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
        f.write(data)


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
