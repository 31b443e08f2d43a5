"""The door: who gets in, who is evicted, and the count of connections in and out.

Drives the pure :class:`~arraycrypto.core.admission.Admission` (the pending pool, the
``max_connections`` check, which pending connection to evict) with the clock, and
keeps what evicting needs: each pending connection's :class:`Arrival`, whose
``close()`` ends it wherever it is (in the room, or in its task).
"""

from __future__ import annotations

import socket
import ssl
import time

import anyio
import anyio.lowlevel

from ..core.admission import Admission
from ..core.config import ServerConfig
from ..net.sockets import SocketStream
from .metrics import Metrics
from .room import Arrival

__all__ = ["Door"]


class Door:
    """Admission to the server, for the listener's accept loop and connections."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.admission = Admission(config.max_connections, config.pending_limit)
        self._pending: dict[int, Arrival] = {}  # ticket -> connection, to evict
        #: Accepted, not yet admitted (their tasks have not run).
        self.incoming = 0
        # Set when a pending connection leaves the pool, while accepting waits for that.
        self._freed: anyio.Event | None = None
        metrics.gauges["pending_connections"] = lambda: self.admission.pending
        metrics.gauges["pending_evict_age_seconds"] = lambda: self.admission.evict_age

    def reload(self, config: ServerConfig) -> None:
        """Take new limits: they apply to the next connections."""
        self.config = config
        self.admission.max_connections = config.max_connections
        self.admission.max_pending = config.pending_limit

    def wait_until(self, now: float) -> float | None:
        """When accepting may go on (None: now); see Admission.wait_until."""
        return self.admission.wait_until(now, self.incoming)

    async def wait_for_room(self, seconds: float) -> None:
        """Leave newcomers in the kernel's accept queue while the pending pool is full of
        connections too young to evict (a reconnect storm: all mid-handshake).

        Until a pending connection leaves the pool, or ``seconds``, when the oldest is
        old enough to evict (core/admission.py says why).
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()  # the accepted ones' tasks run first
            return
        self.metrics.accept_paused_total += 1
        if self._freed is None:  # one event for every listening socket's loop
            self._freed = anyio.Event()
        freed = self._freed
        with anyio.move_on_after(seconds):
            await freed.wait()
        if self._freed is freed:
            self._freed = None

    def arrive(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> Arrival:
        """Count a new connection in and admit it (ticket 0: refused, full)."""
        metrics = self.metrics
        metrics.connections_total += 1
        metrics.connections += 1
        try:  # noqa: SIM105 - per connection: no context manager to set up
            # Small frames must leave at once (pushes, the welcome): no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the connection failed already: its first read says so
        stream = SocketStream(sock)
        now = time.monotonic()
        # Admitted before any TLS handshake: a refused connection costs none.
        admitted = self.admission.arrive(now)
        ticket = 0
        if admitted is not None:
            ticket, evicted = admitted
            if evicted is not None:
                metrics.pending_evicted_total += 1
                victim = self._pending.pop(evicted, None)
                if victim is not None:
                    victim.close()  # its task (or the room) ends it
        arrival = Arrival(stream, ticket, now, self.config, ssl_context)
        if ticket:
            self._pending[ticket] = arrival
        return arrival

    def authenticated(self, ticket: int, now: float | None = None) -> None:
        """The connection proved itself (``now``) or was answered: room in the pool."""
        if self.admission.authenticated(ticket, now):
            self._left_pool()  # only once: a second call would wake accepting for nothing

    def subscribed(self, ticket: int, now: float) -> None:
        """The connection proved itself: no longer pending, never evicted."""
        self.authenticated(ticket, now)
        self._pending.pop(ticket, None)

    def ended(self, ticket: int) -> None:
        """A connection ended: out of the count, the admission and its pool."""
        self.metrics.connections -= 1
        if ticket:
            self._pending.pop(ticket, None)
            self.admission.done(ticket)
            self._left_pool()

    def _left_pool(self) -> None:
        if self._freed is not None:
            self._freed.set()
            self._freed = None
