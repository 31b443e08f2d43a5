"""One client-side connection, Sans-I/O: the upgrade, the handshake, every snapshot.

:class:`ClientConnection` wraps websockets' ``ClientProtocol`` (the HTTP upgrade,
framing, the closing handshake) and a :class:`~arraycrypto.core.handshake.ClientSession`
(the proofs and, through its :class:`~arraycrypto.core.handshake.SnapshotPolicy`, which
snapshots are accepted). The driver feeds it bytes, writes what it returns, and reports
its :attr:`~ClientConnection.deadline`; ``now`` is the wall clock in seconds.

Life of one connection::

    UPGRADING  --101 response------------------------> HANDSHAKING
    HANDSHAKING --challenge answered, welcome checked--> SUBSCRIBED  (Authenticated)
    SUBSCRIBED --snapshot----------------------------> SUBSCRIBED  (SnapshotAccepted/Rejected)
    any        --refused upgrade, bad proof, bad frame-> CLOSING     (Failed)
    any        --deadline: no handshake / no snapshot--> CLOSING     (Failed)
    any        --close()-------------------------------> CLOSING
    CLOSING    --server's close, end of input, deadline> CLOSED

The deadline before the welcome is ``connect_timeout``; after it, a server from which
no snapshot was accepted for three tick intervals (silent, or sending only snapshots
the client refuses) is left for the next one.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

import msgspec
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidMessage
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import WebSocketURI

from .envelope import SnapshotCipher
from .exceptions import AuthenticationError, ProtocolError
from .handshake import REASONS, Accepted, ClientSession, ClientState, CloseCode
from .http import refusal
from .wsrelease import release_protocol

__all__ = [
    "DEAD_AFTER_TICKS",
    "Authenticated",
    "ClientConnection",
    "ClientPhase",
    "Failed",
    "SnapshotAccepted",
    "SnapshotRejected",
]

#: No snapshot for this many tick intervals: the server is dead.
DEAD_AFTER_TICKS: Final = 3
_SILENCE_MARGIN: Final = 1.0  # seconds added to the dead-server deadline (delivery jitter)
_CLOSE_TIMEOUT: Final = 1.0  # seconds to wait for the server's close after ours
#: The largest frame a server may send (a snapshot is about 250 bytes).
MAX_SERVER_FRAME: Final = 64 * 1024

_ws_logger = logging.getLogger("arraycrypto.client.websocket")


class ClientPhase(enum.IntEnum):
    """Where a client connection is in its life (see the module docstring)."""

    UPGRADING = 1
    HANDSHAKING = 2
    SUBSCRIBED = 3
    CLOSING = 4
    CLOSED = 5


class Authenticated(msgspec.Struct, frozen=True):
    """Event: the server proved it holds the secret; snapshots follow."""

    session_id: str


class SnapshotAccepted(msgspec.Struct, frozen=True):
    """Event: a snapshot passed every check; encrypt under ``cipher`` until it expires."""

    cipher: SnapshotCipher
    expires_at: float  # wall-clock seconds


class SnapshotRejected(msgspec.Struct, frozen=True):
    """Event: a snapshot failed a check and was dropped; ``reason`` says which."""

    reason: str


class Failed(msgspec.Struct, frozen=True):
    """Event: the connection failed; it is closing. ``error`` says why."""

    error: Exception


Event = Authenticated | SnapshotAccepted | SnapshotRejected | Failed


class ClientConnection:
    """The client side of one connection to a server, from the upgrade to the close."""

    __slots__ = ("_deadline", "_protocol", "_session", "error", "phase")

    def __init__(
        self, uri: WebSocketURI, session: ClientSession, *, now: float, connect_timeout: float
    ) -> None:
        self._protocol = ClientProtocol(uri, max_size=MAX_SERVER_FRAME, logger=_ws_logger)
        self._protocol.send_request(self._protocol.connect())
        self._session = session
        self._deadline: float | None = now + connect_timeout
        self.phase = ClientPhase.UPGRADING
        #: Why the connection failed (after a Failed event), for the client to raise.
        self.error: Exception | None = None

    def __repr__(self) -> str:
        return f"ClientConnection(phase={self.phase.name})"

    @property
    def session_id(self) -> str | None:
        """The server's session id, once authenticated."""
        return self._session.session_id

    @property
    def deadline(self) -> float | None:
        """When the driver must call :meth:`timeout` (wall-clock seconds)."""
        return self._deadline

    @property
    def finished(self) -> bool:
        """Whether the driver must now close the transport."""
        return self.phase is ClientPhase.CLOSED

    def data_to_send(self) -> list[bytes]:
        """Return the bytes to write, in order; an empty chunk means "half-close now"."""
        return self._protocol.data_to_send()

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the server; return the events they caused."""
        protocol = self._protocol
        protocol.receive_data(data)
        events: list[Event] = []
        for event in protocol.events_received():
            if self.phase >= ClientPhase.CLOSING:
                break
            if isinstance(event, Response):
                if protocol.handshake_exc is not None:
                    self._fail(
                        ProtocolError(
                            f"WebSocket upgrade refused: {refusal(protocol.handshake_exc)}"
                        ),
                        now,
                        events,
                    )
                else:
                    self.phase = ClientPhase.HANDSHAKING
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self._text(bytes(event.data), now, events)
        self._after_protocol(now, events)
        return events

    def receive_eof(self, now: float) -> list[Event]:
        """Feed the end of input: the connection is over."""
        self._protocol.receive_eof()
        events: list[Event] = []
        self._after_protocol(now, events)
        self._end()
        return events

    def timeout(self, now: float) -> list[Event]:
        """Report that :attr:`deadline` passed."""
        events: list[Event] = []
        if self.phase is ClientPhase.CLOSING:
            self._end()
        elif self.phase is ClientPhase.SUBSCRIBED:
            quiet = f"no snapshot accepted for {DEAD_AFTER_TICKS} tick intervals"
            self._fail(TimeoutError(quiet), now, events)
        elif self.phase < ClientPhase.CLOSING:
            self._fail(TimeoutError("handshake timed out"), now, events)
        return events

    def close(self, now: float) -> None:
        """Close politely (1000): the client is done."""
        self._close(now)

    def release(self) -> None:
        """Break websockets' reference cycles once the connection ended (see
        :func:`~arraycrypto.core.wsrelease.release_protocol`)."""
        release_protocol(self._protocol)

    # -- rules ---------------------------------------------------------------------------

    def _text(self, payload: bytes, now: float, events: list[Event]) -> None:
        session = self._session
        try:
            result = session.receive_text(payload, int(now * 1000))
        except (AuthenticationError, ProtocolError) as exc:
            self._fail(exc, now, events)
            return
        if isinstance(result, bytes):
            self._protocol.send_text(result)
            return
        if session.state is ClientState.SUBSCRIBED and self.phase is not ClientPhase.SUBSCRIBED:
            self.phase = ClientPhase.SUBSCRIBED
            assert session.session_id is not None
            events.append(Authenticated(session.session_id))
            self._renew(now)
        if isinstance(result, Accepted):
            # Only an accepted snapshot proves the server useful: one that sends only
            # snapshots the client refuses (a clock far off, a replay) is left behind
            # after a few ticks like a silent one, for the next server.
            self._renew(now)
            cipher = result.cipher
            events.append(SnapshotAccepted(cipher, session.policy.expires_at(cipher.snapshot)))
        else:
            events.append(SnapshotRejected(result.reason))

    def _renew(self, now: float) -> None:
        interval = self._session.tick_interval
        assert interval is not None
        self._deadline = now + DEAD_AFTER_TICKS * interval + _SILENCE_MARGIN

    def _fail(self, error: Exception, now: float, events: list[Event]) -> None:
        if self.error is None:
            self.error = error
            events.append(Failed(error))
        if isinstance(error, AuthenticationError):
            # 4001, not 1000: the server's operator then reads that this client does
            # not share its secret (PROTOCOL.md, "Close codes"), not just "closed".
            code = CloseCode.AUTHENTICATION_FAILED
            self._close(now, code, REASONS[code])
        else:
            self._close(now)

    def _close(
        self, now: float, code: CloseCode = CloseCode.NORMAL_CLOSURE, reason: str = ""
    ) -> None:
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
        if self.phase < ClientPhase.CLOSING:
            self.phase = ClientPhase.CLOSING
            self._deadline = now + _CLOSE_TIMEOUT
        if self._protocol.state is State.CLOSED or self._protocol.state is State.CONNECTING:
            self._end()

    def _after_protocol(self, now: float, events: list[Event]) -> None:
        protocol = self._protocol
        if protocol.handshake_exc is not None and self.error is None:
            reason = f"WebSocket upgrade failed: {protocol.handshake_exc}"
            if isinstance(protocol.handshake_exc, InvalidMessage) and not protocol.uri.secure:
                # A TLS port answers a plain request with an alert or nothing, never HTTP.
                reason += " (if the server uses TLS, its URL is https:// or wss://)"
            self._fail(ProtocolError(reason), now, events)
        if (
            self.phase < ClientPhase.CLOSING
            and protocol.state is not State.OPEN
            and protocol.state is not State.CONNECTING
        ):
            # The server closed (or broke the framing): say why if it is ours to say.
            close = protocol.close_rcvd
            if close is not None and close.code == CloseCode.AUTHENTICATION_FAILED:
                self._fail(
                    AuthenticationError("server rejected our proof: is the secret right?"),
                    now,
                    events,
                )
            self.phase = ClientPhase.CLOSING
            self._deadline = now + _CLOSE_TIMEOUT
        if protocol.state is State.CLOSED:
            self._end()

    def _end(self) -> None:
        self.phase = ClientPhase.CLOSED
        self._deadline = None
