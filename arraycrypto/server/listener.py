"""The listener: accept connections, admit or refuse them, and run each one's life.

Per connection: the ``max_connections`` check (before any TLS handshake: a refused
connection costs no handshake), TLS if configured, the HTTP request head; a WebSocket
upgrade on the configured path becomes a :class:`ServerConnection` driven by the one
driver loop until it ends, anything else is answered by the HTTP shim.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from ..core import http
from ..core.admission import Admission
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
from .fanout import Fanout, Subscriber
from .metrics import Metrics
from .shim import Failure, Shim

__all__ = ["Listener"]

logger = logging.getLogger("arraycrypto.server")

# accept() errors that mean "out of resources for now": wait a little, then go on.
_ACCEPT_RETRY: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors that mean the listening socket itself is unusable.
_LISTENER_BROKEN: Final = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})
_ACCEPT_BATCH: Final = 256  # connections accepted per wake-up before yielding to others
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


class _Listening(Protocol):
    """A listening socket, as the accept loop uses it."""

    def fileno(self) -> int:
        """Its descriptor, to wait on."""

    def accept(self) -> tuple[socket.socket, Any]:
        """One pending connection (non-blocking)."""


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
        self.admission = Admission(config.max_connections, config.pending_limit)
        self._pending: dict[int, SocketStream] = {}  # ticket -> stream, to evict
        self._incoming = 0  # accepted, not yet admitted (their tasks have not run)
        # Set when a pending connection leaves the pool, while accepting waits for that.
        self._room: anyio.Event | None = None
        # Port scanners, floods and dying clients repeat the same lines at network speed.
        self._warnings = RateLimitedLog(logger)
        metrics.gauges["pending_connections"] = lambda: self.admission.pending
        metrics.gauges["pending_evict_age_seconds"] = lambda: self.admission.evict_age

    def reload(self, config: ServerConfig, ssl_context: ssl.SSLContext | None) -> None:
        """Take a new config and TLS context: new connections get them, open ones keep theirs."""
        self.config = config
        self._ssl = ssl_context
        self.admission.max_connections = config.max_connections
        self.admission.max_pending = config.pending_limit

    async def accept_loop(self, sock: _Listening, tg: anyio.abc.TaskGroup) -> None:
        """Accept on a listening socket until cancelled, one task per connection.

        Our own loop rather than anyio's ``serve()``: it accepts every pending
        connection per wake-up (a reconnect storm arrives all at once), leaves wrapping
        the socket to the connection's own task, and no error of one connection ends
        it: running out of descriptors (EMFILE) slows accepting down, a connection that
        failed before we got to it (ECONNABORTED, EPROTO, a firewall's EPERM...) is
        skipped, as trio's own accept loop does. Only a listener that is itself broken
        (EBADF, ENOTSOCK, EINVAL) stops it. Warnings are rate-limited.
        """
        while True:
            await anyio.wait_readable(sock)
            for _ in range(_ACCEPT_BATCH):
                now = time.monotonic()
                until = self.admission.wait_until(now, self._incoming)
                if until is not None:
                    await self._wait_for_room(until - now)
                    break  # then look at the socket again
                try:
                    client, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break  # none pending
                except OSError as exc:
                    if exc.errno in _LISTENER_BROKEN:
                        raise
                    self.metrics.accept_errors_total += 1
                    if exc.errno in _ACCEPT_RETRY:
                        self._warnings.log(
                            logging.WARNING,
                            "resources",
                            "accept failed (%s): retrying in 0.1 s",
                            exc.strerror,
                        )
                        await anyio.sleep(0.1)
                        break
                    self._warnings.log(
                        logging.INFO, "connection", "accept failed (%s): skipped", exc.strerror
                    )
                    continue
                # A fixed task name: deriving one from the function costs per connection.
                self._incoming += 1
                tg.start_soon(self._connection, client, name="arraycrypto connection")
            else:
                await anyio.lowlevel.checkpoint()  # a long batch: let the others run

    async def _wait_for_room(self, seconds: float) -> None:
        """Leave newcomers in the kernel's accept queue while the pending pool is full of
        connections too young to evict (a reconnect storm: all mid-handshake).

        Until a pending connection leaves the pool, or ``seconds``, when the oldest is
        old enough to evict (core/admission.py says why).
        """
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()  # the accepted ones' tasks run first
            return
        self.metrics.accept_paused_total += 1
        if self._room is None:  # one event for every listening socket's loop
            self._room = anyio.Event()
        room = self._room
        with anyio.move_on_after(seconds):
            await room.wait()
        if self._room is room:
            self._room = None

    def _authenticated(self, ticket: int, now: float | None = None) -> None:
        """The connection proved itself (``now``) or was answered: room in the pool."""
        self.admission.authenticated(ticket, now)
        self._left_pool()

    def _left_pool(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    async def _connection(self, sock: socket.socket) -> None:
        """One connection's whole life, in one frame: an idle subscriber waits here.

        Everything a subscribed connection keeps while it waits for its next bytes is in
        this frame, the driver's step and the stream's receive: each suspended frame
        costs every connection memory, so the phases before it return first.
        """
        self._incoming -= 1  # admitted below, before any await
        metrics = self.metrics
        metrics.connections_total += 1
        metrics.connections += 1
        stream: DirectStream | None = None
        conn: ServerConnection | None = None
        subscriber: Subscriber | None = None
        ticket = 0
        try:
            # Small frames must leave at once (pushes, the welcome): no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = plain = SocketStream(sock)
            # Admitted before any TLS handshake: a refused connection costs none.
            ticket = self._admit(plain)
            if not ticket:
                metrics.rejected_full_total += 1
                if self._ssl is None:
                    await self.shim.reply(plain, "-", 503, {"error": "server full"})
                return  # TLS: refused by closing
            # One deadline for everything before authentication: TLS, the request head,
            # the handshake. A slow drip holds a place for handshake_timeout at most.
            deadline = time.monotonic() + self.config.handshake_timeout
            if self._ssl is not None:
                stream = await self._tls(plain, deadline)
            opened = await self._open(stream, ticket, deadline)
            if opened is None:
                return  # answered over plain HTTP
            conn, first = opened
            del opened
            driver = Driver(stream, conn, time.monotonic)
            events: Sequence[Event] | None = first
            del first
            try:
                while events is not None:
                    subscriber = self._handle(events, conn, stream, ticket) or subscriber
                    events = await driver.step()
            except anyio.get_cancelled_exc_class():
                # The server is stopping: tell the client (1001), shielded and bounded.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_GOODBYE_TIMEOUT):
                    conn.going_away(time.monotonic())
                    while (closing := await driver.step()) is not None:
                        self._handle(closing, conn, stream, ticket)
                raise
        except STREAM_ERRORS:
            pass  # the peer went away (or was evicted)
        except Exception:
            logger.exception("unexpected error on a connection")
        finally:
            metrics.connections -= 1
            if ticket:
                self._pending.pop(ticket, None)
                self.admission.done(ticket)
                self._left_pool()
            if subscriber is not None:
                self.fanout.discard(subscriber)
                logger.debug("session %s ended", subscriber.session_id)
            if conn is not None:
                conn.release()
            if stream is None:
                sock.close()
            else:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await stream.aclose()
                stream.close()

    def _admit(self, stream: SocketStream) -> int:
        """A ticket for a new connection (evicting the oldest pending one), or 0: full."""
        admitted = self.admission.arrive(time.monotonic())
        if admitted is None:
            return 0
        ticket, evicted = admitted
        if evicted is not None:
            self.metrics.pending_evicted_total += 1
            # Closing the socket wakes that connection's task, which ends.
            victim = self._pending.pop(evicted, None)
            if victim is not None:
                victim.close()
        self._pending[ticket] = stream
        return ticket

    async def _tls(self, stream: SocketStream, deadline: float) -> ServerTLSStream:
        assert self._ssl is not None
        try:
            with anyio.fail_after(deadline - time.monotonic()):
                return await ServerTLSStream.wrap(stream, self._ssl)
        except (TimeoutError, ssl.SSLError, *STREAM_ERRORS) as exc:
            # A port scanner or a plaintext client is not a server error: one line.
            self._warnings.log(logging.INFO, "tls", "TLS handshake failed: %s", type(exc).__name__)
            raise anyio.BrokenResourceError from None

    async def _open(
        self, stream: DirectStream, ticket: int, deadline: float
    ) -> tuple[ServerConnection, Sequence[Event]] | None:
        """Read the request head; answer plain HTTP, or upgrade to a WebSocket connection.

        Returns the connection and the events of any bytes that followed the head, or
        None when the request was answered (or never came).
        """
        got = await self.shim.read_head(stream, deadline - time.monotonic())
        if isinstance(got, Failure):
            await self.shim.answer_failure(stream, got)
            return None
        head, rest = got
        try:
            request = http.parse_request_head(head)
        except ValueError:
            await self.shim.reply(stream, "-", 400, {"error": "bad request"})
            return None
        if (
            request.path != self.config.path
            or request.method != "GET"
            or not request.is_websocket_upgrade()
        ):
            self._authenticated(ticket)  # a complete request: not a slow one
            await self.shim.answer(stream, request)
            return None
        if self._draining():
            # Lame duck: new clients go to another server (the load balancer's job too).
            self._authenticated(ticket)
            await self.shim.reply(stream, request.path, 503, {"error": "draining"}, request)
            return None
        now = time.monotonic()
        conn = ServerConnection.upgrade(
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
        if conn is None:
            await self.shim.reply(
                stream, self.config.path, 400, {"error": "invalid websocket handshake"}
            )
            return None
        # Bytes the client sent right after its request head belong to the WebSocket.
        return conn, conn.receive_data(rest, now) if rest else ()

    def _handle(
        self, events: Sequence[Event], conn: ServerConnection, stream: DirectStream, ticket: int
    ) -> Subscriber | None:
        """Act on a connection's events; return its fan-out entry once it subscribed."""
        subscriber = None
        for event in events:
            if isinstance(event, Subscribed):
                self._authenticated(ticket, time.monotonic())
                self._pending.pop(ticket, None)
                self.metrics.handshakes_ok_total += 1
                subscriber = self.fanout.add(conn, stream)
                logger.debug("session %s subscribed", event.session_id)
            elif isinstance(event, HandshakeFailed):
                self.metrics.count("handshakes_failed_total", event.reason)
                hint = _FAILURE_HINTS.get(event.reason, event.reason)
                logger.info("session %s: handshake failed (%s)", conn.session_id, hint)
        return subscriber
