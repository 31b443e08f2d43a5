"""What every command shares: logging setup and running a client command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import msgspec

from ..core.config import ServerConfig
from ..core.exceptions import ConfigError, CryptoError
from ..core.loading import load_client_config, load_server_config
from ..net.logs import JsonFormatter

__all__ = [
    "CommandError",
    "apply_log_level",
    "client_main",
    "fail",
    "load_server",
    "log_config_origin",
    "quiet_exit_on_closed_stdout",
    "require_backend",
    "setup_logging",
]

logger = logging.getLogger("arraycrypto")

#: What to install for each optional event loop.
_BACKEND_MODULES = {"trio": ("trio", "trio"), "uvloop": ("uvloop", "uvloop")}


def load_server(args: argparse.Namespace, *, create: bool = True) -> ServerConfig:
    """``serve``'s config: the file with the command line's overrides (the same at every reload).

    Shared by a single server and the supervisor of ``--workers``.
    """
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:  # checked before the file may be created: a refused start leaves none
        ServerConfig(secret_key=bytes(32), **overrides)
    config = load_server_config(Path(args.config), create=create, env=os.environ)
    if overrides:
        config = ServerConfig(**{**msgspec.structs.asdict(config), **overrides})
    return config


def log_config_origin(path: Path, existed: bool) -> None:
    """Say, once, which config file ``serve`` runs with (or that it made one, or none)."""
    if existed:
        logger.info("using config %s", path.resolve())
    elif path.exists():
        logger.info("created config %s", path.resolve())
    else:
        logger.info("no config file %s: using the environment", path.resolve())


class CommandError(Exception):
    """Raised by a command to fail with one line on stderr and exit ``code``.

    2 for usage and configuration errors, 1 for failures at run time.
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def require_backend(name: str) -> None:
    """Fail with what to install if the event loop ``name`` cannot be imported."""
    if name not in _BACKEND_MODULES:
        return
    module, extra = _BACKEND_MODULES[name]
    try:
        __import__(module)
    except ImportError:
        raise CommandError(
            f"--backend {name} needs {module}, which is not installed:"
            f" pip install 'arraycrypto[{extra}]'",
            code=2,
        ) from None


def quiet_exit_on_closed_stdout() -> None:
    """Stdout's reader is gone (``| head``): stop writing, and exit without a word.

    Point stdout at /dev/null so the interpreter's final flush of what is still
    buffered does not fail again ("Exception ignored ... BrokenPipeError").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


_json_logs = False  # set by setup_logging: fatal errors then go out as JSON too


def setup_logging(
    level: str | None,
    default: str = "info",
    *,
    worker: int | None = None,
    json_format: bool = False,
) -> None:
    """Log to stderr at ``level`` (the command line's), else ``default``.

    ``worker``: the worker number, in every line of a worker of ``serve --workers``.
    ``json_format``: one JSON object per line (:class:`~arraycrypto.net.logs.JsonFormatter`).
    """
    global _json_logs
    _json_logs = json_format
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter(worker))
    else:
        tag = f"[w{worker}] " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    apply_log_level(level or default)


def apply_log_level(name: str) -> None:
    """Set the level of our loggers (the command line's, or a config's ``log_level``)."""
    level = name.upper()
    logging.getLogger("arraycrypto").setLevel(level)
    logging.getLogger().setLevel(level)
    # One INFO line per connection is too much for a server of thousands: websockets'
    # own lines show only when debugging.
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    logging.getLogger("arraycrypto.server.websocket").setLevel(quiet)
    logging.getLogger("arraycrypto.client.websocket").setLevel(quiet)


def fail(message: str, code: int) -> int:
    """Report a fatal error in one line (``arraycrypto: ...``, or JSON); return ``code``."""
    if _json_logs:
        logger.error("%s", message)
    else:
        print(f"arraycrypto: {message}", file=sys.stderr)
    return code


def client_main(args: argparse.Namespace) -> int:
    """Run encrypt / decrypt / watch; map our errors to a message and exit code 1."""
    # watch runs for long: its connection's ups and downs (INFO) are worth seeing.
    setup_logging(args.log_level, "info" if args.command == "watch" else "warning")
    if hasattr(args, "backend"):
        require_backend(args.backend)
    try:
        config = load_client_config(args.config, env=os.environ)
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from None
    try:
        code: int = args.client_func(args, config)
        return code
    except CryptoError as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
