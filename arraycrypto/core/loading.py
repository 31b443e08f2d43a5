"""Where a config comes from: its JSON file, the environment, a secret file; and saving one.

Precedence, highest first: what the caller applies on top (the CLI's flags), the
environment (``ARRAYCRYPTO_<FIELD>``), the file, the default. A missing server config
file is created with a fresh random key, mode 0600, and never overwritten; a file that
holds a secret and is readable by others is warned about, as ssh does.

Pure apart from reading and writing these files: no sockets, no clock, and the
environment only as the mapping a caller passes in. The configs themselves, and what
makes one valid, are :mod:`arraycrypto.core.config`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from .config import CryptoConfig, ServerConfig
from .exceptions import ConfigError
from .keys import generate_secret

__all__ = [
    "ENV_PREFIX",
    "load_client_config",
    "load_server_config",
    "save_config",
    "warn_if_readable_by_others",
]

_MAX_CONFIG_FILE = 1 << 20
_MAX_SECRET_FILE = 1 << 16
#: Every field of a config can also be set by ARRAYCRYPTO_<FIELD NAME IN CAPITALS>.
ENV_PREFIX: Final = "ARRAYCRYPTO_"
logger = logging.getLogger("arraycrypto.config")
#: A config file that holds a secret itself (a name, not a secret_key_file).
_HOLDS_SECRET = re.compile(rb'"(secret_key|old_secret_keys|next_secret_keys)"\s*:')

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
        raise ConfigError(f"{path}: not valid JSON ({_placed(str(exc), raw)})") from None
    return data


_AT_BYTE: Final = re.compile(r"\(byte (\d+)\)$")


def _placed(message: str, raw: bytes) -> str:
    """A decode error's byte offset as the line and column an editor shows."""
    found = _AT_BYTE.search(message)
    if found is None:
        return message
    at = min(int(found.group(1)), len(raw))
    line = raw.count(b"\n", 0, at) + 1
    start = raw.rfind(b"\n", 0, at) + 1
    column = len(raw[start:at].decode("utf-8", "replace")) + 1  # characters, as an editor counts
    return f"{message[: found.start()].rstrip()}, at line {line}, column {column}"


def _from_environment(kind: type[_C], env: Mapping[str, str]) -> dict[str, Any]:
    """The fields ``env`` sets (``ARRAYCRYPTO_<FIELD>``), typed; ConfigError names the variable.

    Numbers are parsed from text; a list is a JSON array or comma-separated values;
    secrets stay base64 text (the config checks them as it does a file's).
    """
    _warn_near_misses(env)
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


def _settings(kind: type[ServerConfig | CryptoConfig]) -> set[str]:
    """The names a config of ``kind`` may set: its fields, and ``secret_key_file``."""
    return {f.name for f in msgspec.structs.fields(kind)} | {"secret_key_file"}


_warned_variables: set[str] = set()


def _warn_near_misses(env: Mapping[str, str]) -> None:
    """Warn about ``ARRAYCRYPTO_*`` variables that look like a mistyped setting.

    Not an error, as an unknown field in a file is: other tools may share the prefix
    (the Kubernetes manifest passes ``ARRAYCRYPTO_WORKERS`` to ``--workers``). Only a
    name close to a real one is named, and only names of neither config are checked (a
    client's environment may hold the server's settings too).
    """
    known = {name.upper() for name in _settings(ServerConfig) | _settings(CryptoConfig)}
    for variable in env:
        name = variable.removeprefix(ENV_PREFIX)
        if name == variable or name in known:
            continue
        # Compared without the prefix, which would make every pair look alike.
        close = _close_matches(name, known, cutoff=0.75)
        if close and variable not in _warned_variables:
            _warned_variables.add(variable)  # once a process, not at every (re)load
            logger.warning(
                "%s is not a setting (did you mean %s%s?): ignored", variable, ENV_PREFIX, close[0]
            )


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
    try:
        from_file = _read_file(path) if read and path is not None else {}
    except ConfigError as exc:
        if kind is CryptoConfig and path is not None and not os.path.lexists(path):
            hint = "`arraycrypto client-config` writes one from the server's config"
            raise ConfigError(f"{exc}: {hint}") from None
        raise
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
        config = msgspec.convert(merged, type=kind)
    except msgspec.ValidationError as exc:
        if not from_env and not from_file:
            raise ConfigError(f"no config file, and the environment has no secret: {exc}") from None
        raise ConfigError(f"{origin}: {_with_hint(str(exc), kind)}") from None
    ca_file = getattr(config, "ca_file", None)
    if ca_file is not None:
        # Checked here, not at the first connection, where it read as a network error
        # ("last connection error: ...: no such file or directory") naming neither.
        try:
            Path(ca_file).open("rb").close()
        except OSError as exc:
            raise ConfigError(f"{origin}: `ca_file` {ca_file}: {exc.strerror}") from None
    return config


#: A well-formed secret for checking settings before a file with a real one exists.
_FRESH: Final = base64.b64encode(bytes(32)).decode()

_UNKNOWN_FIELD: Final = re.compile(r"unknown field `([^`]+)`")


def _with_hint(message: str, kind: type[_C]) -> str:
    """``message``, plus what an unknown field was probably meant to be."""
    if message.startswith("Object missing required field `secret_key`"):
        if kind is ServerConfig:
            return (
                f"{message}: a server config file holds its secret (only a missing file is"
                " created with a fresh one; `arraycrypto keygen` prints one)"
            )
        return f"{message} (`arraycrypto client-config` copies the server's)"
    if message.startswith("Invalid base64") and "secret_key" in message:
        # A phrase where a secret goes (the original project's example did that).
        return f"{message}: secrets are base64 (`arraycrypto keygen` prints a random one)"
    found = _UNKNOWN_FIELD.search(message)
    if found is None:
        return message
    name = found.group(1)
    ours = _settings(kind)
    other: type[ServerConfig | CryptoConfig] = (
        ServerConfig if kind is CryptoConfig else CryptoConfig
    )
    if name in _settings(other) - ours:
        if kind is CryptoConfig:
            return (
                f"{message}: `{name}` is a server setting: is this a server's config?"
                " (`arraycrypto client-config` writes a client's from it)"
            )
        return f"{message}: `{name}` is a client setting: is this a client's config?"
    close = _close_matches(name, ours)
    return f"{message}: did you mean `{close[0]}`?" if close else message


def _check_environment(env: Mapping[str, str]) -> None:
    """Raise ConfigError if ``env``'s settings would not make a valid server config."""
    values = _from_environment(ServerConfig, env)
    try:
        msgspec.convert({**values, "secret_key": _FRESH}, type=ServerConfig)
    except msgspec.ValidationError as exc:
        variables = ", ".join(ENV_PREFIX + name.upper() for name in values)
        raise ConfigError(f"the environment ({variables}): {exc}") from None


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
        # The environment is checked first, against the file about to be made: a start
        # that fails on a bad variable leaves no new secret on disk for the next one.
        _check_environment(env or {})
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


def _close_matches(name: str, choices: Iterable[str], cutoff: float = 0.6) -> list[str]:
    """The closest of ``choices`` to a mistyped ``name``, if any is close enough."""
    # Imported here, on the error path only: difflib is a few milliseconds of every
    # command's start-up (and of every program that imports arraycrypto) otherwise.
    import difflib

    return difflib.get_close_matches(name, sorted(choices), n=1, cutoff=cutoff)
