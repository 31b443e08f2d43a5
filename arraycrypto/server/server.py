"""The push server: the rooms put together, and :func:`serve`.

- :mod:`.listener`: accept, admit, run each connection (TLS, HTTP head, WebSocket)
- :mod:`.fanout`: the ticker, the per-tick push, writers for slow clients, the pinger
- :mod:`.shim`: the HTTP answers on the same port
- :mod:`.metrics`: the counters and their Prometheus rendering
- :mod:`.tuning`: process-wide settings, for ``arraycrypto serve`` (opt-in)

One code path for asyncio and trio. Every protocol rule lives in the pure core
(:class:`~arraycrypto.core.server_connection.ServerConnection`); these move bytes and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from ..core.config import ServerConfig
from ..core.exceptions import ConfigError
from ..core.keyring import Keyring
from ..net.tls import server_context
from .fanout import Fanout, Ticker, sleep_noting_lag
from .listener import Listener
from .metrics import Metrics
from .shim import Routes, Shim

__all__ = ["RESTART_FIELDS", "Server", "serve"]

logger = logging.getLogger("arraycrypto.server")

#: Config fields a reload cannot change: the listening sockets and what the port speaks.
RESTART_FIELDS: Final = ("host", "port", "tls")
#: Shares of the drain window: a grace before the first close (load balancers notice
#: the 503), then the closes, spread; what is left is for the clients' echoes.
_DRAIN_GRACE: Final = 0.2
_DRAIN_SPREAD: Final = 0.6
#: Seconds between two checks of the event loop's lateness. Not shorter: every wake-up
#: of an idle process costs CPU (about 0.2 ms on a cloud VM; twenty a second were a
#: fifth of the CPU per tick of a server of 1 000 clients). A check sees the part of a
#: stall after its own deadline, so a stall reads up to this much short (and one this
#: short may read 0) unless it also delays the ticker's wake-up, which is measured the
#: same way; every collector pause is timed on its own (``gc_pause_seconds_max``), and
#: each tick's write pass too (``push_duration_seconds_last``).
_LAG_PERIOD: Final = 0.5


def _count_tasks() -> int:
    """The tasks in the running event loop: ``len(anyio.get_running_tasks())``, cheaper.

    anyio builds a TaskInfo for every task, and each worker reads this gauge every
    second for its metrics file: at 5 000 connections (a task each) that was a tenth of
    the worker's CPU. Counting needs no TaskInfo.
    """
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no asyncio loop running here: trio's, if any
        pass
    trio = sys.modules.get("trio")  # loaded, if trio runs this loop
    if trio is None:
        return 0
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return 0
    count, stack = 0, [] if root is None else [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def _restart_value(config: ServerConfig, field: str) -> object:
    if field == "tls":
        return config.tls_certfile is not None
    return getattr(config, field)


class Server:
    """The arraycrypto push server. Use :func:`serve`, or ``await server.run()``.

    It changes nothing process-wide (GC thresholds, file limits, signal handlers):
    ``arraycrypto serve`` does that (:func:`~arraycrypto.server.tuning.tune_process`).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        clock: Callable[[], float] = time.time,
        worker: int | None = None,
        metrics_dir: str | None = None,
    ) -> None:
        self.config = config
        #: This process's number among the workers of one port (None: the only one).
        self.worker = worker
        self._metrics_dir = Path(metrics_dir) if metrics_dir else None
        self.keyring = Keyring(config.secret_key)
        self.metrics = Metrics()
        self.port: int | None = None
        self._started = time.monotonic()
        #: Lame-duck mode (:meth:`drain`): new WebSocket clients and /health get 503.
        self.draining = False
        self.ticker = Ticker(config, self.keyring, self.metrics, clock)
        self.fanout = Fanout(config, self.metrics)
        self.shim = Shim(
            config,
            self.metrics,
            Routes(snapshot=self._snapshot, health=self._health, metrics=self._render_metrics),
        )
        self.metrics.gauges["tasks"] = _count_tasks
        self.metrics.gauges["event_loop_lag_seconds_max"] = lambda: self.metrics.loop_lag.value(
            time.monotonic()
        )
        self._ssl = self._tls_context(config)
        self.listener = Listener(
            config,
            self.metrics,
            self.shim,
            self.fanout,
            key=lambda: self.keyring.primary,
            current=lambda: self.ticker.snapshot,
            ssl_context=self._ssl,
            draining=lambda: self.draining,
        )

    def __repr__(self) -> str:
        return f"Server(port={self.port}, key_id={self.keyring.primary.key_id.hex()})"

    def reload(self, config: ServerConfig) -> None:
        """Apply a new config to the running server, dropping no one.

        Every field takes effect at once or for new connections, except those that need
        a restart (:data:`RESTART_FIELDS`: the listening address, TLS on or off), which
        raise ConfigError with the old config still in force. So does a certificate or
        key that does not load. A new ``secret_key`` signs from the current tick on;
        clients that trust it (``next_secret_keys``) follow without reconnecting.
        """
        for field in RESTART_FIELDS:
            if _restart_value(self.config, field) != _restart_value(config, field):
                what = f"`{field}` changed"
                if field == "tls":
                    turned = "on" if config.tls_certfile is not None else "off"
                    what = f"TLS turned {turned} (`tls_certfile`, `tls_keyfile`)"
                raise ConfigError(f"{what}: it takes effect only on a restart")
        ssl_context = self._tls_context(config)  # certificate rotation: load them anew
        keyring = (
            self.keyring
            if config.secret_key == self.config.secret_key
            else Keyring(config.secret_key)
        )
        # Everything validated: nothing below can fail half-way.
        self.config = config
        self.keyring = keyring
        self.ticker.reload(config, keyring)
        self.fanout.reload(config)
        self.shim.reload(config)
        self.listener.reload(config, ssl_context)
        self._ssl = ssl_context
        logger.info(
            "reloaded config (key id %s, tick %.3fs)",
            keyring.primary.key_id.hex(),
            config.tick_interval,
        )

    async def drain(self, seconds: float) -> None:
        """Lame-duck mode, then return: let load balancers and clients move elsewhere.

        From now on /health answers 503 "draining" and new WebSocket clients get 503.
        After a short grace (a fifth of ``seconds``: load balancers see the 503 and stop
        sending clients here), the subscribed clients are closed with 1001 spread evenly
        over the next three fifths, so they reconnect elsewhere without a storm; the last
        fifth is for their echoes. Returns once they are gone or ``seconds`` passed;
        stopping the server is the caller's.
        """
        self.draining = True
        logger.info("draining: closing %d clients over %.1f s", len(self.fanout), seconds)
        with anyio.move_on_after(seconds):
            await anyio.sleep(seconds * _DRAIN_GRACE)
            await self.fanout.close_all(seconds * _DRAIN_SPREAD)
            while len(self.fanout):
                await anyio.sleep(0.05)

    @staticmethod
    def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
        if not (config.tls_certfile and config.tls_keyfile):
            return None
        try:
            return server_context(config.tls_certfile, config.tls_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "`tls_certfile`/`tls_keyfile`: cannot load the certificate and key"
                f" ({exc.strerror or exc.__class__.__name__})"
            ) from None

    def _snapshot(self) -> tuple[bytes, int]:
        return self.ticker.json, self.ticker.seconds_left()

    def _render_metrics(self) -> bytes:
        if self.worker is None:
            return self.metrics.render()
        # One scrape of the shared port shows every worker, each under its own label.
        peers = []
        for path in sorted(self._metrics_dir.glob("worker-*.json")) if self._metrics_dir else ():
            if path.name != f"worker-{self.worker}.json":
                with contextlib.suppress(OSError, ValueError):
                    peers.append(((("worker", path.stem[7:]),), json.loads(path.read_bytes())))
        return self.metrics.render((("worker", str(self.worker)),), peers)

    async def _watch_lag(self) -> None:
        """Measure how late the loop wakes a sleeper (stalls and GC pauses; see _LAG_PERIOD)."""
        while True:
            await sleep_noting_lag(_LAG_PERIOD, self.metrics)

    async def _publish_metrics(self) -> None:
        """Write this worker's metrics for the others, every second (atomically)."""
        assert self._metrics_dir is not None
        path = self._metrics_dir / f"worker-{self.worker}.json"
        temporary = path.with_suffix(".tmp")
        while True:
            with contextlib.suppress(OSError):
                temporary.write_bytes(json.dumps(self.metrics.snapshot()).encode())
                temporary.replace(path)
            await anyio.sleep(1.0)

    def _health(self) -> dict[str, Any]:
        return {
            **({"worker": self.worker} if self.worker is not None else {}),
            "status": "draining" if self.draining else "healthy",
            "timestamp": self.ticker.now_ms(),
            "tick": self.ticker.snapshot.tick,
            "connections": self.metrics.connections,
            "subscribed": len(self.fanout),
            "uptime": round(time.monotonic() - self._started, 3),
        }

    async def run(
        self,
        reuse_port: bool = False,
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled; report the bound port through ``task_status``.

        ``reuse_port``: listen with SO_REUSEPORT, beside the other workers of one port
        (the kernel spreads new connections over them). On cancellation every client gets
        close code 1001 (going away), bounded in time.
        """
        multi = await anyio.create_tcp_listener(
            local_host=self.config.host, local_port=self.config.port, reuse_port=reuse_port
        )
        self.port = int(multi.extra(anyio.abc.SocketAttribute.local_port))
        logger.info(
            "listening on %s://%s:%d%s (key id %s, tick %.3fs)",
            "wss" if self._ssl else "ws",
            self.config.host,
            self.port,
            self.config.path,
            self.keyring.primary.key_id.hex(),
            self.config.tick_interval,
        )
        async with multi, anyio.create_task_group() as tg:
            tg.start_soon(self.fanout.run, self.ticker)
            tg.start_soon(self._watch_lag)
            if self._metrics_dir is not None:
                tg.start_soon(self._publish_metrics)
            await tg.start(self.listener.run_room, tg)  # before the first accept
            for listener in multi.listeners:
                sock: socket.socket = listener.extra(anyio.abc.SocketAttribute.raw_socket)
                tg.start_soon(self.listener.accept_loop, sock, tg)
            task_status.started(self.port)
        # Not reached: serve() runs until cancelled. On cancellation each WebSocket
        # connection says goodbye itself (close 1001), shielded and bounded in time.


async def serve(
    config: ServerConfig, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run a server for ``config`` until cancelled.

    Use ``port = await task_group.start(serve, config)`` to learn the bound port (for
    ``port: 0``). Cancelling the task group stops it; clients get close code 1001.
    """
    await Server(config).run(task_status=task_status)
