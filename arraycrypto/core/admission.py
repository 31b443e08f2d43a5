"""Who gets in: a bound on all connections, and a smaller pool for unauthenticated ones.

Pure bookkeeping of tickets; the listener closes what it is told to evict and stops
accepting when told to wait. ``now`` is the driver's clock (seconds, never going back).

A connection is *pending* from accept until it is authenticated (or its HTTP request is
answered): pending connections live in their own pool of ``max_pending``, below
``max_connections``. When that pool is full, or the server is, a newcomer evicts the
oldest pending connection, but only one pending for at least :attr:`Admission.evict_age`
seconds: ``evict_after`` (1 s), or twice the time real clients have recently needed from
accept to their proof, when that is longer (a busy server in a reconnect storm):

- an idle or slow-dripping unauthenticated connection is old by then, so it only ever
  evicts its own kind, while real clients, which finish in milliseconds, get through;
- in a reconnect storm every pending connection is a real client mid-handshake, the
  oldest the nearest to done: evicting it would only send it back to its backoff. Until
  the oldest is ``evict_age`` old, the listener leaves newcomers in the kernel's
  accept queue (:meth:`Admission.wait_until`), so the pool bounds how many handshakes
  run at once and each finishes sooner.

Only when every connection is authenticated and the server is full is a newcomer
refused. Only proofs teach the pool how long real clients take: an answered HTTP request
does not, since anyone can drip one out slowly.
"""

from __future__ import annotations

import itertools
from typing import Final

__all__ = ["EVICT_AFTER", "Admission"]

#: Seconds a connection must have been pending before a newcomer may evict it.
EVICT_AFTER: Final = 1.0
#: How far the recent handshake time falls toward each faster one (it rises at once).
_EASE: Final = 0.1


class Admission:
    """Tickets for connections: ``arrive`` admits (evicting if needed) or refuses."""

    __slots__ = (
        "_evicted",
        "_next",
        "_pending",
        "evict_after",
        "handshake_time",
        "max_connections",
        "max_pending",
        "total",
    )

    def __init__(
        self, max_connections: int, max_pending: int, evict_after: float = EVICT_AFTER
    ) -> None:
        if not 1 <= max_pending <= max_connections:
            raise ValueError("max_pending must be 1 to max_connections")
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.evict_after = evict_after
        #: How long real clients have recently taken from accept to their proof.
        self.handshake_time = 0.0
        self.total = 0  # admitted and neither done nor evicted
        # Ticket -> when it arrived, in admission order (oldest first).
        self._pending: dict[int, float] = {}
        self._evicted: set[int] = set()  # evicted, their done() not yet seen
        self._next = itertools.count(1)

    @property
    def pending(self) -> int:
        """Connections admitted and not yet authenticated."""
        return len(self._pending)

    @property
    def evict_age(self) -> float:
        """How long a pending connection must have waited before it may be evicted."""
        return max(self.evict_after, 2.0 * self.handshake_time)

    def wait_until(self, now: float, incoming: int = 0) -> float | None:
        """When a newcomer may be taken: None for now, else the time to look again.

        ``incoming``: connections accepted but not yet through :meth:`arrive`: once the
        pool (or the server) would be full with them, the answer is ``now``, to let
        them be admitted before looking again. A server full of authenticated clients
        answers None: the newcomer is refused at once.
        """
        evictions = max(
            len(self._pending) + incoming + 1 - self.max_pending,
            self.total + incoming + 1 - self.max_connections,
        )
        if evictions <= 0:
            return None  # room
        if incoming:
            return now  # admit those first (the listener yields), then look again
        if evictions > len(self._pending):
            return None  # full of authenticated clients: refused at once
        # The evictions-th oldest must be old enough (dicts keep admission order).
        arrived = next(itertools.islice(self._pending.values(), evictions - 1, None))
        ready = arrived + self.evict_age
        return None if now >= ready else ready

    def arrive(self, now: float) -> tuple[int, int | None] | None:
        """Admit a new connection: its ticket and the ticket to evict; None: refused.

        Past a full pool whose oldest is not yet ``evict_age`` old (newcomers the
        listener had already accepted), the pool grows beyond ``max_pending`` rather
        than evict a client mid-handshake; the server itself never grows beyond
        ``max_connections``: then the newcomer is refused.
        """
        full = self.total >= self.max_connections
        if full and not self._pending:
            return None  # full of authenticated clients: refuse (503)
        evicted = None
        if full or len(self._pending) >= self.max_pending:
            oldest, arrived = next(iter(self._pending.items()))
            if now - arrived >= self.evict_age:
                evicted = oldest
                del self._pending[evicted]
                self._evicted.add(evicted)
                self.total -= 1  # its place is free now: the listener closes it
            elif full:
                return None
        ticket = next(self._next)
        self._pending[ticket] = now
        self.total += 1
        return ticket, evicted

    def authenticated(self, ticket: int, now: float | None = None) -> bool:
        """The connection proved itself (or was answered): it leaves the pending pool.

        ``now`` only for a proof: how long it took becomes the recent handshake time at
        once if longer, and eases it down if shorter. Returns whether it was pending (a
        second call for one ticket changes nothing).
        """
        arrived = self._pending.pop(ticket, None)
        if arrived is None:
            return False
        if now is not None:
            took = now - arrived
            recent = self.handshake_time
            self.handshake_time = took if took > recent else recent + (took - recent) * _EASE
        return True

    def done(self, ticket: int) -> None:
        """The connection ended: its place is free (an evicted one's already was)."""
        if ticket in self._evicted:
            self._evicted.discard(ticket)
            return
        self._pending.pop(ticket, None)
        self.total -= 1
