"""The room: plain-TCP connections that wait without a task of their own (Linux).

With a task per connection, half of the server's CPU per connection went to that task
(``scripts/connect_floor.py``: the same handshakes driven without tasks took 0.49x the
CPU): the task, its cancel scopes and a readiness registration for each wait, for a
connection that mostly waits: one round trip for the client's handshake frame, then a
pong now and then, for hours (docs/benchmarks.md, "The handshake room" and "Parked
subscribers"). So on Linux a plain-TCP connection waits here: one task waits on a
nested epoll (``anyio.wait_readable`` on the epoll's own descriptor, the same under
asyncio and trio) and reads every socket that is ready. The request head, the upgrade
(the 101 and the challenge, written at once), the client's handshake frame and the
welcome, and later the pongs and pings of a subscriber, are handled synchronously, by
the same pure core. The fan-out writes pushes and pings straight to the socket, as for
every connection.

A connection leaves the room for a task of its own (the listener's, the code that TLS
connections run from accept) as soon as it has more to do than wait:

- before subscribing: at a failed handshake, when its connection object is no longer
  waiting for the handshake (a close), at anything off the happy path (a plain HTTP
  request, an upgrade the listener does not take here, bytes that cannot begin a
  request, the end of input, an error, a write the kernel did not take), or at its
  deadline;
- once subscribed (parked): at the client's Close or any protocol error, the end of
  input, a write the kernel did not take, or when the fan-out says goodbye to it or
  drops it (:attr:`Subscriber.wake <arraycrypto.server.fanout.Subscriber.wake>`);
- when the server stops: an upgraded connection says goodbye (1001) from its task.

The task goes on from exactly where the room left: the bytes of a head read so far, or
the connection object, its events and its fan-out entry.
"""

from __future__ import annotations

import heapq
import logging
import select
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from ..core import http
from ..core.config import ServerConfig
from ..core.server_connection import Event, ServerConnection, ServerPhase
from ..net.sockets import SocketStream

if TYPE_CHECKING:
    from .fanout import Subscriber

__all__ = ["Arrival", "Host", "Room", "write_queued"]

logger = logging.getLogger("arraycrypto.server")

_READ_SIZE: Final = 65536
#: Ready sockets read per wake-up before the room lets the other tasks run (a tick).
_BATCH: Final = 256


