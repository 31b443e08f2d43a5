"""Helpers shared by tests: a two-peer wiring of the pure sessions, with no sockets."""

from __future__ import annotations

from arraycrypto import Keyring, Snapshot
from arraycrypto.core.handshake import Accepted, ClientSession, Rejected, ServerSession

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
T0 = 1_700_000_000_000


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
    client = ClientSession(Keyring(client_secret), nonce, max_drift=60)
    reply = client.receive_text(server.challenge_message(), now_ms)
    assert isinstance(reply, bytes)
    welcome = server.receive_text(reply, snapshot)
    verdict = client.receive_text(welcome, now_ms)
    return server, client, snapshot, verdict
