"""Wiring of the pure core's two peers with no sockets (h11's tests/helpers.py style)."""

from __future__ import annotations

import os

from arraycrypto import Key, Keyring, Snapshot
from arraycrypto.core import messages as m
from arraycrypto.core.handshake import (
    Accepted,
    ClientSession,
    Rejected,
    ServerSession,
    SnapshotPolicy,
)
from arraycrypto.core.keys import handshake_transcript

from .constants import SECRET, T0

__all__ = ["Wire", "answer", "client_session", "handshake"]


def client_session(keyring: Keyring, nonce: bytes = b"n" * 32, **policy: float) -> ClientSession:
    """A client session whose policy trusts ``keyring`` (``max_drift=...`` and so on)."""
    return ClientSession(SnapshotPolicy(keyring, **policy), nonce)  # type: ignore[arg-type]


def answer(challenge: m.Challenge, key: Key, nonce: bytes | None = None) -> bytes:
    """The handshake message answering ``challenge`` with ``key`` (right or wrong)."""
    nonce = os.urandom(32) if nonce is None else nonce
    transcript = handshake_transcript(
        bytes.fromhex(challenge.key_id),
        challenge.tick_interval_ms,
        bytes.fromhex(challenge.challenge),
        nonce,
    )
    return m.encode(
        m.Handshake(
            hash=key.client_proof(transcript).hex(),
            nonce=nonce.hex(),
            key_id=challenge.key_id,
            version=m.PROTOCOL_VERSION,
        )
    )


def handshake(
    server_secret: bytes = SECRET,
    client_secret: bytes = SECRET,
    *,
    challenge: bytes = b"c" * 32,
    nonce: bytes = b"n" * 32,
    now_ms: int = T0,
) -> tuple[ServerSession, ClientSession, Snapshot, bytes | Accepted | Rejected]:
    """Run challenge → handshake → welcome between a server and a client session.

    Returns both sessions, the snapshot the server welcomed with, and the client's
    verdict on the welcome. Raises whatever either side raises.
    """
    server_ring = Keyring(server_secret)
    snapshot = server_ring.new_snapshot(1, b"s" * 16, now_ms)
    server = ServerSession(server_ring.primary, challenge, "sess-1", 1.0)
    client = client_session(Keyring(client_secret), nonce, max_drift=60)
    reply = client.receive_text(server.challenge_message(), now_ms)
    assert isinstance(reply, bytes)
    welcome = server.receive_text(reply, snapshot)
    verdict = client.receive_text(welcome, now_ms)
    return server, client, snapshot, verdict


class Wire:
    """A client connection and a server connection joined with no sockets.

    Bytes move only when a test calls :meth:`to_server` / :meth:`to_client`, so every
    step of a conversation can be inspected; ``now`` is whatever the test says.
    """

    def __init__(
        self,
        *,
        server_secret: bytes = SECRET,
        client_secret: bytes = SECRET,
        now: float = T0 / 1000,
        tick_interval: float = 1.0,
        max_drift: float = 60.0,
        handshake_timeout: float = 5.0,
        max_frame_size: int = 4096,
    ) -> None:
        from websockets.uri import parse_uri

        from arraycrypto.core import http
        from arraycrypto.core.client_connection import ClientConnection
        from arraycrypto.core.server_connection import ServerConnection

        self.now = now
        self.server_ring = Keyring(server_secret)
        self.snapshot = self.server_ring.new_snapshot(1, b"s" * 16, int(now * 1000))
        session = client_session(Keyring(client_secret), max_drift=max_drift)
        self.client = ClientConnection(
            parse_uri("ws://127.0.0.1:1/ws"), session, now=now, connect_timeout=10.0
        )
        request = b"".join(self.client.data_to_send())
        end = http.find_head_end(request)
        head = http.parse_request_head(request[:end])
        server = ServerConnection.upgrade(
            head,
            key=self.server_ring.primary,
            challenge=b"c" * 32,
            session_id="sess-1",
            tick_interval=tick_interval,
            max_frame_size=max_frame_size,
            current=lambda: self.snapshot,
            now=now,
            deadline=now + handshake_timeout,
        )
        assert server is not None
        self.server = server

    def to_server(self) -> list[object]:
        """Deliver what the client wrote; return the server's events."""
        data = b"".join(self.client.data_to_send())
        return list(self.server.receive_data(data, self.now)) if data else []

    def to_client(self) -> list[object]:
        """Deliver what the server wrote; return the client's events."""
        data = b"".join(self.server.data_to_send())
        return list(self.client.receive_data(data, self.now)) if data else []

    def handshake(self) -> tuple[list[object], list[object]]:
        """Upgrade, challenge, proof, welcome; return (server events, client events)."""
        client_events = self.to_client()  # 101 + challenge: the client answers
        server_events = self.to_server()  # proof: the server welcomes
        client_events += self.to_client()  # welcome
        return server_events, client_events
