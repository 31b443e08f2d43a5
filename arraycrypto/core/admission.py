"""Who gets in: a bound on all connections, and a smaller pool for unauthenticated ones.

Pure bookkeeping of tickets; the listener closes what it is told to evict. A connection
is *pending* from accept until it is authenticated (or its HTTP request is answered):
pending connections live in their own pool of ``max_pending``, below
``max_connections``. When that pool is full, or the server is, a newcomer evicts the
oldest pending connection: an idle or slow-dripping unauthenticated connection only
ever evicts its own kind, while real clients, which finish in milliseconds, get through.
Only when every connection is authenticated and the server is full is a newcomer
refused.
"""

from __future__ import annotations

import itertools

__all__ = ["Admission"]


class Admission:
    """Tickets for connections: ``arrive`` admits (evicting if needed) or refuses."""

    __slots__ = ("_evicted", "_next", "_pending", "max_connections", "max_pending", "total")

    def __init__(self, max_connections: int, max_pending: int) -> None:
        if not 1 <= max_pending <= max_connections:
            raise ValueError("max_pending must be 1 to max_connections")
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.total = 0  # admitted and neither done nor evicted
        self._pending: dict[int, None] = {}  # tickets in admission order (oldest first)
        self._evicted: set[int] = set()  # evicted, their done() not yet seen
        self._next = itertools.count(1)

    @property
    def pending(self) -> int:
        """Connections admitted and not yet authenticated."""
        return len(self._pending)

    def arrive(self) -> tuple[int, int | None] | None:
        """Admit a new connection: its ticket and the ticket to evict; None: refused."""
        full = self.total >= self.max_connections
        if full and not self._pending:
            return None  # full of authenticated clients: refuse (503)
        evicted = None
        if full or len(self._pending) >= self.max_pending:
            evicted = next(iter(self._pending))
            del self._pending[evicted]
            self._evicted.add(evicted)
            self.total -= 1  # its place is free now: the listener closes it
        ticket = next(self._next)
        self._pending[ticket] = None
        self.total += 1
        return ticket, evicted

    def authenticated(self, ticket: int) -> None:
        """The connection proved itself (or was answered): it leaves the pending pool."""
        self._pending.pop(ticket, None)

    def done(self, ticket: int) -> None:
        """The connection ended: its place is free (an evicted one's already was)."""
        if ticket in self._evicted:
            self._evicted.discard(ticket)
            return
        self._pending.pop(ticket, None)
        self.total -= 1
