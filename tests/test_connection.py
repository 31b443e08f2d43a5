"""The connection objects, Sans-I/O: a client and a server wired with no sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from arraycrypto import AuthenticationError
from arraycrypto.core import messages as m
from arraycrypto.core.client_connection import (
    Authenticated,
    ClientPhase,
    Failed,
    SnapshotAccepted,
    SnapshotRejected,
)
from arraycrypto.core.server_connection import (
    CLOSE_TIMEOUT,
    PING_FRAME,
    HandshakeFailed,
    PingVerdict,
    ServerConnection,
    ServerPhase,
    Subscribed,
)

from .harness import frames
from .harness.constants import OTHER, RFC_6455_KEY
from .harness.pure import Wire

PUSH = Frame(Opcode.TEXT, b"{}").serialize(mask=False)


def frames_from(conn: ServerConnection) -> list[Frame]:
    """Parse what the server wrote (after the 101) as a client would."""
    peer = Protocol(Side.CLIENT, state=State.OPEN)
    data = b"".join(conn.data_to_send())
    if data.startswith(b"HTTP/1.1 101"):
        data = data[data.index(b"\r\n\r\n") + 4 :]
    peer.receive_data(data)
    return [e for e in peer.events_received() if isinstance(e, Frame)]


def client_frame(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True)


def test_handshake_subscribes_both_sides() -> None:
    wire = Wire()
    server_events, client_events = wire.handshake()
    assert server_events == [Subscribed("sess-1")]
    assert wire.server.phase is ServerPhase.SUBSCRIBED
    assert wire.server.deadline is None  # no deadline once subscribed: pings watch it
    assert [type(e) for e in client_events] == [Authenticated, SnapshotAccepted]
    accepted = client_events[1]
    assert isinstance(accepted, SnapshotAccepted)
    assert accepted.cipher.snapshot == wire.snapshot
    assert accepted.expires_at == wire.snapshot.timestamp / 1000 + 60
    assert wire.client.phase is ClientPhase.SUBSCRIBED


def test_pushes_and_pings_only_while_subscribed() -> None:
    wire = Wire()
    assert wire.server.push(PUSH) is None  # challenged, not yet subscribed
    assert wire.server.ping(wire.now) is None
    wire.handshake()
    assert wire.server.push(PUSH) == PUSH
    assert wire.server.ping(wire.now) == PING_FRAME


@pytest.mark.parametrize("ending", ["violation", "client close", "going away", "abort", "eof"])
def test_nothing_is_handed_out_after_a_close(ending: str) -> None:
    # The push-after-close bug made impossible by construction: whatever ends the
    # session, push() and ping() return nothing from that moment on.
    wire = Wire()
    wire.handshake()
    now = wire.now
    server = wire.server
    if ending == "violation":
        server.receive_data(client_frame(Opcode.TEXT, b'{"type":"handshake"}'), now)
    elif ending == "client close":
        server.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8"), now)
    elif ending == "going away":
        server.going_away(now)
    elif ending == "abort":
        server.abort()
    else:
        server.receive_eof(now)
    assert server.phase in (ServerPhase.CLOSING, ServerPhase.CLOSED)
    assert server.push(PUSH) is None
    assert server.ping(now) is None
    assert server.ping_verdict(now + 1000, 1.0, 1.0) is PingVerdict.WAIT


def test_a_second_text_frame_gets_error_then_close_4003() -> None:
    wire = Wire()
    wire.handshake()
    wire.server.data_to_send()
    events = wire.server.receive_data(client_frame(Opcode.TEXT, b"{}"), wire.now)
    assert events == []  # subscribed already: no handshake failure to count
    sent = frames_from(wire.server)
    assert [f.opcode for f in sent] == [Opcode.TEXT, Opcode.CLOSE]
    error = m.decode(bytes(sent[0].data))
    assert error == m.ErrorMessage(code=4003, reason="unexpected message")
    assert sent[1].data[:2] == (4003).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("data", "code", "error", "reason"),
    [
        (client_frame(Opcode.BINARY, b"\x00"), 1003, False, "protocol"),
        (client_frame(Opcode.TEXT, b'{"type":', fin=False), 4003, True, "protocol"),
        (client_frame(Opcode.TEXT, b"not json"), 4003, True, "protocol"),
        (client_frame(Opcode.TEXT, b"x" * 5000), 1009, False, "protocol"),
        (Frame(Opcode.TEXT, b"{}").serialize(mask=False), 1002, False, "protocol"),
    ],
    ids=["binary", "fragment", "malformed", "too large", "unmasked"],
)
def test_handshake_phase_violations(data: bytes, code: int, error: bool, reason: str) -> None:
    wire = Wire()
    wire.to_client()  # the challenge reaches the client; it answers nothing yet
    wire.server.data_to_send()
    events = wire.server.receive_data(data, wire.now)
    assert events == [HandshakeFailed(reason)]
    sent = frames_from(wire.server)
    assert [f.opcode for f in sent] == ([Opcode.TEXT] if error else []) + [Opcode.CLOSE]
    assert int.from_bytes(sent[-1].data[:2], "big") == code


def test_wrong_secret_fails_the_handshake_with_4001() -> None:
    wire = Wire(client_secret=OTHER)
    events = wire.to_client()  # the client does not hold the server's key id
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert isinstance(events[0].error, AuthenticationError)


def test_a_client_without_the_servers_key_closes_4001_and_the_server_counts_it() -> None:
    # The server's log said only "handshake failed (closed)" for the commonest first-hour
    # mistake (a client configured with another secret): the close code now says it.
    wire = Wire(client_secret=OTHER)
    wire.to_client()
    peer = Protocol(Side.SERVER, state=State.OPEN)
    sent = b"".join(wire.client.data_to_send())
    peer.receive_data(sent)
    (close,) = [e for e in peer.events_received() if isinstance(e, Frame)]
    assert close.opcode is Opcode.CLOSE  # no text frame: the server would read a handshake
    assert int.from_bytes(close.data[:2], "big") == 4001
    assert close.data[2:] == b"authentication failed"  # generic, as the server's
    events = wire.server.receive_data(sent, wire.now)
    assert events == [HandshakeFailed("rejected")]


def test_a_client_that_fails_the_servers_proof_closes_4001() -> None:
    wire = Wire()
    wire.to_client()
    wire.to_server()
    welcome = b"".join(wire.server.data_to_send())
    # One bit of the welcome's proof flipped on its way (the frame is unmasked JSON).
    at = welcome.index(b'"proof":"') + len(b'"proof":"')
    flipped = b"1" if welcome[at : at + 1] != b"1" else b"2"
    events = wire.client.receive_data(welcome[:at] + flipped + welcome[at + 1 :], wire.now)
    assert [type(e) for e in events] == [Failed]
    assert isinstance(wire.client.error, AuthenticationError)
    peer = Protocol(Side.SERVER, state=State.OPEN)
    peer.receive_data(b"".join(wire.client.data_to_send()))
    (close,) = [e for e in peer.events_received() if isinstance(e, Frame)]
    assert int.from_bytes(close.data[:2], "big") == 4001


def test_handshake_timeout_is_error_then_close_4002() -> None:
    wire = Wire(handshake_timeout=5.0)
    wire.to_client()
    deadline = wire.server.deadline
    assert deadline == wire.now + 5.0
    wire.server.data_to_send()
    assert wire.server.timeout(deadline) == [HandshakeFailed("timeout")]
    sent = frames_from(wire.server)
    assert [f.opcode for f in sent] == [Opcode.TEXT, Opcode.CLOSE]
    assert m.decode(bytes(sent[0].data)) == m.ErrorMessage(code=4002, reason="handshake timeout")
    # Then it waits CLOSE_TIMEOUT for the echo, and gives up.
    assert wire.server.deadline == deadline + CLOSE_TIMEOUT
    wire.server.timeout(deadline + CLOSE_TIMEOUT)
    assert wire.server.finished


def test_close_from_the_client_is_echoed_and_ends_the_connection() -> None:
    wire = Wire()
    wire.handshake()
    wire.server.data_to_send()
    wire.server.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8bye"), wire.now)
    chunks = wire.server.data_to_send()
    assert chunks[-1] == b""  # the echo, then the end of output (the server closes first)
    assert wire.server.finished


def test_ping_bookkeeping() -> None:
    wire = Wire()
    wire.handshake()
    server, t = wire.server, wire.now
    assert server.ping_verdict(t, 20, 10) is PingVerdict.SEND  # never pinged yet
    server.ping(t)
    assert server.ping_verdict(t + 5, 20, 10) is PingVerdict.WAIT
    assert server.ping_verdict(t + 10, 20, 10) is PingVerdict.DEAD
    server.receive_data(client_frame(Opcode.PONG, b""), t + 1)
    assert server.ping_verdict(t + 10, 20, 10) is PingVerdict.WAIT  # answered
    assert server.ping_verdict(t + 20, 20, 10) is PingVerdict.SEND  # next one due


def test_client_rejects_a_stale_snapshot_and_keeps_its_deadline() -> None:
    wire = Wire()
    wire.handshake()
    deadline = wire.client.deadline
    assert deadline is not None
    ahead = wire.server_ring.new_snapshot(2, b"s" * 16, int((wire.now + 3600) * 1000))
    frame = Frame(Opcode.TEXT, m.encode(m.SnapshotMessage.from_snapshot(ahead)))
    events = wire.client.receive_data(frame.serialize(mask=False), wire.now + 0.5)
    assert events == [SnapshotRejected("timestamp outside max_drift of the local clock")]
    # Finding 3: only an accepted snapshot proves the server useful.
    assert wire.client.deadline == deadline


def test_client_silence_deadline_fails_the_connection() -> None:
    wire = Wire(tick_interval=1.0)
    wire.handshake()
    deadline = wire.client.deadline
    assert deadline is not None
    events = wire.client.timeout(deadline)
    assert len(events) == 1
    assert isinstance(events[0], Failed)
    assert isinstance(events[0].error, TimeoutError)
    assert wire.client.phase is ClientPhase.CLOSING


def test_server_error_4001_is_an_authentication_failure() -> None:
    wire = Wire()
    wire.to_client()
    wire.client.data_to_send()  # the proof goes nowhere: the "server" refuses it
    reply = m.encode(m.ErrorMessage(code=4001, reason="authentication failed"))
    data = Frame(Opcode.TEXT, reply).serialize(mask=False)
    data += Frame(Opcode.CLOSE, (4001).to_bytes(2, "big")).serialize(mask=False)
    events = wire.client.receive_data(data, wire.now)
    assert [type(e) for e in events] == [Failed]
    assert isinstance(wire.client.error, AuthenticationError)


RFC_KEY = b"Sec-WebSocket-Key: %s\r\n" % RFC_6455_KEY.encode()


def upgrade(head: bytes) -> ServerConnection | None:
    from arraycrypto.core import http

    wire = Wire()
    return ServerConnection.upgrade(
        http.parse_request_head(head),
        key=wire.server_ring.primary,
        challenge=b"c" * 32,
        session_id="s",
        tick_interval=1.0,
        max_frame_size=4096,
        current=lambda: wire.snapshot,
        now=0.0,
        deadline=5.0,
    )


def test_the_101_is_rfc_6455s_and_negotiates_no_extension() -> None:
    # RFC 6455, 1.3: this key's accept value is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=. A client
    # offering compression gets none: frame bytes stay the same for every client.
    conn = upgrade(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        + RFC_KEY
        + b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    assert conn is not None
    data = b"".join(conn.data_to_send())
    head = data[: data.index(b"\r\n\r\n") + 4]
    assert head == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    peer = Protocol(Side.CLIENT, state=State.OPEN)
    peer.receive_data(data[len(head) :])
    [challenge] = peer.events_received()
    assert isinstance(challenge, Frame)
    assert isinstance(m.decode(bytes(challenge.data)), m.Challenge)


@pytest.mark.parametrize(
    "headers",
    [
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
        b"Sec-WebSocket-Version: 13\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        + RFC_KEY
        + b"Sec-WebSocket-Version: 8\r\n",
        b"Upgrade: websocket\r\nConnection: close\r\n" + RFC_KEY + b"Sec-WebSocket-Version: 13\r\n",
        # websockets refuses the header value itself: a 400 too, not an error logged
        # with its traceback for anyone who sends one before authenticating.
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        + RFC_KEY
        + b"Sec-WebSocket-Version: 13\r\nX-Note: a\x01b\r\n",
    ],
    ids=["no key", "short key", "version 8", "no connection upgrade", "control character"],
)
def test_an_invalid_upgrade_is_refused(headers: bytes) -> None:
    assert upgrade(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n") is None


def test_an_http_1_0_upgrade_is_refused() -> None:
    # RFC 6455, 4.1: the handshake is an HTTP/1.1 request. An HTTP/1.0 one got a 101.
    valid = b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + RFC_KEY
    valid += b"Sec-WebSocket-Version: 13\r\n\r\n"
    assert upgrade(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + valid) is not None
    assert upgrade(b"GET /ws HTTP/1.0\r\nHost: x\r\n" + valid) is None


def tamper(wire: Wire, change: Callable[[dict[str, Any]], None]) -> list[object]:
    """Deliver the server's bytes to the client through a relay that edits them."""
    data = frames.rewrite_text(b"".join(wire.server.data_to_send()), change)
    return list(wire.client.receive_data(data, wire.now))


@pytest.mark.parametrize("value", [1e308, -1, 0, 10**12])
def test_the_challenge_interval_is_proved(value: float) -> None:
    wire = Wire()

    def change(message: dict[str, Any]) -> None:
        for field in [k for k in message if k.startswith("tick_interval")]:
            message[field] = value

    events = tamper(wire, change)  # the challenge, edited on its way
    events += wire.to_server()
    events += wire.to_client()  # the welcome
    assert not any(isinstance(e, Authenticated | SnapshotAccepted) for e in events)
    assert wire.client.error is not None


def test_the_session_id_is_proved_and_plain() -> None:
    wire = Wire()
    wire.to_client()
    wire.to_server()

    def change(message: dict[str, Any]) -> None:
        if message.get("type") == "welcome":
            message["session"] = "ok\n\x1b[31m"

    events = tamper(wire, change)
    assert not any(isinstance(e, Authenticated | SnapshotAccepted) for e in events)
    assert wire.client.session_id is None
