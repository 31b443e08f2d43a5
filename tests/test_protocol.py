"""The handshake and push state machines, wired peer to peer with no sockets."""

from __future__ import annotations

import json

import msgspec
import pytest

from arraycrypto import AuthenticationError, Keyring, ProtocolError
from arraycrypto.core import messages as m
from arraycrypto.core.handshake import (
    Accepted,
    ClientSession,
    ClientState,
    CloseCode,
    Rejected,
    ServerSession,
    ServerState,
    SnapshotPolicy,
    Violation,
)

from .harness.constants import OTHER, SECRET, T0
from .harness.pure import answer, client_session, handshake


def test_successful_handshake() -> None:
    server, client, snapshot, verdict = handshake()
    assert server.state is ServerState.SUBSCRIBED
    assert client.state is ClientState.SUBSCRIBED
    assert isinstance(verdict, Accepted)
    assert verdict.snapshot == snapshot
    assert client.session_id == "sess-1"
    assert client.tick_interval == 1.0


def test_wrong_client_secret_is_rejected_by_the_server() -> None:
    # A client whose keyring has the server's key id but a wrong secret cannot exist
    # (the key id is derived from the secret), so forge the proof directly.
    ring = Keyring(SECRET)
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    forged = m.encode(
        m.Handshake(
            hash="00" * 32,
            nonce="11" * 32,
            key_id=ring.primary.key_id.hex(),
            version=m.PROTOCOL_VERSION,
        )
    )
    with pytest.raises(Violation) as info:
        server.receive_text(forged, ring.new_snapshot(1, bytes(16), T0))
    assert info.value.code == CloseCode.AUTHENTICATION_FAILED
    assert info.value.reason == "authentication failed"
    assert server.state is ServerState.CLOSED


def test_client_without_the_servers_key_fails_before_sending_anything() -> None:
    with pytest.raises(AuthenticationError, match="does not trust to sign"):
        handshake(server_secret=SECRET, client_secret=OTHER)


def test_client_proof_under_another_key_id_is_rejected() -> None:
    ring, other = Keyring(SECRET), Keyring(OTHER)
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    challenge = m.decode(server.challenge_message())
    assert isinstance(challenge, m.Challenge)
    forged = msgspec.structs.replace(challenge, key_id=other.primary.key_id.hex())
    with pytest.raises(Violation) as info:
        server.receive_text(answer(forged, other.primary), ring.new_snapshot(1, bytes(16), T0))
    assert info.value.code == CloseCode.AUTHENTICATION_FAILED


def test_replayed_proof_fails_against_a_new_challenge() -> None:
    ring = Keyring(SECRET)
    snapshot = ring.new_snapshot(1, bytes(16), T0)
    first = ServerSession(ring.primary, b"a" * 32, "1", 1.0)
    client = client_session(ring)
    recorded = client.receive_text(first.challenge_message(), T0)
    assert isinstance(recorded, bytes)
    first.receive_text(recorded, snapshot)  # accepted once
    second = ServerSession(ring.primary, b"b" * 32, "2", 1.0)
    with pytest.raises(Violation) as info:
        second.receive_text(recorded, snapshot)
    assert info.value.code == CloseCode.AUTHENTICATION_FAILED


def test_server_with_wrong_proof_is_an_authentication_error() -> None:
    ring = Keyring(SECRET)
    client = client_session(ring)
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    client.receive_text(server.challenge_message(), T0)
    snapshot = m.SnapshotMessage.from_snapshot(ring.new_snapshot(1, bytes(16), T0))
    fake = m.encode(m.Welcome(proof="ab" * 32, session="s", snapshot=snapshot))
    with pytest.raises(AuthenticationError, match="server failed to prove"):
        client.receive_text(fake, T0)
    assert client.state is ClientState.CLOSED


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"{}",
        b'{"type": "nope"}',
        b'{"type": "handshake"}',
        b'{"type": "handshake", "hash": 1, "nonce": "", "key_id": ""}',
        b'{"type": "handshake", "hash": "'
        + b"A" * 64
        + b'", "nonce": "'
        + b"0" * 64
        + b'", "key_id": "0011223344556677"}',
        b'{"type": "challenge", "challenge": "' + b"0" * 64 + b'", "key_id": "0011223344556677"}',
        b"[" * 10_000,
    ],
)
def test_malformed_first_frames(payload: bytes) -> None:
    ring = Keyring(SECRET)
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    with pytest.raises(Violation) as info:
        server.receive_text(payload, ring.new_snapshot(1, bytes(16), T0))
    assert info.value.code == CloseCode.UNEXPECTED_MESSAGE