class Arrival:
    """A connection from accept until it has a task: what that task goes on from."""

    __slots__ = (
        "conn",
        "deadline",
        "fd",
        "head",
        "head_by",
        "on_close",
        "ssl",
        "stream",
        "subscriber",
        "ticket",
    )

    def __init__(
        self,
        stream: SocketStream,
        ticket: int,
        now: float,
        config: ServerConfig,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno()
        #: The admission ticket (0: refused, the server is full).
        self.ticket = ticket
        #: The pre-authentication deadline (TLS, request head, handshake), monotonic.
        self.deadline = now + config.handshake_timeout
        #: When the request head must be complete.
        self.head_by = min(self.deadline, now + config.http_read_timeout)
        #: The bytes of the request head read so far (while ``conn`` is None).
        self.head = b""
        #: The connection once upgraded.
        self.conn: ServerConnection | None = None
        #: The TLS context to wrap the stream with (accepted on a TLS port).
        self.ssl = ssl_context
        #: Set while the room holds it: the room ends it (it has no task to wake).
        self.on_close: Callable[[Arrival], None] | None = None
        #: Its fan-out entry once subscribed (parked in the room, or handed to its task).
        self.subscriber: Subscriber | None = None

    def close(self) -> None:
        """End the connection (eviction): close its socket, which wakes its task."""
        if self.on_close is not None:
            self.on_close(self)
        else:
            self.stream.close()


def write_queued(stream: SocketStream, conn: ServerConnection) -> bool:
    """Write what ``conn`` queued, now, queueing in ``stream`` what the kernel does not
    take; return whether some is left for an awaited flush.

    Only while the connection is open: then there is no end of output among its chunks.
    """
    data = b"".join(conn.data_to_send())
    if data and not stream.write_now(data):
        stream.enqueue(data)
    return stream.backlogged


class Host(Protocol):
    """What the room needs from the listener."""

    config: ServerConfig

    def upgrade_here(
        self, request: http.RequestHead, now: float, deadline: float
    ) -> ServerConnection | None:
        """Upgrade a request the room may take (None: leave it to a task)."""

    def park(self, arrival: Arrival, events: Sequence[Event]) -> bool:
        """The connection just subscribed (``events``): welcome it and add it to the
        fan-out; return whether it may wait in the room (False: it needs its task)."""

    def resume(self, arrival: Arrival, events: Sequence[Event]) -> None:
        """Give the connection a task, which goes on from where the room left it."""

    def finish(self, arrival: Arrival) -> None:
        """The connection ended in the room (evicted, stopped): count it out, close it."""


class Room:
    """Plain-TCP connections with no task of their own, on one epoll (module docstring)."""

    @staticmethod
    def available() -> bool:
        """Whether this platform has the pollable poller the room needs (Linux: epoll)."""
        return hasattr(select, "epoll")

    def __init__(self, host: Host) -> None:
        self._host = host
        self._poller = select.epoll()
        self._arrivals: dict[int, Arrival] = {}  # fd -> its connection
        self._by_ticket: dict[int, Arrival] = {}
        # (deadline, ticket): when the room must look at a connection again. Entries of
        # connections that left are dropped once they reach the top (_next_due).
        self._deadlines: list[tuple[float, int]] = []
        self._wait: anyio.CancelScope | None = None  # the room's current wait
        # One read buffer for every connection: the room reads them one at a time.
        self._buffer = memoryview(bytearray(_READ_SIZE))

    def __len__(self) -> int:
        return len(self._arrivals)

    def add(self, arrival: Arrival) -> None:
        """Take a newly accepted (and admitted) connection."""
        self._poller.register(arrival.fd, select.EPOLLIN)
        self._arrivals[arrival.fd] = arrival
        self._by_ticket[arrival.ticket] = arrival
        arrival.on_close = self._evict
        when = arrival.head_by
        heapq.heappush(self._deadlines, (when, arrival.ticket))
        wait = self._wait
        if wait is not None:
            wake = anyio.current_time() + (when - time.monotonic())
            if wake < wait.deadline:
                wait.deadline = wake

    async def run(self) -> None:
        """Read ready connections until cancelled; then give every upgraded connection
        still here its task (to say goodbye), and close the others."""
        epoll_fd = self._poller.fileno()
        try:
            while True:
                with anyio.CancelScope() as wait:
                    soonest = self._next_due()
                    if soonest is not None:
                        wait.deadline = anyio.current_time() + (soonest - time.monotonic())
                    self._wait = wait
                    await anyio.wait_readable(epoll_fd)
                self._wait = None
                # In a method of its own: a loop variable here would keep the last
                # connection read alive while the room waits.
                if self._serve_ready() == _BATCH:
                    await anyio.lowlevel.checkpoint()  # a crowd: let the ticker run
        finally:
            # The server is stopping. An upgraded connection gets a task (the task group
            # is still open), cancelled at once: it says goodbye (1001) the way every
            # WebSocket connection does, a closing handshake that reads what the client
            # still sends. Closing with unread input would reset the connection instead.
            self._wait = None
            for arrival in list(self._arrivals.values()):
                if arrival.conn is not None:
                    self._resume(arrival, ())
                else:
                    self._leave(arrival)
                    self._host.finish(arrival)
            self._poller.close()

    def _next_due(self) -> float | None:
        """When the next connection still here is due; drops the entries of the others."""
        deadlines = self._deadlines
        while deadlines:
            when, ticket = deadlines[0]
            arrival = self._by_ticket.get(ticket)
            if arrival is not None and when == self._due(arrival):
                return when
            heapq.heappop(deadlines)  # it left, or moved on to its later deadline
        return None

    @staticmethod
    def _due(arrival: Arrival) -> float | None:
        # The head's deadline, then the connection's own (the handshake's; none once
        # subscribed: the pinger watches a subscriber).
        return arrival.head_by if arrival.conn is None else arrival.conn.deadline

    def _serve_ready(self) -> int:
        """Read every ready connection (a batch), then time out the overdue ones."""
        ready = self._poller.poll(0, _BATCH)
        now = time.monotonic()
        for fd, _ in ready:
            arrival = self._arrivals.get(fd)
            if arrival is not None:
                self._read(arrival, now)
        self._expire(now)
        return len(ready)

    def _read(self, arrival: Arrival, now: float) -> None:
        # Before the head is complete, never more than one byte past the shim's limit
        # (what it reads itself): a hostile head costs no more here than there.
        size = _READ_SIZE
        if arrival.conn is None:
            size = self._host.config.http_max_request_size + 1 - len(arrival.head)
            if size <= 0:  # a reload lowered the limit below what was read: refused
                self._resume(arrival, ())
                return
        buffer = self._buffer
        try:
            got = arrival.stream.receive_into_now(buffer[:size])
        except anyio.BrokenResourceError:
            got = 0  # its task reads the end of input and ends it as usual
        if got is None:
            return
        data = bytes(buffer[:got])
        try:
            if not data:
                self._resume(arrival, ())
            elif arrival.conn is None:
                self._read_head(arrival, data, now)
            else:
                self._feed(arrival, arrival.conn, data, now)
        except Exception:  # no error of one connection may end the room
            logger.exception("unexpected error on a connection")
            if self._by_ticket.get(arrival.ticket) is arrival:  # not handed over yet
                self._leave(arrival)
                self._host.finish(arrival)

    def _read_head(self, arrival: Arrival, data: bytes, now: float) -> None:
        arrival.head = head = arrival.head + data
        limit = self._host.config.http_max_request_size
        size = http.find_head_end(head, limit + 1)  # the shim's limit (it reads no further)
        if size < 0:
            if http.head_problem(head) or len(head) > limit:
                self._resume(arrival, ())  # its task refuses it
            return
        try:
            request = http.parse_request_head(head[:size])
        except ValueError:
            conn = None
        else:
            conn = self._host.upgrade_here(request, now, arrival.deadline)
        if conn is None:
            self._resume(arrival, ())  # its task answers it (head and all)
            return
        arrival.conn = conn
        arrival.head = b""
        heapq.heappush(self._deadlines, (arrival.deadline, arrival.ticket))
        if size < len(head):  # the client did not wait for the 101: its frame follows
            self._feed(arrival, conn, head[size:], now)
        else:
            self._flush(arrival, conn)

    def _feed(self, arrival: Arrival, conn: ServerConnection, data: bytes, now: float) -> None:
        events = conn.receive_data(data, now)
        if arrival.subscriber is not None:
            # Parked: a pong changes nothing, a ping's pong is written here. Anything
            # else (the client's Close, a protocol error) goes on in its task.
            if events or conn.phase is not ServerPhase.SUBSCRIBED:
                self._resume(arrival, events)
            else:
                self._flush(arrival, conn)
        elif events or conn.phase is not ServerPhase.CHALLENGED:
            if conn.phase is ServerPhase.SUBSCRIBED and self._host.park(arrival, events):
                return  # welcomed and in the fan-out: it waits here for its next bytes
            self._resume(arrival, events)  # its task writes what the connection queued
        else:
            self._flush(arrival, conn)

    def _flush(self, arrival: Arrival, conn: ServerConnection) -> None:
        """Write what the connection queued (the 101 and the challenge, a pong)."""
        if write_queued(arrival.stream, conn):
            self._resume(arrival, ())  # its task sends the rest

    def _expire(self, now: float) -> None:
        # The head's deadline passed, or the handshake's: its task times it out.
        while (when := self._next_due()) is not None and when <= now:
            _, ticket = heapq.heappop(self._deadlines)
            self._resume(self._by_ticket[ticket], ())

    def _evict(self, arrival: Arrival) -> None:
        # Before the socket closes: its descriptor number is free for the next accept.
        self._leave(arrival)
        self._host.finish(arrival)

    def unpark(self, arrival: Arrival) -> None:
        """Give a parked subscriber its task now (the fan-out says goodbye to it, or
        drops it): the task reads the client's Close, or ends it, as for every
        connection."""
        if self._by_ticket.get(arrival.ticket) is arrival:
            self._resume(arrival, ())

    def _leave(self, arrival: Arrival) -> None:
        # Always before its socket closes (or moves to a task that waits on it).
        if self._arrivals.get(arrival.fd) is arrival:
            del self._arrivals[arrival.fd]
            self._poller.unregister(arrival.fd)
        self._by_ticket.pop(arrival.ticket, None)
        arrival.on_close = None
        if arrival.subscriber is not None:
            arrival.subscriber.wake = None  # from here its task is woken by its stream

    def _resume(self, arrival: Arrival, events: Sequence[Event]) -> None:
        self._leave(arrival)
        try:
            self._host.resume(arrival, events)
        except Exception:  # no error of one connection may end the room
            logger.exception("unexpected error on a connection")
            self._host.finish(arrival)
