"""``arraycrypto serve``: run the push server until a signal stops it."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
from pathlib import Path

import anyio
import msgspec

from ..core.config import ServerConfig, load_server_config
from ..core.exceptions import ConfigError
from .common import setup_logging

__all__ = ["run_serve"]

logger = logging.getLogger("arraycrypto")


def _backend(name: str) -> tuple[str, dict[str, object]]:
    if name == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return name, {}


def run_serve(args: argparse.Namespace) -> int:
    # The server pulls in websockets; keygen does not need it.
    from ..server import Server
    from ..server.tuning import tune_process

    setup_logging(args.verbose)
    if args.backend == "uvloop" and importlib.util.find_spec("uvloop") is None:
        logger.error("--backend uvloop needs uvloop: pip install uvloop")
        return 2
    path = Path(args.config)
    created = not path.exists()
    try:
        config = load_server_config(path)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            config = ServerConfig(**{**msgspec.structs.asdict(config), **overrides})
        server = Server(config)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("%s config %s", "created" if created else "using", path.resolve())
    # Process-wide settings are the application's, and this is the application.
    tune_process(config.max_connections)

    async def main() -> None:
        # Listen for signals before serving, so an early SIGTERM still exits cleanly.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                async for signum in signals:
                    logger.info("received %s, closing connections", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    break

    backend, options = _backend(args.backend)
    failed: BaseExceptionGroup[OSError] | None = None
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except* OSError as group:  # binding: the address is in use or not ours
        failed = group
    if failed is not None:
        reason = "; ".join(str(exc) for exc in failed.exceptions)
        logger.error("cannot listen on %s:%d: %s", config.host, config.port, reason)
        return 1
    logger.info("stopped")
    return 0
