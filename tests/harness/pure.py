"""Wiring of the pure core's two peers with no sockets (h11's tests/helpers.py style)."""

from __future__ import annotations

from arraycrypto import Keyring, Snapshot
from arraycrypto.core.handshake import (
    Accepted,
    ClientSession,
    Rejected,
    ServerSession,
    SnapshotPolicy,
)

from .constants import SECRET, T0

__all__ = ["client_session", "handshake"]


def client_session(keyring: Keyring, nonce: bytes = b"n" * 32, **policy: float) -> ClientSession:
    """A client session whose policy trusts ``keyring`` (``max_drift=...`` and so on)."""
    return ClientSession(SnapshotPolicy(keyring, **policy), nonce)  # type: ignore[arg-type]


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
