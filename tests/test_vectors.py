"""tests/vectors/*.json: reproduced by arraycrypto, and by a from-the-spec reference.

The ``Reference`` functions below are written from PROTOCOL.md alone, with raw
primitives (hmac, HKDF, AES-GCM) and no arraycrypto code: they are what a developer in
another language would write. Both must agree with every vector.
"""

from __future__ import annotations

import hmac
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from arraycrypto import DecryptionError, ExpiredError, Keyring, Snapshot, SnapshotError
from arraycrypto.core import messages as m
from arraycrypto.core.envelope2 import NowRequiredError

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"


def load(name: str) -> Any:
    doc = json.loads((VECTORS / name).read_text())
    assert "scripts/gen_vectors.py" in doc["origin"]
    return doc["vectors"]


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [str(i) for i in range(len(vectors))]


# -- the reference, from PROTOCOL.md ---------------------------------------------------


def ref_hkdf(ikm: bytes, salt: bytes | None, info: bytes, n: int = 32) -> bytes:
    return HKDF(algorithm=SHA256(), length=n, salt=salt, info=info).derive(ikm)


def ref_key_id(secret: bytes) -> bytes:
    return ref_hkdf(secret, None, b"arraycrypto/v1 key-id", 8)


def ref_signed_bytes(key_id: bytes, tick: int, ts: int, seed: bytes) -> bytes:
    return b"\x01" + key_id + struct.pack(">QQ", tick, ts) + seed


def ref_signature(secret: bytes, body: bytes, size: int) -> bytes:
    mac_key = ref_hkdf(secret, None, b"arraycrypto/v1 snapshot-mac")
    return hmac.digest(mac_key, body, "sha256")[:size]


def ref_data_key(secret: bytes, key_id: bytes, tick: int, seed: bytes) -> bytes:
    info = b"arraycrypto/v1 data-key" + key_id + tick.to_bytes(8, "big")
    return ref_hkdf(secret, seed, info)


def ref_decrypt(secrets: list[bytes], envelope: bytes, ad: bytes) -> bytes | None:
    """Return the plaintext, or None for any failure (the spec's one opaque error)."""
    if len(envelope) < 42 or envelope[0] != 1:
        return None
    sig_len = envelope[41]
    if not 16 <= sig_len <= 32 or len(envelope) < 42 + sig_len + 12 + 16:
        return None
    key_id = envelope[1:9]
    tick, ts = struct.unpack(">QQ", envelope[9:25])
    seed = envelope[25:41]
    sig = envelope[42 : 42 + sig_len]
    header = envelope[: 42 + sig_len]
    nonce = envelope[42 + sig_len : 54 + sig_len]
    for secret in secrets:
        if ref_key_id(secret) != key_id:
            continue
        expect = ref_signature(secret, ref_signed_bytes(key_id, tick, ts, seed), sig_len)
        if not hmac.compare_digest(expect, sig):
            return None
        aead = AESGCM(ref_data_key(secret, key_id, tick, seed))
        try:
            return aead.decrypt(nonce, envelope[54 + sig_len :], header + ad)
        except Exception:
            return None
    return None


