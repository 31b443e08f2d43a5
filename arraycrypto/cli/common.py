"""What every command shares: logging setup and running a client command."""

from __future__ import annotations

import argparse
import logging
import sys

from ..core.config import load_client_config
from ..core.exceptions import ConfigError, CryptoError

__all__ = ["apply_log_level", "client_main", "setup_logging"]

logger = logging.getLogger("arraycrypto")


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
    setup_logging(args.verbose, level=logging.WARNING)
    try:
        config = load_client_config(args.config)
    except ConfigError as exc:
        print(f"arraycrypto: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.client_func(args, config)
        return code
    except CryptoError as exc:
        print(f"arraycrypto: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
