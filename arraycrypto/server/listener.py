"""The listener: accept connections, admit or refuse them, and run each one's life.

Per connection: the ``max_connections`` check (:mod:`.door`, before any TLS handshake:
a refused connection costs no handshake), TLS if configured, the HTTP request head; a
WebSocket upgrade on the configured path becomes a :class:`ServerConnection` driven by
the one driver loop until it ends, anything else is answered by the HTTP shim. A
plain-TCP connection on Linux waits in the room (:mod:`.room`) without a task: for its
request head and handshake, then, subscribed, for its next bytes. It gets its task as
soon as it has more to do than wait; the task goes on from there with the same code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import anyio.abc

from ..core import http
from ..core.config import ServerConfig
from ..core.keys import CHALLENGE_SIZE, Key
from ..core.server_connection import (
    Event,
    HandshakeFailed,
    ServerConnection,
    SnapshotSource,
    Subscribed,
)
from ..net.driver import Driver
from ..net.logs import RateLimitedLog
from ..net.sockets import STREAM_ERRORS, DirectStream, SocketStream
from ..net.tls import ServerTLSStream
from .acceptor import Listening, accept_loop
from .door import Door
from .fanout import Fanout, Subscriber
from .metrics import Metrics
from .room import Arrival, Room, write_queued
from .shim import Failure, Shim

__all__ = ["Listener"]

logger = logging.getLogger("arraycrypto.server")

_GOODBYE_TIMEOUT: Final = 1.0  # seconds for the 1001 closing handshake when stopping

#: What a failed handshake most likely means, for the log line (the metric keeps the
#: short reason). Never a secret or a key: the key id alone is not logged either.
_FAILURE_HINTS: Final = {
    "rejected": (
        "rejected: the client does not trust this server's key; check that its"
        " secret_key is this server's (while rotating: in its next_secret_keys), or"
        " that this server does not still sign with a key the client has retired"
    ),
    "authentication": "authentication: the client's proof is wrong",
}


class Listener:
    """Accepts connections on the server's sockets and runs each one."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        shim: Shim,
        fanout: Fanout,
        key: Callable[[], Key],
        current: SnapshotSource,
        ssl_context: ssl.SSLContext | None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self._draining = draining
        self.metrics = metrics
        self.shim = shim
        self.fanout = fanout
        self._key = key
        self._current = current
        self._ssl = ssl_context
        self.door = Door(config, metrics)
        #: Plain-TCP connections with no task of their own (Linux), while the server runs.
        self.room: Room | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        # Port scanners, floods and dying clients repeat the same lines at network speed.
        self._warnings = RateLimitedLog(logger)

    def reload(self, config: ServerConfig, ssl_context: ssl.SSLContext | None) -> None:
        """Take a new config and TLS context: new connections get them, open ones keep theirs."""
        self.config = config
        self._ssl = ssl_context
        self.door.reload(config)

    async def accept_loop(self, sock: Listening, tg: anyio.abc.TaskGroup) -> None:
        """Accept on a listening socket until cancelled (:func:`.acceptor.accept_loop`);
        each connection goes to the room or gets a task in ``tg``."""
        await accept_loop(
            sock, self.door, self.metrics, self._warnings, lambda client: self._take(client, tg)
        )

    def _take(self, sock: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        """Hand a new connection to the room, or to a task of its own.

        A function of its own: a local in the accept loop would keep the last connection
        alive while it waits.
        """
        room = self.room
        # A fixed task name: deriving one from the function costs per connection.
        if room is None or self._ssl is not None:
            # TLS (its handshake needs a task), or no room (not Linux).
            self.door.incoming += 1
            tg.start_soon(self._connection, sock, name="arraycrypto connection")
            return
        arrival = self.door.arrive(sock, None)
        if arrival.ticket:
            try:
                room.add(arrival)
                return
            except OSError as exc:  # the kernel's epoll limits: this one gets a task
                self._warnings.log(logging.WARNING, "resources", "room full (%s)", exc.strerror)
        # Refused (a task answers 503), or not taken by the room.
        tg.start_soon(self._run, arrival, (), name="arraycrypto connection")

    async def run_room(
        self,
        tg: anyio.abc.TaskGroup,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the room for plain-TCP connections until cancelled (Linux).

        ``tg``: where a connection leaving the room gets its task. Started (``tg.start``)
        once the room takes connections.
        """
        if not Room.available():
            task_status.started()
            return
        self._tg = tg
        self.room = room = Room(self)
        task_status.started()
        try:
            await room.run()
        finally:
            self.room = None
            self._tg = None

    # -- what the room asks (room.Host) -------------------------------------------------

    def upgrade_here(
        self, request: http.RequestHead, now: float, deadline: float
    ) -> ServerConnection | None:
        """Upgrade ``request`` if the room may take it; None: leave it to a task.

        The task's :meth:`_open` answers everything else, as for every connection.
        """
        if not self._upgradable(request) or self._draining():
            return None
        return self._upgrade(request, now, deadline)

    def park(self, arrival: Arrival, events: Sequence[Event]) -> bool:
        """Welcome a connection that subscribed in the room and add it to the fan-out;
        return whether it may wait there, with no task, until it has more to say.

        It joins the fan-out at once: out of the pending pool, so a client already
        welcomed is never evicted, and in the fan-out, so it misses no tick. The welcome
        goes into the stream first: every push is written after it. A welcome the
        kernel did not take whole needs its task to send the rest.
        """
        conn = arrival.conn
        assert conn is not None
        backlogged = write_queued(arrival.stream, conn)
        subscriber = self._handle(events, conn, arrival.stream, arrival.ticket)
        arrival.subscriber = subscriber
        room = self.room
        if subscriber is None or backlogged or room is None:
            return False
        subscriber.wake = lambda: room.unpark(arrival)
        return True

    def resume(self, arrival: Arrival, events: Sequence[Event]) -> None:
        """Give a connection leaving the room its own task, from where it left."""
        assert self._tg is not None
        subscriber = arrival.subscriber
        if subscriber is not None:
            # It subscribed in the room (park): its Subscribed event was handled there.
            events = [e for e in events if not isinstance(e, Subscribed)]
        self._tg.start_soon(self._run, arrival, events, subscriber, name="arraycrypto connection")
        # Only once its task has it: if starting one failed, finish() still discards it.
        arrival.subscriber = None

    def finish(self, arrival: Arrival) -> None:
        """A connection ended in the room (evicted, or the server stopped): count it out."""
        conn = arrival.conn
        subscriber, arrival.subscriber = arrival.subscriber, None
        try:
            if conn is not None and not conn.finished:  # its handshake failed: disconnected
                self._handle(conn.receive_eof(time.monotonic()), conn, arrival.stream, 0)
        except Exception:  # from the accept loop or the room: never theirs to end
            logger.exception("unexpected error on a connection")
        finally:
            self._ended(arrival.ticket, conn)
            if subscriber is not None:
                self.fanout.discard(subscriber)
            arrival.stream.close()

    # -- a connection's task ---------------------------------------------------------------

    async def _connection(self, sock: socket.socket) -> None:
        """A connection with a task from accept on: TLS, or no room."""
        self.door.incoming -= 1  # admitted below, before any await
        await self._run(self.door.arrive(sock, self._ssl), ())

    async def _run(
        self, arrival: Arrival, events: Sequence[Event], subscriber: Subscriber | None = None
    ) -> None:
        """The rest of one connection's life, in one frame.

        From accept (``arrival`` fresh), or from where the room left it: the head read
        so far, or the connection object and its ``events`` (and its fan-out entry,
        ``subscriber``, if it subscribed in the room). An idle subscriber with a task (TLS,
        no epoll, or one that left the room) waits in this frame: everything it keeps
        while it waits for its next bytes is here, the driver's step and the stream's
        receive. Each suspended frame costs every such connection memory, so the phases
        before it return first.
        """
        stream: DirectStream = arrival.stream
        plain, ticket, conn = arrival.stream, arrival.ticket, arrival.conn
        try:
            if not ticket:
                self.metrics.rejected_full_total += 1
                if arrival.ssl is None:
                    await self.shim.reply(plain, "-", 503, {"error": "server full"})
                return  # TLS: refused by closing
            if conn is None:
                # One deadline for everything before authentication: TLS, the request
                # head, the handshake. A slow drip holds a place for handshake_timeout.
                if arrival.ssl is not None:
                    stream = await self._tls(plain, arrival.ssl, arrival.deadline)
                    # The request head's own time starts once TLS is up.
                    head_by = time.monotonic() + self.config.http_read_timeout
                    arrival.head_by = min(arrival.deadline, head_by)
                opened = await self._open(stream, arrival)
                if opened is None:
                    return  # answered over plain HTTP
                conn, events = opened
                del opened
            del arrival
            driver = Driver(stream, conn, time.monotonic)
            try:
                if stream.backlogged:  # what the room (or a fan-out writer) left queued
                    # Inside the goodbye's reach: stopping while this waits must still
                    # send the rest, then the Close, never close with a frame cut short.
                    try:
                        await stream.flush()
                    except STREAM_ERRORS:
                        events = [*events, *driver.end_of_input()]  # the peer is gone
                batch: Sequence[Event] | None = events
                del events
                while batch is not None:
                    subscriber = self._handle(batch, conn, stream, ticket) or subscriber
                    batch = await driver.step()
            except anyio.get_cancelled_exc_class():
                # The server is stopping: tell the client (1001), shielded and bounded.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_GOODBYE_TIMEOUT):
                    conn.going_away(time.monotonic())
                    if stream.backlogged:
                        # A Close already queued (a drain's, behind a push the kernel
                        # took in part): going_away() adds nothing, so the driver would
                        # not write; the rest and the Close go first.
                        with contextlib.suppress(*STREAM_ERRORS):
                            await stream.flush()
                    while (closing := await driver.step()) is not None:
                        self._handle(closing, conn, stream, ticket)
                raise
        except STREAM_ERRORS:
            pass  # the peer went away (or was evicted)
        except Exception:
            logger.exception("unexpected error on a connection")
        finally:
            self._ended(ticket, conn)
            if subscriber is not None:
                self.fanout.discard(subscriber)
                logger.debug("session %s ended", subscriber.session_id)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await stream.aclose()
            stream.close()

    def _ended(self, ticket: int, conn: ServerConnection | None) -> None:
        """A connection ended: out of the count and the admission; websockets' cycles."""
        self.door.ended(ticket)
        if conn is not None:
            conn.release()

    async def _tls(
        self, stream: SocketStream, context: ssl.SSLContext, deadline: float
    ) -> ServerTLSStream:
        try:
            with anyio.fail_after(deadline - time.monotonic()):
                return await ServerTLSStream.wrap(stream, context)
        except (TimeoutError, ssl.SSLError, *STREAM_ERRORS) as exc:
            # A port scanner or a plaintext client is not a server error: one line.
            self._warnings.log(logging.INFO, "tls", "TLS handshake failed: %s", type(exc).__name__)
            raise anyio.BrokenResourceError from None

    async def _open(
        self, stream: DirectStream, arrival: Arrival
    ) -> tuple[ServerConnection, Sequence[Event]] | None:
        """Read the request head; answer plain HTTP, or upgrade to a WebSocket connection.

        Returns the connection and the events of any bytes that followed the head, or
        None when the request was answered (or never came).
        """
        ticket = arrival.ticket
        got = await self.shim.read_head(
            stream, arrival.head_by - time.monotonic(), prefix=arrival.head
        )
        if isinstance(got, Failure):
            await self.shim.answer_failure(stream, got)
            return None
        head, rest = got
        try:
            request = http.parse_request_head(head)
        except ValueError:
            await self.shim.reply(stream, "-", 400, {"error": "bad request"})
            return None
        if not self._upgradable(request):
            self.door.authenticated(ticket)  # a complete request: not a slow one
            await self.shim.answer(stream, request)
            return None
        if self._draining():
            # Lame duck: new clients go to another server (the load balancer's job too).
            self.door.authenticated(ticket)
            await self.shim.reply(stream, request.path, 503, {"error": "draining"}, request)
            return None
        now = time.monotonic()
        conn = self._upgrade(request, now, arrival.deadline)
        if conn is None:
            await self.shim.reply(
                stream, self.config.path, 400, {"error": "invalid websocket handshake"}
            )
            return None
        # Bytes the client sent right after its request head belong to the WebSocket.
        return conn, conn.receive_data(rest, now) if rest else ()

    def _upgradable(self, request: http.RequestHead) -> bool:
        """Whether ``request`` asks for the WebSocket (anything else the shim answers)."""
        return (
            request.path == self.config.path
            and request.method == "GET"
            and request.is_websocket_upgrade()
        )

    def _upgrade(
        self, request: http.RequestHead, now: float, deadline: float
    ) -> ServerConnection | None:
        """The connection object for an upgrade request (None: websockets refuses it)."""
        return ServerConnection.upgrade(
            request,
            key=self._key(),
            challenge=os.urandom(CHALLENGE_SIZE),
            session_id=secrets.token_hex(6),
            tick_interval=self.config.tick_interval,
            max_frame_size=self.config.max_frame_size,
            current=self._current,
            now=now,
            deadline=deadline,
        )

    def _handle(
        self, events: Sequence[Event], conn: ServerConnection, stream: DirectStream, ticket: int
    ) -> Subscriber | None:
        """Act on a connection's events; return its fan-out entry once it subscribed."""
        subscriber = None
        for event in events:
            if isinstance(event, Subscribed):
                self.door.subscribed(ticket, time.monotonic())
                self.metrics.handshakes_ok_total += 1
                subscriber = self.fanout.add(conn, stream)
                logger.debug("session %s subscribed", event.session_id)
            elif isinstance(event, HandshakeFailed):
                self.metrics.count("handshakes_failed_total", event.reason)
                hint = _FAILURE_HINTS.get(event.reason, event.reason)
                logger.info("session %s: handshake failed (%s)", conn.session_id, hint)
        return subscriber