def ref_v2(
    secrets: list[bytes],
    envelope: bytes,
    ad: bytes,
    now_ms: int | None = None,
    max_drift: float = 60,
) -> tuple[str, bytes | None]:
    """Envelope v2, PROTOCOL.md section 3a: ("ok", plaintext) or (error name, None)."""
    fail = ("DecryptionError", None)
    if len(envelope) < 43 or envelope[0] != 2 or not 16 <= envelope[41] <= 32:
        return fail
    sig_len = envelope[41]
    mode_at = 42 + sig_len
    if len(envelope) < mode_at + 9 or envelope[mode_at] not in (1, 2):
        return fail
    mode = envelope[mode_at]
    expires_at = int.from_bytes(envelope[mode_at + 1 : mode_at + 9], "big")
    header_len = mode_at + 9 if mode == 1 else mode_at + 26
    if len(envelope) < header_len:
        return fail
    header = envelope[:header_len]
    key_id, seed = envelope[1:9], envelope[25:41]
    tick, ts = struct.unpack(">QQ", envelope[9:25])
    secret = next((s for s in secrets if ref_key_id(s) == key_id), None)
    if secret is None:
        return fail
    sig = ref_signature(secret, ref_signed_bytes(key_id, tick, ts, seed), sig_len)
    if not hmac.compare_digest(sig, envelope[42:mode_at]):
        return fail
    tick_info = key_id + tick.to_bytes(8, "big")
    aad = header + ad
    if mode == 1:
        key = ref_hkdf(secret, seed, b"arraycrypto/v2 single-key" + tick_info)
        nonce, body = envelope[header_len : header_len + 12], envelope[header_len + 12 :]
        try:
            plaintext = AESGCM(key).decrypt(nonce, body, aad)
        except Exception:
            return fail
    else:
        shift, salt = envelope[mode_at + 9], envelope[mode_at + 10 : mode_at + 26]
        if not 10 <= shift <= 24:
            return fail
        stream_key = ref_hkdf(secret, seed, b"arraycrypto/v2 stream-key" + tick_info)
        aead = AESGCM(ref_hkdf(stream_key, salt, b"arraycrypto/v2 payload-key"))
        unit = (1 << shift) + 16
        body = envelope[header_len:]
        chunks = [body[i : i + unit] for i in range(0, len(body), unit)] or [b""]
        final = chunks[-1]
        if len(final) < 16 or (len(final) == 16 and len(chunks) > 1):
            return fail
        parts = []
        for i, chunk in enumerate(chunks):
            last = 1 if i == len(chunks) - 1 else 0
            nonce = i.to_bytes(11, "big") + bytes([last])
            try:
                parts.append(AESGCM.decrypt(aead, nonce, chunk, aad))
            except Exception:
                return fail
        plaintext = b"".join(parts)
    if now_ms is None:
        return ("NowRequiredError", None) if expires_at else ("ok", plaintext)
    if ts - now_ms > max_drift * 1000:
        return "SnapshotError", None
    if expires_at and now_ms - expires_at > max_drift * 1000:
        return "ExpiredError", None
    return "ok", plaintext


# -- the vectors -----------------------------------------------------------------------

KEYS = load("key_schedule.json")
SNAPS = load("snapshots.json")
ENVS = load("envelopes.json")
HANDS = load("handshake.json")
TICKS = load("tick_snapshots.json")
ENV2 = load("envelopes_v2.json")


@pytest.mark.parametrize("v", KEYS, ids=ids(KEYS))
def test_key_schedule(v: dict[str, Any]) -> None:
    secret = bytes.fromhex(v["secret"])
    key = Keyring(secret).primary
    assert key.key_id.hex() == v["key_id"] == ref_key_id(secret).hex()
    for field, label in [
        ("snapshot_mac_key", b"snapshot-mac"),
        ("client_proof_key", b"client-proof"),
        ("server_proof_key", b"server-proof"),
    ]:
        assert ref_hkdf(secret, None, b"arraycrypto/v1 " + label).hex() == v[field]


@pytest.mark.parametrize("v", SNAPS, ids=ids(SNAPS))
def test_snapshots(v: dict[str, Any]) -> None:
    secret, seed = bytes.fromhex(v["secret"]), bytes.fromhex(v["seed"])
    ring = Keyring(secret)
    s = ring.new_snapshot(v["tick"], seed, v["timestamp"], v["hash_size"])
    assert s.signed_bytes().hex() == v["signed_bytes"]
    assert s.signature.hex() == v["signature"]
    assert s.header().hex() == v["envelope_header"]
    assert ring.primary.data_key(s).hex() == v["data_key"]
    assert m.encode(m.SnapshotMessage.from_snapshot(s)).decode() == v["json"]
    # the reference
    kid = ref_key_id(secret)
    body = ref_signed_bytes(kid, v["tick"], v["timestamp"], seed)
    assert body.hex() == v["signed_bytes"]
    assert ref_signature(secret, body, v["hash_size"]).hex() == v["signature"]
    assert ref_data_key(secret, kid, v["tick"], seed).hex() == v["data_key"]
    # and the wire JSON decodes back to the same snapshot, signature valid
    wire = m.decode(v["json"])
    assert isinstance(wire, m.SnapshotMessage)
    assert ring.verify(wire.to_snapshot()) is not None


@pytest.mark.parametrize("v", TICKS, ids=ids(TICKS))
def test_tick_snapshots(v: dict[str, Any]) -> None:
    # From the spec alone: the seed comes from the secret, the tick and the interval.
    secret = bytes.fromhex(v["secret"])
    seed_key = ref_hkdf(secret, None, b"arraycrypto/v2 snapshot-seed")
    tick, interval_ms = v["tick"], v["interval_ms"]
    message = tick.to_bytes(8, "big") + interval_ms.to_bytes(4, "big")
    seed = hmac.digest(seed_key, message, "sha256")[:16]
    assert seed.hex() == v["seed"]
    assert tick * interval_ms == v["timestamp"]
    body = ref_signed_bytes(ref_key_id(secret), tick, v["timestamp"], seed)
    assert ref_signature(secret, body, v["hash_size"]).hex() == v["signature"]
    s = Keyring(secret).tick_snapshot(tick, interval_ms, v["hash_size"])
    assert json.loads(m.encode(m.SnapshotMessage.from_snapshot(s))) == json.loads(v["json"])


