"""``arraycrypto serve``: run the push server until a signal stops it.

Signals, as operators expect them:

- SIGHUP: reload the config file (secret, TLS certificate, limits, CORS, log level);
  a config that fails to load is logged in one line and the old one stays in force.
- SIGTERM: with ``drain_seconds`` > 0, lame-duck mode (``/health`` 503, clients closed
  with 1001 spread over the window), then exit 0; else close everyone at once.
- SIGINT: as SIGTERM; a second SIGINT (or SIGTERM) stops at once.

With ``--workers N`` the process supervises N workers on the same port
(:mod:`.supervise`); each worker runs this.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..core.exceptions import ConfigError
from .common import (
    CommandError,
    apply_log_level,
    load_server,
    log_config_origin,
    require_backend,
    setup_logging,
)

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["run_serve"]

logger = logging.getLogger("arraycrypto")


def _backend(name: str) -> tuple[str, dict[str, object]]:
    if name == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return name, {}


def run_serve(args: argparse.Namespace) -> int:
    """Serve until a signal stops it; 0 on a clean stop."""
    if args.workers != "1" and args.worker is None:
        from .supervise import supervise

        return supervise(args)
    # The server pulls in websockets; keygen does not need it.
    from ..server import Server
    from ..server.tuning import keep_frozen, pace_gc, tune_process, watch_gc

    json_logs = args.log_format == "json"
    setup_logging(args.log_level, worker=args.worker, json_format=json_logs)
    require_backend(args.backend)
    path = Path(args.config)
    existed = path.exists()
    try:
        config = load_server(args)
        server = Server(config, worker=args.worker, metrics_dir=args.metrics_dir)
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from None
    if args.worker is None:
        log_config_origin(path, existed)
    if args.log_level is None:  # the command line's level wins over the config's
        apply_log_level(config.log_level)
    # Process-wide settings are the application's, and this is the application.
    if args.worker:
        # Workers share one limit (the supervisor's, inherited): worker 0 alone says
        # it is too low, so an operator reads it once, not once per worker.
        tuning_log = logging.getLogger("arraycrypto.server")
        level = tuning_log.level
        tuning_log.setLevel(logging.ERROR)
        try:
            tune_process(config.max_connections, args.gc_policy)
        finally:
            tuning_log.setLevel(level)
    else:
        tune_process(config.max_connections, args.gc_policy)
    watch_gc(server.metrics)
    if args.debug_objects:
        server.metrics.gauges["live_connection_objects"] = _count_connections

    async def main() -> None:
        # Listen for signals before serving, so an early one is not missed.
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with anyio.open_signal_receiver(*signals) as received:
            async with anyio.create_task_group() as tg:
                await tg.start(server.run, args.workers != "1")
                if args.gc_policy == "frozen":
                    tg.start_soon(keep_frozen)
                elif args.gc_policy == "paced":
                    tg.start_soon(pace_gc)
                if args.worker is not None:
                    tg.start_soon(_watch_supervisor, os.getppid())
                await _until_stopped(server, received, tg, args)

    backend, options = _backend(args.backend)
    failed: BaseExceptionGroup[OSError] | None = None
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except* OSError as group:  # binding: the address is in use or not ours
        failed = group
    if failed is not None:
        reason = "; ".join(str(exc) for exc in failed.exceptions)
        raise CommandError(f"cannot listen on {config.host}:{config.port}: {reason}")
    logger.info("stopped")
    return 0


def _count_connections() -> float:
    """Connection objects on the heap (a debug gauge: a scan of every tracked object)."""
    import gc

    from ..core.server_connection import ServerConnection

    # gc.get_objects() does not list frozen objects, and the paced and frozen policies
    # freeze what lives long, connections first: thaw to count, then freeze again the
    # way pace_gc does (a middle collection first, so young garbage is not frozen).
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    try:
        return float(sum(1 for obj in gc.get_objects() if type(obj) is ServerConnection))
    finally:
        if frozen:
            gc.collect(1)
            gc.freeze()


async def _until_stopped(
    server: Server,
    received: AsyncIterator[int],
    tg: anyio.abc.TaskGroup,
    args: argparse.Namespace,
) -> None:
    """Act on signals: reload on SIGHUP, drain then stop on SIGTERM/SIGINT."""
    draining = False
    async for signum in received:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            _reload(server, args)
            continue
        seconds = server.config.drain_seconds
        if draining or not seconds:
            logger.info("received %s, closing connections", name)
            tg.cancel_scope.cancel()
            return
        logger.info("received %s, draining for %.1f s (again to stop at once)", name, seconds)
        draining = True

        tg.start_soon(_drain_then_stop, server, seconds, tg)


async def _watch_supervisor(supervisor: int) -> None:
    """A worker whose supervisor is gone drains and exits, as on SIGTERM.

    A SIGKILLed supervisor (``kill -9``, the OOM killer) forwards nothing: without this
    its workers would keep the port, and a restarted supervisor's workers would share
    it with orphans nobody supervises. Reparenting changes ``getppid()``; a poll each
    second costs nothing and works wherever the supervisor does.
    """
    while os.getppid() == supervisor:
        await anyio.sleep(1.0)
    logger.warning("the supervisor (pid %d) is gone: stopping this worker", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)  # the one stop path: drain, then exit


async def _drain_then_stop(server: Server, seconds: float, tg: anyio.abc.TaskGroup) -> None:
    await server.drain(seconds)
    logger.info("drained, closing what is left")
    tg.cancel_scope.cancel()


def _reload(server: Server, args: argparse.Namespace) -> None:
    """Re-read the config file; on any error keep the running config, in one line."""
    try:
        config = load_server(args, create=False)
        server.reload(config)
    except ConfigError as exc:
        logger.error("reload failed, keeping the running config: %s", exc)
        return
    if args.log_level is None:
        apply_log_level(config.log_level)