def test_any_frame_after_subscription_is_unexpected() -> None:
    server, _, snapshot, _ = handshake()
    with pytest.raises(Violation) as info:
        server.receive_text(b'{"type": "handshake"}', snapshot)
    assert info.value.code == CloseCode.UNEXPECTED_MESSAGE


def push(client: ClientSession, ring: Keyring, tick: int, ts: int, now: int) -> object:
    msg = m.SnapshotMessage.from_snapshot(ring.new_snapshot(tick, bytes(16), ts))
    return client.receive_text(m.encode(msg), now)


def test_pushed_snapshots_are_checked() -> None:
    _, client, _, _ = handshake()
    ring = Keyring(SECRET)
    assert isinstance(push(client, ring, 2, T0 + 1000, T0 + 1000), Accepted)
    # Ordered by the signed timestamp, not the tick: an older or equal one is refused.
    older = push(client, ring, 9, T0 + 1000, T0 + 2000)
    assert older == Rejected("not newer than the last accepted snapshot")
    late = push(client, ring, 3, T0 + 1001, T0 + 61_002)
    assert late == Rejected("timestamp outside max_drift of the local clock")
    early = push(client, ring, 3, T0 + 61_001, T0)
    assert isinstance(early, Rejected)
    assert isinstance(push(client, ring, 3, T0 + 60_000, T0), Accepted)
    forged = push(client, Keyring(OTHER), 4, T0 + 60_001, T0)
    assert forged == Rejected(
        f"signed by key id {Keyring(OTHER).primary.key_id.hex()}, which this client"
        " does not trust to sign"
    )
    assert client.policy.last_timestamp == T0 + 60_000


def test_short_signature_rejected_by_hash_size() -> None:
    ring = Keyring(SECRET)
    client = client_session(ring, min_signature_size=32)
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    reply = client.receive_text(server.challenge_message(), T0)
    assert isinstance(reply, bytes)
    welcome = server.receive_text(reply, ring.new_snapshot(1, bytes(16), T0, 16))
    assert client.receive_text(welcome, T0) == Rejected("signature shorter than hash_size")


def test_the_last_timestamp_survives_reconnection() -> None:
    ring = Keyring(SECRET)
    client = client_session(ring)
    client.policy.last_timestamp = T0  # accepted on an earlier connection
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    reply = client.receive_text(server.challenge_message(), T0)
    assert isinstance(reply, bytes)
    welcome = server.receive_text(reply, ring.new_snapshot(5, bytes(16), T0 - 1))
    assert isinstance(client.receive_text(welcome, T0), Rejected)


def test_error_frames_surface() -> None:
    client = client_session(Keyring(SECRET))
    auth = m.encode(m.ErrorMessage(code=4001, reason="authentication failed"))
    with pytest.raises(AuthenticationError):
        client.receive_text(auth, T0)
    client = client_session(Keyring(SECRET))
    with pytest.raises(ProtocolError, match="4003"):
        client.receive_text(m.encode(m.ErrorMessage(code=4003, reason="x")), T0)


@pytest.mark.parametrize("payload", [b"junk", b'{"type": "welcome"}', b'{"type": "snapshot"}'])
def test_client_rejects_out_of_place_frames(payload: bytes) -> None:
    client = client_session(Keyring(SECRET))
    with pytest.raises(ProtocolError):
        client.receive_text(payload, T0)


def test_client_rejects_snapshot_before_welcome() -> None:
    ring = Keyring(SECRET)
    client = client_session(ring)
    with pytest.raises(ProtocolError, match="unexpected SnapshotMessage"):
        push(client, ring, 1, T0, T0)


def test_client_refuses_other_protocol_versions() -> None:
    ring = Keyring(SECRET)
    key_id = ring.primary.key_id.hex()
    for version in (1, 3):
        msg = m.Challenge(
            challenge="00" * 32, key_id=key_id, version=version, tick_interval_ms=1000
        )
        with pytest.raises(ProtocolError, match=f"version {version}, not 2"):
            client_session(ring).receive_text(m.encode(msg), T0)
    # What a version 1 server sends: its tick_interval in seconds, no proof over it.
    v1 = b'{"type":"challenge","challenge":"' + b"0" * 64 + b'","key_id":"' + key_id.encode()
    v1 += b'","version":1,"tick_interval":1.0}'
    with pytest.raises(ProtocolError, match="version 1, not 2"):
        client_session(ring).receive_text(v1, T0)