@pytest.mark.parametrize("v", ENVS["valid"], ids=ids(ENVS["valid"]))
def test_valid_envelopes(v: dict[str, Any]) -> None:
    secret = bytes.fromhex(v["secret"])
    pt, ad = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["associated_data"])
    ring = Keyring(secret)
    s = ring.new_snapshot(v["tick"], bytes.fromhex(v["seed"]), v["timestamp"], v["hash_size"])
    token = ring.cipher(s)._encrypt(pt, ad, bytes.fromhex(v["nonce"]))
    assert token.hex() == v["envelope"]
    envelope = bytes.fromhex(v["envelope"])
    assert Keyring(secret).decrypt(envelope, ad) == pt
    assert ref_decrypt([secret], envelope, ad) == pt


@pytest.mark.parametrize("v", ENVS["invalid"], ids=[v["description"] for v in ENVS["invalid"]])
def test_invalid_envelopes(v: dict[str, Any]) -> None:
    assert v["error"] == "DecryptionError"
    secrets = [bytes.fromhex(s) for s in v["keyring"]]
    envelope, ad = bytes.fromhex(v["envelope"]), bytes.fromhex(v["associated_data"])
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        Keyring(secrets[0], old=secrets[1:]).decrypt(envelope, ad)
    assert ref_decrypt(secrets, envelope, ad) is None


@pytest.mark.parametrize("v", ENVS["time"], ids=[v["description"] for v in ENVS["time"]])
def test_time_vectors(v: dict[str, Any]) -> None:
    ring = Keyring(bytes.fromhex(v["keyring"][0]))
    envelope = bytes.fromhex(v["envelope"])
    kwargs: dict[str, Any] = {"now_ms": v["now_ms"], "ttl": v["ttl"], "max_drift": v["max_drift"]}
    if v["error"] is None:
        assert ring.decrypt(envelope, **kwargs).hex() == v["plaintext"]
    else:
        assert v["error"] == "SnapshotError"
        with pytest.raises(SnapshotError):
            ring.decrypt(envelope, **kwargs)


def test_rotation_vector() -> None:
    v = ENVS["rotation"]
    secrets = [bytes.fromhex(s) for s in v["keyring"]]
    ring = Keyring(secrets[0], old=secrets[1:])
    for token, pt in zip(v["envelopes"], v["plaintexts"], strict=True):
        assert ring.decrypt(bytes.fromhex(token)).hex() == pt
        assert ref_decrypt(secrets, bytes.fromhex(token), b"") == bytes.fromhex(pt)


@pytest.mark.parametrize("v", ENV2["valid"], ids=[v["description"] for v in ENV2["valid"]])
def test_valid_envelopes_v2(v: dict[str, Any]) -> None:
    secret = bytes.fromhex(v["secret"])
    pt, ad = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["associated_data"])
    envelope = bytes.fromhex(v["envelope"])
    ring = Keyring(secret)
    cipher = ring.cipher(
        ring.new_snapshot(v["tick"], bytes.fromhex(v["seed"]), v["timestamp"], v["hash_size"])
    )
    if "salt" in v:  # a stream: the same inputs make the same bytes
        expires = v["expires_at"] or None
        enc = cipher._stream_encryptor(ad, expires, v["segment_size"], bytes.fromhex(v["salt"]))
        assert (enc.update(pt) + enc.finish()).hex() == v["envelope"]
        decryptor = ring.stream_decryptor(ad, now_ms=v["timestamp"])
        assert decryptor.update(envelope) + decryptor.finish() == pt
    else:
        token = cipher._encrypt(pt, ad, bytes.fromhex(v["nonce"]), v["expires_at"])
        assert token.hex() == v["envelope"]
    assert Keyring(secret).decrypt(envelope, ad, now_ms=v["timestamp"]) == pt
    assert ref_v2([secret], envelope, ad, now_ms=v["timestamp"]) == ("ok", pt)


