"""``arraycrypto serve --workers N``: N worker processes on one port, supervised.

Why SO_REUSEPORT rather than one listening socket shared by the workers: the kernel
gives each worker its own accept queue and spreads new connections over them by a hash
of the client's address, so no worker can take a whole reconnect storm alone (with one
shared socket, whichever worker wakes first accepts up to a batch of 256 at a time).
Each worker is a complete server: its own event loop, its own clients, the same
snapshots (each tick's snapshot is derived from the secret, so every worker publishes
the same bytes).

The supervisor creates the config file if it is missing (once, before any worker),
reserves the port, starts the workers, forwards SIGTERM, SIGINT and SIGHUP to all of
them, restarts a worker that dies (logged, with a growing pause if it keeps dying) and
exits once every worker has stopped. A worker whose supervisor is killed outright
(nothing forwarded) notices within a second, drains and exits. The workers share a
directory where each writes its metrics every second, so a scrape of ``/metrics`` on
the port, whichever worker answers it, shows every worker under a ``worker`` label.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from ..core.exceptions import ConfigError
from .common import (
    CommandError,
    load_server,
    log_config_origin,
    require_backend,
    setup_logging,
)

__all__ = ["supervise", "worker_count"]

logger = logging.getLogger("arraycrypto.supervisor")

_RESTART_PAUSE_MAX: Final = 5.0  # seconds between restarts of a worker that keeps dying
#: The workers' shared metrics directory, in the temp dir: ``<prefix><pid>-<random>``.
_METRICS_PREFIX: Final = "arraycrypto-workers-"
_STABLE: Final = 10.0  # a worker alive this long is healthy again: its pause resets


def worker_count(value: str) -> int:
    """``--workers``: a positive count, or ``auto`` (one per core)."""
    if value == "auto":
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError("`--workers` must be a positive number or auto")
    return count


def supervise(args: argparse.Namespace) -> int:
    """Run ``--workers`` workers until a signal stops them; 0 on a clean stop."""
    setup_logging(args.log_level, json_format=args.log_format == "json")
    require_backend(args.backend)
    existed = Path(args.config).exists()
    try:
        count = worker_count(args.workers)
        config = load_server(args)  # creates the file once, before any worker could race to
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from None
    # Reserve the port (and learn it, for port 0): a socket in the same SO_REUSEPORT
    # group that never listens, so it receives no connection.
    reserve = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserve.bind((config.host, config.port))
    except OSError as exc:
        reserve.close()
        raise CommandError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    port = reserve.getsockname()[1]
    try:
        claim = _claim(port)
    except _PortTaken:
        reserve.close()
        raise CommandError(
            f"port {port} is already served by another arraycrypto supervisor on this"
            " machine: our workers would share it with its workers (SO_REUSEPORT) and new"
            " clients would land on either server; stop it first or use another port"
        ) from None
    log_config_origin(Path(args.config), existed)  # once: the workers do not repeat it
    _remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
    metrics_dir = tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
    try:
        return anyio.run(_run, args, count, config.host, port, metrics_dir)
    finally:
        reserve.close()
        if claim is not None:
            claim.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _remove_stale_metrics_dirs(root: Path) -> None:
    """Remove the metrics directories of supervisors that no longer run.

    A clean stop removes its own; a SIGKILL (the OOM killer, a unit's final kill) cannot.
    Each name carries its supervisor's pid: a directory is removed only if it is this
    user's, a real directory, and its pid runs no process (a reused pid keeps it: a
    leftover is harmless, removing a live supervisor's is not).
    """
    for path in root.glob(f"{_METRICS_PREFIX}*-*"):
        pid = path.name[len(_METRICS_PREFIX) :].split("-", 1)[0]
        # Anyone can make a directory here: check it is ours before its name is used.
        if not (pid.isdigit() and 0 < int(pid) < 2**22):  # Linux's pid_max at most
            continue
        try:
            info = path.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)  # no such process: stale
        except OSError:
            continue  # a process of another user's holds that pid now: leave it


class _PortTaken(Exception):
    """Another supervisor of this user's serves the port."""


def _claim(port: int) -> socket.socket | None:
    """Claim ``port`` for this supervisor alone; raise _PortTaken if another one holds it.

    SO_REUSEPORT lets any process of the same user join the port's group, so the
    reservation above does not stop a second supervisor (another secret, another
    deployment) from sharing the port. This claim does: a listening Unix socket in
    Linux's abstract namespace, one name per port (not per address: a wildcard and a
    specific address on one port would split the clients as well), which only one
    process can bind and which the kernel releases when that process ends however it
    ends (no file left behind by a SIGKILL). Abstract names belong to the network
    namespace, as ports do. The name taken by another user's process (who could never
    join our group) does not count: its owner is asked with SO_PEERCRED. Where there is
    no abstract namespace the supervisor goes on without a claim (None).
    """
    name = f"\0arraycrypto-supervisor-port-{port}"
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(name)
        claim.listen(1)
        return claim
    except OSError as exc:
        claim.close()
        if exc.errno != errno.EADDRINUSE:
            logger.debug("no port claim (%s): going on without one", exc.strerror)
            return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(name)
            creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            raise _PortTaken from None  # held, and its holder does not answer
    _, uid, _ = struct.unpack("3i", creds)
    if uid == os.getuid():
        raise _PortTaken
    return None  # another user's name: that user's workers could never join our port


async def _run(args: argparse.Namespace, count: int, host: str, port: int, metrics_dir: str) -> int:
    workers: dict[int, anyio.abc.Process] = {}
    stopping = False

    def command(worker: int) -> list[str]:
        cmd = [sys.executable, "-m", "arraycrypto", "serve", "--config", args.config]
        cmd += ["--host", host, "--port", str(port)]
        cmd += ["--backend", args.backend, "--workers", str(count)]
        cmd += ["--gc-policy", args.gc_policy] + (["--debug-objects"] if args.debug_objects else [])
        cmd += ["--worker", str(worker), "--metrics-dir", metrics_dir]
        cmd += ["--log-format", args.log_format]
        return [*cmd, "--log-level", args.log_level] if args.log_level else cmd

    async def keep(worker: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        pause = 0.1
        started = False
        while True:
            began = time.monotonic()
            # A session of its own: a terminal's Ctrl-C (sent to the whole foreground
            # process group) reaches the supervisor only, which forwards it once; twice
            # would mean "stop at once" to the worker.
            process = await anyio.open_process(
                command(worker), stdin=None, stdout=None, stderr=None, start_new_session=True
            )
            workers[worker] = process
            if not started:
                task_status.started()
                started = True
            code = await process.wait()
            if stopping:
                return
            # A worker's metrics die with it: its restart starts its counters anew.
            with contextlib.suppress(OSError):
                (Path(metrics_dir) / f"worker-{worker}.json").unlink()
            pause = (
                0.1 if time.monotonic() - began > _STABLE else min(pause * 2, _RESTART_PAUSE_MAX)
            )
            logger.error("worker %d exited with code %s: restarting in %.1f s", worker, code, pause)
            await anyio.sleep(pause)

    async def forward(received: AsyncIterator[signal.Signals]) -> None:
        # Every signal goes to every worker: a second SIGINT still stops them at once.
        nonlocal stopping
        async for signum in received:
            if signum != signal.SIGHUP:
                stopping = True
            for process in list(workers.values()):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.Signals(signum))

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    with anyio.open_signal_receiver(*signals) as received:
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward, received)
            async with anyio.create_task_group() as keepers:
                for worker in range(count):
                    await keepers.start(keep, worker)
                logger.info("supervising %d workers on port %d", count, port)
            # The keepers return only once stopping and their workers exited.
            tg.cancel_scope.cancel()
    codes = [process.returncode for process in workers.values()]
    logger.info("all %d workers stopped", count)
    return 0 if all(code == 0 for code in codes) else 1