def test_server_refuses_a_version_1_handshake_with_4004() -> None:
    ring = Keyring(SECRET)
    server = ServerSession(ring.primary, b"c" * 32, "s", 1.0)
    challenge = m.decode(server.challenge_message())
    assert isinstance(challenge, m.Challenge)
    v1 = json.loads(answer(challenge, ring.primary))
    del v1["version"]  # a version 1 client sends none
    with pytest.raises(Violation) as info:
        server.receive_text(json.dumps(v1).encode(), ring.new_snapshot(1, bytes(16), T0))
    assert info.value.code == CloseCode.UNSUPPORTED_VERSION


def test_unknown_fields_are_ignored_for_evolution() -> None:
    ring = Keyring(SECRET)
    data = json.loads(
        m.encode(m.SnapshotMessage.from_snapshot(ring.new_snapshot(1, bytes(16), T0)))
    )
    data["future_field"] = [1, 2, 3]
    msg = m.decode(json.dumps(data).encode())
    assert isinstance(msg, m.SnapshotMessage)
    assert msg.to_snapshot() == ring.new_snapshot(1, bytes(16), T0)


def test_wire_integers_are_json_safe() -> None:
    msg = b'{"type":"snapshot","tick":9007199254740992,"seed":"' + b"0" * 32
    msg += b'","timestamp":1,"key_id":"0011223344556677","signature":"' + b"0" * 32 + b'"}'
    with pytest.raises(msgspec.ValidationError):
        m.decode(msg)


def test_session_inputs_are_checked() -> None:
    ring = Keyring(SECRET)
    with pytest.raises(ValueError, match="32 bytes"):
        ServerSession(ring.primary, b"short", "s", 1.0)
    with pytest.raises(ValueError, match="32 bytes"):
        ClientSession(SnapshotPolicy(ring), b"short")


def test_no_signed_value_locks_a_client_out_beyond_max_drift() -> None:
    # Finding 2: a snapshot with the largest tick (any keyring key can sign one) used to
    # make every later tick "not above" it until the process restarted.
    ring = Keyring(SECRET)
    policy = SnapshotPolicy(ring, max_drift=60)
    huge = ring.new_snapshot(2**53 - 1, bytes(16), T0)
    assert isinstance(policy.check(huge, T0), Accepted)
    normal = ring.new_snapshot(T0 // 1000, bytes(16), T0 + 1000)
    assert isinstance(policy.check(normal, T0 + 1000), Accepted)
    # The worst a signed snapshot can do is be dated max_drift ahead: later ones are
    # refused only until the clock passes it.
    ahead = ring.new_snapshot(5, bytes(16), T0 + 1000 + 60_000)
    assert isinstance(policy.check(ahead, T0 + 1000), Accepted)
    behind = ring.new_snapshot(6, bytes(16), T0 + 30_000)
    assert isinstance(policy.check(behind, T0 + 30_000), Rejected)
    later = ring.new_snapshot(7, bytes(16), T0 + 61_001)
    assert isinstance(policy.check(later, T0 + 61_001), Accepted)


def test_old_secrets_only_decrypt() -> None:
    # Finding 1: a retired secret signs nothing the client accepts; NEW, trusted ahead
    # of the primary, does, and after it the client never goes back to the primary.
    old, new = Keyring(SECRET), Keyring(OTHER)
    retired = SnapshotPolicy(Keyring(OTHER, old=[SECRET]))
    verdict = retired.check(old.new_snapshot(1, bytes(16), T0), T0)
    assert isinstance(verdict, Rejected)
    assert "does not trust" in verdict.reason
    rotating = SnapshotPolicy(Keyring(SECRET, next=[OTHER]))
    assert isinstance(rotating.check(old.new_snapshot(1, bytes(16), T0), T0), Accepted)
    assert isinstance(rotating.check(new.new_snapshot(2, bytes(16), T0 + 1), T0 + 1), Accepted)
    back = rotating.check(old.new_snapshot(3, bytes(16), T0 + 2), T0 + 2)
    assert isinstance(back, Rejected)
    assert "older" in back.reason
