"""What every command shares: logging setup and running a client command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..core.config import load_client_config
from ..core.exceptions import ConfigError, CryptoError

__all__ = [
    "CommandError",
    "apply_log_level",
    "client_main",
    "quiet_exit_on_closed_stdout",
    "require_backend",
    "setup_logging",
]

logger = logging.getLogger("arraycrypto")

#: What to install for each optional event loop.
_BACKEND_MODULES = {"trio": ("trio", "trio"), "uvloop": ("uvloop", "uvloop")}


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


def setup_logging(verbose: bool, level: int = logging.INFO, *, worker: int | None = None) -> None:
    """Log to stderr; ``worker``: the worker number, in every line of a worker."""
    tag = f"[w{worker}] " if worker is not None else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # one INFO line per connection is too much for a server of thousands
        logging.getLogger("arraycrypto.server.websocket").setLevel(logging.WARNING)
        logging.getLogger("arraycrypto.client.websocket").setLevel(logging.WARNING)


def apply_log_level(name: str) -> None:
    """Set the level of our loggers (a config's ``log_level``)."""
    logging.getLogger("arraycrypto").setLevel(name.upper())
    logging.getLogger().setLevel(name.upper())


def client_main(args: argparse.Namespace) -> int:
    """Run encrypt / decrypt / watch; map our errors to a message and exit code 1."""
    # watch runs for long: its connection's ups and downs (INFO) are worth seeing.
    setup_logging(args.verbose, level=logging.INFO if args.command == "watch" else logging.WARNING)
    if hasattr(args, "backend"):
        require_backend(args.backend)
    try:
        config = load_client_config(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from None
    try:
        code: int = args.client_func(args, config)
        return code
    except CryptoError as exc:
        raise CommandError(f"{type(exc).__name__}: {exc}") from None