@pytest.mark.parametrize("v", ENV2["invalid"], ids=[v["description"] for v in ENV2["invalid"]])
def test_invalid_envelopes_v2(v: dict[str, Any]) -> None:
    assert v["error"] == "DecryptionError"
    secrets = [bytes.fromhex(s) for s in v["keyring"]]
    envelope, ad = bytes.fromhex(v["envelope"]), bytes.fromhex(v["associated_data"])
    ring = Keyring(secrets[0], old=secrets[1:])
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        ring.decrypt(envelope, ad, now_ms=T0_V2)
    # fed one byte at a time, the streaming decryptor fails too, and what it released
    # before failing is a prefix of a genuine plaintext (the segments that verified)
    released: list[bytes] = []
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        feed_bytewise(ring.stream_decryptor(ad, now_ms=T0_V2), envelope, released)
    out = b"".join(released)
    genuine = (bytes(i % 251 for i in range(2500)), bytes(2048))
    assert any(p.startswith(out) for p in genuine)
    assert ref_v2(secrets, envelope, ad, now_ms=T0_V2) == ("DecryptionError", None)


def feed_bytewise(decryptor: Any, envelope: bytes, released: list[bytes]) -> None:
    for i in range(len(envelope)):
        released.append(decryptor.update(envelope[i : i + 1]))
    released.append(decryptor.finish())


@pytest.mark.parametrize("v", ENV2["time"], ids=[v["description"] for v in ENV2["time"]])
def test_time_vectors_v2(v: dict[str, Any]) -> None:
    secret = bytes.fromhex(v["keyring"][0])
    envelope = bytes.fromhex(v["envelope"])
    now, drift = v["now_ms"], v["max_drift"]
    errors = {
        "ExpiredError": ExpiredError,
        "SnapshotError": SnapshotError,
        "NowRequiredError": NowRequiredError,
    }
    if v["error"] is None:
        assert (
            Keyring(secret).decrypt(envelope, now_ms=now, max_drift=drift).hex() == v["plaintext"]
        )
        assert ref_v2([secret], envelope, b"", now, drift) == ("ok", bytes.fromhex(v["plaintext"]))
    else:
        with pytest.raises(errors[v["error"]]) as caught:
            Keyring(secret).decrypt(envelope, now_ms=now, max_drift=drift)
        assert ref_v2([secret], envelope, b"", now, drift) == (v["error"], None)
        if v["error"] == "ExpiredError":
            assert isinstance(caught.value, SnapshotError)
            assert "expired at 2026-01-01T00:01:00Z" in str(caught.value)


T0_V2 = 1_767_225_600_000  # the vectors' snapshot time (scripts/gen_vectors.py T0)


@pytest.mark.parametrize("v", HANDS, ids=ids(HANDS))
def test_handshake_vectors(v: dict[str, Any]) -> None:
    secret = bytes.fromhex(v["secret"])
    challenge, nonce = bytes.fromhex(v["challenge"]), bytes.fromhex(v["nonce"])
    session = v["session"]
    key = Keyring(secret).primary
    # From the spec alone: the transcript is every field of the challenge, then the nonce.
    key_id = ref_hkdf(secret, None, b"arraycrypto/v1 key-id", 8)
    transcript = (
        b"arraycrypto/v2 handshake"
        + bytes([2])
        + key_id
        + v["tick_interval_ms"].to_bytes(4, "big")
        + challenge
        + nonce
    )
    assert transcript.hex() == v["transcript"]
    cp_key = ref_hkdf(secret, None, b"arraycrypto/v1 client-proof")
    sp_key = ref_hkdf(secret, None, b"arraycrypto/v1 server-proof")
    assert hmac.digest(cp_key, transcript, "sha256").hex() == v["client_proof"]
    signed_session = transcript + bytes([len(session)]) + session.encode("ascii")
    assert hmac.digest(sp_key, signed_session, "sha256").hex() == v["server_proof"]
    assert key.client_proof(transcript).hex() == v["client_proof"]
    assert key.server_proof(transcript, session).hex() == v["server_proof"]
    # Frames are compared after parsing: field order and spacing are free.
    challenge_frame = json.loads(v["challenge_frame"])
    assert challenge_frame == {
        "type": "challenge",
        "challenge": v["challenge"],
        "key_id": key_id.hex(),
        "version": 2,
        "tick_interval_ms": v["tick_interval_ms"],
    }
    handshake_frame = json.loads(v["handshake_frame"])
    assert handshake_frame == {
        "type": "handshake",
        "hash": v["client_proof"],
        "nonce": v["nonce"],
        "key_id": key_id.hex(),
        "version": 2,
    }
    assert isinstance(m.decode(v["challenge_frame"]), m.Challenge)
    assert isinstance(m.decode(v["handshake_frame"]), m.Handshake)


def test_vectors_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.gen_vectors", "--check"],  # as the README says
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_snapshot_struct_round_trip() -> None:
    s = Snapshot(1, bytes(16), 2, bytes(8), bytes(16))
    assert m.SnapshotMessage.from_snapshot(s).to_snapshot() == s
