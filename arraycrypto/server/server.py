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

import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from ..core.config import ServerConfig
from ..core.exceptions import ConfigError
from ..core.keyring import Keyring
from ..net.tls import server_context
from .fanout import Fanout, Ticker
from .listener import Listener
from .metrics import Metrics
from .shim import Routes, Shim

__all__ = ["Server", "serve"]

logger = logging.getLogger("arraycrypto.server")


class Server:
    """The arraycrypto push server. Use :func:`serve`, or ``await server.run()``.

    It changes nothing process-wide (GC thresholds, file limits, signal handlers):
    ``arraycrypto serve`` does that (:func:`~arraycrypto.server.tuning.tune_process`).
    """

    def __init__(self, config: ServerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.keyring = Keyring(config.secret_key)
        self.metrics = Metrics()
        self.port: int | None = None
        self._started = time.monotonic()
        self.ticker = Ticker(config, self.keyring, self.metrics, clock)
        self.fanout = Fanout(config, self.metrics)
        self.shim = Shim(
            config,
            self.metrics,
            Routes(
                snapshot=lambda: self.ticker.json, health=self._health, metrics=self.metrics.render
            ),
        )
        self.metrics.gauges["tasks"] = lambda: len(anyio.get_running_tasks())
        self._ssl = self._tls_context(config)
        self.listener = Listener(
            config,
            self.metrics,
            self.shim,
            self.fanout,
            key=lambda: self.keyring.primary,
            current=lambda: self.ticker.snapshot,
            ssl_context=self._ssl,
        )

    def __repr__(self) -> str:
        return f"Server(port={self.port}, key_id={self.keyring.primary.key_id.hex()})"

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

    def _health(self) -> dict[str, Any]:
        return {
            "status": "healthy",
            "timestamp": self.ticker.now_ms(),
            "tick": self.ticker.snapshot.tick,
            "connections": self.metrics.connections,
            "subscribed": len(self.fanout),
            "uptime": round(time.monotonic() - self._started, 3),
        }

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; report the bound port through ``task_status``.

        On cancellation every client gets close code 1001 (going away), bounded in time.
        """
        multi = await anyio.create_tcp_listener(
            local_host=self.config.host, local_port=self.config.port, reuse_port=False
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
