"""The envelope v2 vectors (single-shot with an expiry, streams, the time rules).

Part of ``python -m scripts.gen_vectors``, which writes them to
tests/vectors/envelopes_v2.json; every input is a constant here or in vector_inputs.py.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from arraycrypto import Keyring
from arraycrypto.core.keys import payload_key
from scripts.vector_inputs import SECRET_A, SECRET_B, T0, flip, invalid_rows, set_byte, snap


def _stream(
    secret: bytes,
    pt: bytes,
    *,
    ad: bytes = b"",
    expires_at: int | None = None,
    segment_size: int = 1024,
    salt: bytes = bytes(range(0xA0, 0xB0)),
    tick: int = 7,
    size: int = 16,
) -> bytes:
    cipher = Keyring(secret).cipher(snap(secret, tick, T0, size))
    enc = cipher._stream_encryptor(ad, expires_at, segment_size, salt)
    return enc.update(pt) + enc.finish()


def _split(token: bytes, segment_size: int = 1024, sig: int = 16) -> tuple[bytes, list[bytes]]:
    """Cut a stream into its header and its segment chunks (for building invalid cases)."""
    head = 68 + sig
    unit = segment_size + 16
    body = token[head:]
    return token[:head], [body[i : i + unit] for i in range(0, len(body), unit)]


def envelopes_v2() -> dict[str, Any]:
    """The envelope v2 vectors: valid, invalid and time cases."""

    def case(description: str, token: bytes, secret: bytes, pt: bytes, **extra: Any) -> Any:
        return {
            "description": description,
            "secret": secret.hex(),
            "associated_data": extra.get("ad", b"").hex(),
            "envelope": token.hex(),
            "plaintext": pt.hex(),
            **{k: (v.hex() if isinstance(v, bytes) else v) for k, v in extra.items() if k != "ad"},
        }

    valid = []
    singles = [
        ("single, expiry", SECRET_A, 7, 16, b"hello, world", b"", bytes(range(12)), T0 + 3_600_000),
        (
            "single, expiry, 20-byte signature, associated data",
            SECRET_B,
            9,
            20,
            bytes(range(256)) * 4,
            b"request-42",
            b"\xaa" * 12,
            T0 + 60_000,
        ),
    ]
    for d, secret, tick, size, pt, ad, nonce, exp in singles:
        s = snap(secret, tick, T0, size)
        token = Keyring(secret).cipher(s)._encrypt(pt, ad, nonce, exp)
        valid.append(
            case(
                d,
                token,
                secret,
                pt,
                ad=ad,
                nonce=nonce,
                expires_at=exp,
                tick=tick,
                hash_size=size,
                seed=s.seed,
                timestamp=T0,
            )
        )
    salt = bytes(range(0xA0, 0xB0))
    streams = [
        ("stream, empty plaintext (one empty last segment)", b"", b"", None, 1024),
        ("stream, one byte", b"\x42", b"", None, 1024),
        ("stream, exactly one full segment", bytes(range(256)) * 4, b"", None, 1024),
        (
            "stream, exactly two full segments (no empty segment after)",
            bytes(range(256)) * 8,
            b"",
            None,
            1024,
        ),
        (
            "stream, three segments, associated data, expiry",
            bytes(i % 251 for i in range(2500)),
            b"backup-2026",
            T0 + 86_400_000,
            1024,
        ),
        (
            "stream, 64 KiB segments (the default), one short segment",
            b"a log line\n" * 10,
            b"",
            None,
            65536,
        ),
    ]
    for d, pt, ad, expiry, seg in streams:
        token = _stream(SECRET_A, pt, ad=ad, expires_at=expiry, segment_size=seg, salt=salt)
        valid.append(
            case(
                d,
                token,
                SECRET_A,
                pt,
                ad=ad,
                salt=salt,
                expires_at=expiry or 0,
                segment_size=seg,
                tick=7,
                hash_size=16,
                seed=bytes(range(16, 32)),
                timestamp=T0,
            )
        )

    pt3 = bytes(i % 251 for i in range(2500))
    base = _stream(SECRET_A, pt3)
    head, (c0, c1, c2) = _split(base)
    exact = _stream(SECRET_A, bytes(2048))
    ehead, (e0, _e1) = _split(exact)
    other = _stream(SECRET_A, pt3, salt=bytes(range(0xC0, 0xD0)))
    ohead, _ = _split(other)
    # A non-canonical stream a writer must never make: two full segments, then an empty
    # last segment (built with the key, so only the "last holds 1..P bytes" rule rejects it).
    key = payload_key(Keyring(SECRET_A).primary.stream_key(snap(SECRET_A)), salt)
    aead = AESGCM(key)
    empty_tail = ehead + b"".join(
        aead.encrypt(bytes(7) + i.to_bytes(4, "big") + bytes([last]), chunk, ehead)
        for i, (chunk, last) in enumerate([(bytes(1024), 0), (bytes(1024), 0), (b"", 1)])
    )
    single = (
        Keyring(SECRET_A)
        .cipher(snap(SECRET_A))
        ._encrypt(b"secret message", b"", b"\x01" * 12, T0 + 60_000)
    )
    mode_at = 42 + 16
    invalid: list[tuple[str, bytes, dict[str, Any]]] = [
        ("stream truncated at a segment boundary (last segment dropped)", head + c0 + c1, {}),
        ("stream truncated inside a segment", base[:-100], {}),
        ("stream truncated to its header", head, {}),
        ("stream truncated inside its header", head[:70], {}),
        ("stream, exact multiple of the segment size, last full segment dropped", ehead + e0, {}),
        ("stream segments reordered", head + c1 + c0 + c2, {}),
        ("stream segment duplicated", head + c0 + c0 + c1 + c2, {}),
        ("stream extended by a copy of its last segment", base + c2, {}),
        ("stream extended by one byte", base + b"\x00", {}),
        ("stream middle segment dropped", head + c0 + c2, {}),
        ("stream header of another stream (other salt)", ohead + c0 + c1 + c2, {}),
        ("stream with an empty last segment after full ones", empty_tail, {}),
        ("stream tampered expires_at", flip(base, mode_at + 8), {}),
        ("stream tampered segment size (11: in range)", set_byte(base, mode_at + 9, 11), {}),
        ("stream segment size below range (9)", set_byte(base, mode_at + 9, 9), {}),
        ("stream segment size above range (25)", set_byte(base, mode_at + 9, 25), {}),
        ("stream tampered salt", flip(base, mode_at + 10), {}),
        ("stream mode changed to single", set_byte(base, mode_at, 1), {}),
        ("unknown v2 mode (3)", set_byte(base, mode_at, 3), {}),
        ("stream tampered ciphertext", flip(base, len(head) + 5), {}),
        ("stream tampered tick (signature no longer matches)", flip(base, 16), {}),
        ("stream wrong associated data", base, {"associated_data": "00"}),
        ("stream wrong secret", base, {"keyring": [SECRET_B.hex()]}),
        ("single tampered expires_at", flip(single, mode_at + 8), {}),
        ("single truncated inside the tag", single[:-1], {}),
        ("single truncated to its header", single[: mode_at + 9], {}),
        ("v2 header cut before the mode byte", single[:mode_at], {}),
    ]
    invalid_out = invalid_rows(invalid)
    expiring = _stream(SECRET_A, b"short-lived", expires_at=T0 + 60_000)
    timed = [
        (
            "single: expired (more than max_drift past expires_at)",
            single,
            T0 + 90_001,
            30,
            "ExpiredError",
        ),
        ("single: exactly max_drift past expires_at, still valid", single, T0 + 90_000, 30, None),
        ("single: before expires_at", single, T0 + 1, 30, None),
        ("single: the reader's clock 30 s behind the sender's", single, T0 - 30_000, 30, None),
        ("single: carries an expiry, no now_ms given", single, None, 30, "NowRequiredError"),
        ("stream: expired", expiring, T0 + 60_000 + 30_001, 30, "ExpiredError"),
        ("stream: within the max_drift grace", expiring, T0 + 60_000 + 30_000, 30, None),
        (
            "stream: dated in the future beyond max_drift",
            expiring,
            T0 - 30_001,
            30,
            "SnapshotError",
        ),
        ("stream: carries an expiry, no now_ms given", expiring, None, 30, "NowRequiredError"),
    ]
    plaintexts = {single: b"secret message", expiring: b"short-lived"}
    time_out = [
        {
            "description": d,
            "envelope": t.hex(),
            "keyring": [SECRET_A.hex()],
            "now_ms": now,
            "max_drift": drift,
            "error": err,
            "plaintext": plaintexts[t].hex(),
        }
        for d, t, now, drift, err in timed
    ]
    return {"valid": valid, "invalid": invalid_out, "time": time_out}
