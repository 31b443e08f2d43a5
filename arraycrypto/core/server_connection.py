"""One server-side connection, Sans-I/O: WebSocket framing, the session, what may be sent.

:class:`ServerConnection` wraps websockets' Sans-I/O protocol (``ServerProtocol`` checks
the upgrade; its framing layer handles frames, pings and the closing handshake) and a
:class:`~arraycrypto.core.handshake.ServerSession` (the challenge and the proofs), and
owns every rule about this connection. The driver feeds
it bytes (``receive_data``), writes what :meth:`~ServerConnection.data_to_send` returns,
sleeps until :attr:`~ServerConnection.deadline` and reports it (``timeout``), and asks
it for every frame it would send on its own: :meth:`~ServerConnection.push` and
:meth:`~ServerConnection.ping` hand out bytes only while the state allows them, so
nothing can reach the wire after a Close frame.

Life of one connection (``now`` is the driver's clock, in seconds)::

    CHALLENGED --valid handshake frame------------------> SUBSCRIBED  (welcome; Subscribed)
    CHALLENGED --bad proof, unknown key id--------------> CLOSING 4001 (error frame first)
    CHALLENGED --malformed, fragmented, unknown frame---> CLOSING 4003 (error frame first)
    CHALLENGED --no handshake frame by the deadline-----> CLOSING 4002 (error frame first)
    any open   --binary frame---------------------------> CLOSING 1003
    SUBSCRIBED --any data frame-------------------------> CLOSING 4003 (error frame first)
    any open   --framing error, frame too large---------> CLOSING 1002 / 1009
    any open   --Close frame from the peer--------------> CLOSING (echoed)
    any open   --going_away()---------------------------> CLOSING 1001
    CLOSING    --peer's Close, end of input, deadline---> CLOSED
    any        --end of input, abort()------------------> CLOSED (no close frame)

Only SUBSCRIBED connections get pushes and pings. In CLOSING the only bytes that leave
are those of the closing handshake; CLOSED means the driver closes the transport.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Final

import msgspec
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

from . import messages as m
from .handshake import REASONS, CloseCode, ServerSession, Violation
from .http import RequestHead
from .keys import Key, Snapshot
from .wsrelease import release_protocol

SnapshotSource = Callable[[], Snapshot]

__all__ = [
    "CLOSE_TIMEOUT",
    "PING_FRAME",
    "HandshakeFailed",
    "PingVerdict",
    "ServerConnection",
    "ServerPhase",
    "Subscribed",
]

#: Seconds to wait for the peer's Close frame after sending ours, then close anyway.
CLOSE_TIMEOUT: Final = 2.0

# Server frames are unmasked and no extension is negotiated: a frame's bytes are the
# same for every client, so the empty ping is serialised once.
PING_FRAME: Final = Frame(Opcode.PING, b"").serialize(mask=False)

# websockets logs every connection at INFO: a separate, quieter logger.
_ws_logger = logging.getLogger("arraycrypto.server.websocket")

# One ServerProtocol serves every upgrade for its process_request(): it checks the request
# against its own settings (no origin list, no extension, no subprotocol, so it never
# negotiates one), and the attributes it sets on itself are never read.
_ACCEPTOR: Final = ServerProtocol(logger=_ws_logger)


#: The 101 response without its Sec-WebSocket-Accept line and final CRLF. Written out
#: rather than by ``ServerProtocol.accept()``, which builds a ``Headers`` object and
#: formats a Date per connection (9 % of the server's instructions per connection,
#: docs/benchmarks.md); a 1xx response needs no Date (RFC 9110, 6.6.1). Our acceptor
#: negotiates no extension and no subprotocol, so these are all the headers there are.
_SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


class _Framing(Protocol):
    """websockets' framing layer, closing with our documented reasons (PROTOCOL.md, 5).

    websockets words its own closes ("frame with 5000 bytes exceeds limit of 4096
    bytes"); the spec promises a fixed reason per code, where we have one.
    """

    def fail(self, code: int, reason: str = "") -> None:
        super().fail(code, REASONS.get(code, reason))


class ServerPhase(enum.IntEnum):
    """Where a connection is in its life (see the module docstring)."""

    CHALLENGED = 1
    SUBSCRIBED = 2
    CLOSING = 3
    CLOSED = 4


class Subscribed(msgspec.Struct, frozen=True):
    """Event: the client proved it holds the secret; it joins the fan-out."""

    session_id: str


class HandshakeFailed(msgspec.Struct, frozen=True):
    """Event: the connection ended before subscribing; ``reason`` labels the metric."""

    reason: str


Event = Subscribed | HandshakeFailed


#: The ``handshakes_failed_total`` reason of each close code sent before subscribing.
_FAILURE_REASONS: Final = {
    CloseCode.AUTHENTICATION_FAILED: "authentication",
    CloseCode.HANDSHAKE_TIMEOUT: "timeout",
    CloseCode.UNSUPPORTED_VERSION: "version",
}


class PingVerdict(enum.Enum):
    """What the pinger must do for one connection (see :meth:`ServerConnection.ping_verdict`)."""

    WAIT = "wait"  # a ping is out and not yet overdue, or the next is not due
    SEND = "send"  # a ping is due: send :meth:`ServerConnection.ping`
    DEAD = "dead"  # no pong within ping_timeout: drop without a close frame


class ServerConnection:
    """The server side of one WebSocket connection, from the upgrade to the close.

    Create it with :meth:`upgrade`, which answers the HTTP upgrade request and queues
    the challenge. ``now`` is the driver's clock (seconds, any epoch, never going back).
    """

    __slots__ = (
        "_current",
        "_deadline",
        "_protocol",
        "_session",
        "last_pong",
        "phase",
        "ping_sent",
        "session_id",
    )

    def __init__(
        self,
        protocol: Protocol,
        session: ServerSession,
        current: SnapshotSource,
        deadline: float,
    ) -> None:
        self._protocol = protocol
        # Both needed only until the welcome, then dropped (memory per connection).
        self._session: ServerSession | None = session
        self._current: SnapshotSource | None = current
        self._deadline: float | None = deadline
        self.phase = ServerPhase.CHALLENGED
        self.session_id = session.session_id
        self.ping_sent: float | None = None
        self.last_pong = 0.0

    def __repr__(self) -> str:
        return f"ServerConnection(session={self.session_id}, phase={self.phase.name})"

    @classmethod
    def upgrade(
        cls,
        request: RequestHead,
        *,
        key: Key,
        challenge: bytes,
        session_id: str,
        tick_interval: float,
        max_frame_size: int,
        current: SnapshotSource,
        now: float,
        deadline: float,
    ) -> ServerConnection | None:
        """Accept a WebSocket upgrade request; None if websockets refuses it (answer 400).

        The 101 response and the challenge are queued: send :meth:`data_to_send`.
        ``current`` returns the server's current snapshot, which the welcome carries;
        ``deadline`` is when the handshake must be done (the pre-authentication phase's
        one deadline, from accept).
        """
        # RFC 6455, 4.1: an HTTP/1.1 request. websockets' Request does not carry the
        # version in every release we support (websockets>=14), so it is checked here.
        if request.version != "HTTP/1.1":
            return None
        # websockets checks the rest of the upgrade request (Connection, Upgrade, the
        # key, version 13) and computes Sec-WebSocket-Accept. No extension is offered:
        # compression would double the fan-out's CPU and make frame bytes differ
        # between clients.
        try:
            accept, _, _ = _ACCEPTOR.process_request(
                Request(request.target, Headers(request.raw_headers))
            )
        except InvalidHandshake:
            return None
        # The connection itself needs only websockets' framing layer, created OPEN: our
        # own parser read the request head, so its parser starts at the frames and never
        # holds the request (or its headers) alive for the connection's lifetime.
        protocol = _Framing(
            Side.SERVER, state=State.OPEN, max_size=max_frame_size, logger=_ws_logger
        )
        session = ServerSession(key, challenge, session_id, tick_interval)
        protocol.writes.append(b"%s%s\r\n\r\n" % (_SWITCHING, accept.encode()))
        protocol.send_text(session.challenge_message())
        return cls(protocol, session, current, deadline)

    # -- what the driver asks ------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When the driver must call :meth:`timeout` (None: no deadline)."""
        return self._deadline

    @property
    def finished(self) -> bool:
        """Whether the driver must now close the transport."""
        return self.phase is ServerPhase.CLOSED

    def data_to_send(self) -> list[bytes]:
        """Return the bytes to write, in order; an empty chunk means "half-close now"."""
        return self._protocol.data_to_send()

    def push(self, frame: bytes) -> bytes | None:
        """Return ``frame`` (a pre-serialised snapshot push) if it may be sent now.

        Only a subscribed connection in the open state gets pushes: never before the
        welcome, never after a Close frame was sent or received.
        """
        if self.phase is ServerPhase.SUBSCRIBED:
            return frame
        return None

    def ping_verdict(self, now: float, interval: float, timeout: float) -> PingVerdict:
        """Decide the pinger's move for this connection at ``now``."""
        if self.phase is not ServerPhase.SUBSCRIBED:
            return PingVerdict.WAIT
        sent = self.ping_sent
        if sent is None:
            return PingVerdict.SEND
        if self.last_pong < sent:  # still unanswered
            return PingVerdict.DEAD if now - sent >= timeout else PingVerdict.WAIT
        return PingVerdict.SEND if now - sent >= interval else PingVerdict.WAIT

    def ping(self, now: float) -> bytes | None:
        """Return the ping frame and note when it was sent; None unless subscribed."""
        if self.phase is not ServerPhase.SUBSCRIBED:
            return None
        self.ping_sent = now
        return PING_FRAME

    # -- what the driver reports ---------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; return the events they caused."""
        protocol = self._protocol
        protocol.receive_data(data)
        events: list[Event] = []
        for event in protocol.events_received():
            if self.phase >= ServerPhase.CLOSING:
                break  # websockets handles the rest of the closing handshake
            if not isinstance(event, Frame):  # pragma: no cover - the request was ours
                continue
            try:
                self._frame(event, now, events)
            except Violation as exc:
                self._violation(exc.code, now, events)
        self._after_protocol(now, events)
        return events

    def receive_eof(self, now: float) -> list[Event]:
        """Report the end of input: the connection is over."""
        self._protocol.receive_eof()
        events: list[Event] = []
        if self.phase is ServerPhase.CHALLENGED:
            events.append(HandshakeFailed("disconnected"))
        self._end()
        return events

    def timeout(self, now: float) -> list[Event]:
        """Report that :attr:`deadline` passed."""
        events: list[Event] = []
        if self.phase is ServerPhase.CHALLENGED:
            self._violation(CloseCode.HANDSHAKE_TIMEOUT, now, events)
        elif self.phase is ServerPhase.CLOSING:
            self._end()  # the peer never echoed our Close: give up on it
        return events

    def going_away(self, now: float) -> None:
        """Start the closing handshake with 1001: the server is shutting down."""
        self._close(CloseCode.GOING_AWAY, REASONS[CloseCode.GOING_AWAY], now)

    def abort(self) -> None:
        """End without a closing handshake (the peer stopped reading or answering)."""
        self._end()

    def release(self) -> None:
        """Break websockets' reference cycles once the connection ended (see
        :func:`~arraycrypto.core.wsrelease.release_protocol`)."""
        release_protocol(self._protocol)

    # -- rules ---------------------------------------------------------------------------

    def _frame(self, frame: Frame, now: float, events: list[Event]) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            self.last_pong = now
        elif opcode is Opcode.BINARY:
            raise Violation(CloseCode.UNSUPPORTED_DATA)
        elif opcode is Opcode.TEXT and frame.fin and self._session is not None:
            assert self._current is not None
            welcome = self._session.receive_text(bytes(frame.data), self._current())
            self._protocol.send_text(welcome)
            self.phase = ServerPhase.SUBSCRIBED
            self._forget_handshake()
            self._deadline = None
            events.append(Subscribed(self.session_id))
        elif opcode is Opcode.TEXT or opcode is Opcode.CONT:
            # A second data frame, or a fragment: we never fragment and accept none.
            raise Violation(CloseCode.UNEXPECTED_MESSAGE)
        # PING is answered by websockets; CLOSE is echoed by it (see _after_protocol).

    def _violation(self, code: CloseCode, now: float, events: list[Event]) -> None:
        if self.phase is ServerPhase.CHALLENGED:
            events.append(HandshakeFailed(_FAILURE_REASONS.get(code, "protocol")))
        if code >= 4000 and self._protocol.state is State.OPEN:
            # Application codes come with an error message first (PROTOCOL.md, section 5).
            self._protocol.send_text(m.encode(m.ErrorMessage(code=int(code), reason=REASONS[code])))
        self._close(code, REASONS[code], now)

    def _close(self, code: int, reason: str, now: float) -> None:
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
        if self.phase < ServerPhase.CLOSING:
            self.phase = ServerPhase.CLOSING
            self._forget_handshake()
            self._deadline = now + CLOSE_TIMEOUT
        self._settle()

    def _after_protocol(self, now: float, events: list[Event]) -> None:
        # websockets may have left OPEN on its own: a Close frame from the peer (echoed),
        # or a framing error / oversized frame (1002 / 1009 sent).
        if self.phase < ServerPhase.CLOSING and self._protocol.state is not State.OPEN:
            if self.phase is ServerPhase.CHALLENGED:
                # A Close of its own is no protocol error; a framing error or an
                # oversized frame is. A client that does not trust this server's key
                # (another secret) says so with 4001.
                close = self._protocol.close_rcvd
                if self._protocol.close_rcvd_then_sent is not True:
                    reason = "protocol"
                elif close is not None and close.code == CloseCode.AUTHENTICATION_FAILED:
                    reason = "rejected"
                else:
                    reason = "closed"
                events.append(HandshakeFailed(reason))
            self.phase = ServerPhase.CLOSING
            self._forget_handshake()
            self._deadline = now + CLOSE_TIMEOUT
        self._settle()

    def _settle(self) -> None:
        # The closing handshake is complete once websockets says CLOSED, or once it
        # sent its end of output after receiving the peer's Close (it needs no more).
        if self._protocol.state is State.CLOSED or (
            self.phase is ServerPhase.CLOSING and self._protocol.close_rcvd is not None
        ):
            self._end()

    def _end(self) -> None:
        self.phase = ServerPhase.CLOSED
        self._forget_handshake()
        self._deadline = None

    def _forget_handshake(self) -> None:
        self._session = None
        self._current = None
