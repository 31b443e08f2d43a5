"""Envelope v2 in the pure core: streams, single-shot with expiry, time rules, peek."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import pickle
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arraycrypto import DecryptionError, ExpiredError, Keyring, SnapshotCipher, SnapshotError
from arraycrypto.core.envelope2 import NowRequiredError
from arraycrypto.core.isotime import format_age, iso8601_utc
from arraycrypto.core.keys import payload_key
from arraycrypto.core.peek import NOT_AUTHENTICATED, describe, peek
from arraycrypto.core.stream import StreamDecryptor

from .harness.constants import OTHER, SECRET, T0

SEG = 1024  # the smallest segment size: many segments from little data
RING = Keyring(SECRET)
CIPHER = RING.cipher(RING.new_snapshot(5, bytes(range(16)), T0))
HEADER = 84  # a stream header with a 16-byte signature
UNIT = SEG + 16


def seal(data: bytes, ad: bytes = b"", *, expires_at: int | None = None, seg: int = SEG) -> bytes:
    enc = CIPHER.stream_encryptor(ad, expires_at=expires_at, segment_size=seg)
    return enc.update(data) + enc.finish()


def open_stream(token: bytes, ad: bytes = b"", now_ms: int | None = T0) -> bytes:
    dec = RING.stream_decryptor(ad, now_ms=now_ms)
    return dec.update(token) + dec.finish()


def chunks_of(token: bytes) -> tuple[bytes, list[bytes]]:
    body = token[HEADER:]
    return token[:HEADER], [body[i : i + UNIT] for i in range(0, len(body), UNIT)]


# -- streams: sizes and framing -----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 5])
def test_round_trip_at_the_segment_edges(size: int) -> None:
    data = os.urandom(size)
    token = seal(data)
    segments = max(1, -(-size // SEG))
    assert len(token) == HEADER + size + 16 * segments  # never an extra empty segment
    assert open_stream(token) == data
    assert RING.decrypt(token) == data  # Keyring.decrypt tells a stream apart by itself


def test_header_layout_matches_the_spec() -> None:
    token = seal(b"x", expires_at=T0 + 5000)
    assert token[0] == 2
    assert token[1:9] == CIPHER.snapshot.key_id
    assert token[41] == 16
    assert token[42:58] == CIPHER.snapshot.signature
    assert token[58] == 2  # mode: stream
    assert int.from_bytes(token[59:67], "big") == T0 + 5000
    assert token[67] == 10  # 2**10 = 1 KiB segments
    assert b"\x01" + token[1:58] == CIPHER.snapshot.header()  # the v1 header, version 2


def test_every_stream_has_its_own_salt_and_key() -> None:
    a, b = seal(b"same"), seal(b"same")
    assert a[68:84] != b[68:84]
    assert a[HEADER:] != b[HEADER:]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5 * SEG), cuts=st.lists(st.integers(0, 6 * UNIT), max_size=8))
def test_any_feeding_pattern_gives_the_same_bytes(data: bytes, cuts: list[int]) -> None:
    """Encrypting and decrypting in pieces of any size changes nothing."""
    enc = CIPHER._stream_encryptor(b"ad", None, SEG, bytes(16))
    whole = enc.update(data) + enc.finish()
    enc = CIPHER._stream_encryptor(b"ad", None, SEG, bytes(16))
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces = [enc.update(data[a:b]) for a, b in itertools.pairwise(bounds)]
    assert b"".join(pieces) + enc.finish() == whole
    dec = RING.stream_decryptor(b"ad")
    bounds = sorted({0, len(whole), *(c % (len(whole) + 1) for c in cuts)})
    out = [dec.update(whole[a:b]) for a, b in itertools.pairwise(bounds)]
    assert b"".join(out) + dec.finish() == data


def test_update_into_writes_in_place() -> None:
    data = os.urandom(5 * SEG + 3)
    enc = CIPHER.stream_encryptor(segment_size=SEG)
    out = bytearray(enc.output_limit(len(data)))
    n = enc.update_into(data, out)
    token = bytes(out[:n]) + enc.finish()
    dec = RING.stream_decryptor()
    buf = bytearray(dec.output_limit(len(token)))
    m = dec.update_into(token, buf)
    assert bytes(buf[:m]) + dec.finish() == data
    with pytest.raises(ValueError, match="output_limit"):
        CIPHER.stream_encryptor(segment_size=SEG).update_into(data, bytearray(10))


# -- streams: every attack at random points -------------------------------------------------


def stream_fails(token: bytes, ad: bytes = b"") -> bytes:
    """Assert the stream fails, both whole and fed in pieces; return what was released."""
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        RING.decrypt(token, ad, now_ms=T0)
    dec = RING.stream_decryptor(ad, now_ms=T0)
    released: list[bytes] = []
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        feed(dec, token, released)
    return b"".join(released)


def feed(dec: StreamDecryptor, token: bytes, released: list[bytes]) -> None:
    for i in range(0, len(token), 700):
        released.append(dec.update(token[i : i + 700]))
    released.append(dec.finish())


def sized(low: int, high: int) -> st.SearchStrategy[bytes]:
    """Plaintexts spread over the whole size range (st.binary favours tiny ones)."""
    return st.integers(low, high).map(lambda n: random.Random(n).randbytes(n))


DATA = sized(1, 6 * SEG)


@settings(max_examples=80, deadline=None)
@given(data=DATA, where=st.integers(min_value=0))
def test_truncation_anywhere_fails_closed(data: bytes, where: int) -> None:
    token = seal(data)
    cut = where % len(token)  # 0 .. len-1: every proper prefix
    released = stream_fails(token[:cut])
    assert data.startswith(released)  # what came out is a true prefix, nothing else
    # random cuts rarely land on a segment boundary: try each of those too
    for boundary in range(HEADER + UNIT, len(token), UNIT):
        assert data.startswith(stream_fails(token[:boundary]))


@settings(max_examples=80, deadline=None)
@given(data=sized(SEG + 1, 6 * SEG), pick=st.tuples(st.integers(), st.integers()))
def test_reordering_two_segments_fails(data: bytes, pick: tuple[int, int]) -> None:
    head, chunks = chunks_of(seal(data))
    i, j = sorted((pick[0] % len(chunks), pick[1] % len(chunks)))
    if i == j:
        j = (i + 1) % len(chunks)
        i, j = sorted((i, j))
    chunks[i], chunks[j] = chunks[j], chunks[i]
    released = stream_fails(head + b"".join(chunks))
    assert data.startswith(released)
    assert len(released) <= i * SEG  # nothing from the first misplaced segment on


@settings(max_examples=80, deadline=None)
@given(data=DATA, pick=st.integers(), copy_to=st.integers())
def test_duplicating_a_segment_fails(data: bytes, pick: int, copy_to: int) -> None:
    head, chunks = chunks_of(seal(data))
    dup = chunks[pick % len(chunks)]
    chunks.insert(copy_to % (len(chunks) + 1), dup)
    assert data.startswith(stream_fails(head + b"".join(chunks)))


@settings(max_examples=60, deadline=None)
@given(data=DATA, extra=st.binary(min_size=1, max_size=2 * UNIT))
def test_extension_fails(data: bytes, extra: bytes) -> None:
    token = seal(data)
    assert data.startswith(stream_fails(token + extra))
    # and appending a genuine segment of another stream under the same snapshot
    _, other = chunks_of(seal(os.urandom(len(data))))
    stream_fails(token + other[-1])


@settings(max_examples=80, deadline=None)
@given(data=sized(0, 4 * SEG), where=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_flipped_bit_fails(data: bytes, where: int, bit: int) -> None:
    token = bytearray(seal(data, b"ctx", expires_at=T0 + 60_000))
    token[where % len(token)] ^= 1 << bit
    assert data.startswith(stream_fails(bytes(token), b"ctx"))


def test_dropping_the_last_full_segment_of_an_exact_multiple_fails() -> None:
    head, chunks = chunks_of(seal(bytes(3 * SEG)))
    assert len(chunks) == 3  # no empty segment after an exact multiple
    assert stream_fails(head + b"".join(chunks[:2])) == bytes(SEG)


def test_wrong_associated_data_or_key_fails() -> None:
    token = seal(b"data", b"right")
    stream_fails(token, b"wrong")
    with pytest.raises(DecryptionError):
        Keyring(OTHER).decrypt(token, b"right")


def test_a_failed_decryptor_refuses_more_input_and_wipes_its_output() -> None:
    token = bytearray(seal(os.urandom(3 * SEG)))
    token[HEADER + UNIT + 5] ^= 1  # segment 1
    dec = RING.stream_decryptor()
    out = bytearray(dec.output_limit(len(token)))
    with pytest.raises(DecryptionError):
        dec.update_into(token, out)
    assert out[SEG : 2 * SEG] == bytes(SEG)  # pyca's unverified plaintext is wiped
    with pytest.raises(DecryptionError):
        dec.update(b"more")
    with pytest.raises(DecryptionError):
        dec.finish()


def test_misuse_is_the_callers_error() -> None:
    enc = CIPHER.stream_encryptor()
    enc.finish()
    with pytest.raises(ValueError, match="finish"):
        enc.update(b"x")
    with pytest.raises(ValueError, match="finish"):
        enc.finish()
    dec = RING.stream_decryptor()
    dec.update(seal(b""))
    dec.finish()
    with pytest.raises(ValueError, match="finish"):
        dec.finish()
    for bad in (512, 1000, 1 << 25, 3 * SEG):
        with pytest.raises(ValueError, match="segment_size"):
            CIPHER.stream_encryptor(segment_size=bad)
    with pytest.raises(TypeError, match="ttl needs now_ms"):
        RING.stream_decryptor(ttl=5)


def test_a_single_shot_envelope_is_not_a_stream() -> None:
    dec = RING.stream_decryptor()
    with pytest.raises(DecryptionError):
        dec.update(CIPHER.encrypt(b"x" * 200, expires_at=T0 + 1))


def test_stream_objects_hold_no_printable_secret() -> None:
    enc = CIPHER.stream_encryptor()
    dec = RING.stream_decryptor()
    dec.update(seal(b"abc"))
    for obj in (enc, dec):
        text = repr(obj)
        assert SECRET.hex() not in text
        assert re.fullmatch(r"Stream(En|De)cryptor\([^)]*\)", text)
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(obj)


# -- single-shot v2: the sender's expiry -------------------------------------------------


def test_encrypt_with_expiry_makes_a_v2_single_and_v1_stays_the_default() -> None:
    v1 = CIPHER.encrypt(b"hello")
    v2 = CIPHER.encrypt(b"hello", b"ad", expires_at=T0 + 10_000)
    assert v1[0] == 1
    assert (v2[0], v2[58]) == (2, 1)
    assert int.from_bytes(v2[59:67], "big") == T0 + 10_000
    assert len(v2) == CIPHER.envelope_size(5, expires=True) == len(v1) + 9
    assert RING.decrypt(v2, b"ad", now_ms=T0) == b"hello"
    assert RING.decrypt(v1) == b"hello"  # and v1 needs no now_ms, as before


@pytest.mark.parametrize("bad", [0, -1, 2**53, 1.5e12, True])
def test_expires_at_is_range_checked(bad: object) -> None:
    fresh = RING.cipher(RING.new_snapshot(6, bytes(range(16)), T0))  # no expiry seen yet
    with pytest.raises(ValueError, match="expires_at"):
        fresh.encrypt(b"x", expires_at=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_at"):
        CIPHER.encrypt(b"x", expires_at=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_at"):
        CIPHER.stream_encryptor(expires_at=bad)  # type: ignore[arg-type]


def test_chunked_and_into_variants_carry_the_expiry() -> None:
    data = os.urandom(3 << 20)
    token = CIPHER.encrypt_chunked(data, b"a", expires_at=T0 + 1)
    assert token[0] == 2
    assert RING.decrypt(token, b"a", now_ms=T0, chunked=True) == data
    buf = bytearray(CIPHER.envelope_size(len(data), expires=True))
    n = CIPHER.encrypt_into(data, buf, b"a", expires_at=T0 + 1)
    assert RING.decrypt(bytes(buf[:n]), b"a", now_ms=T0) == data
    with pytest.raises(ExpiredError):
        RING.decrypt(token, b"a", now_ms=T0 + 61_001, chunked=True)


def test_a_cipher_without_its_key_makes_v1_only() -> None:
    bare = SnapshotCipher(CIPHER.snapshot, RING.primary.data_key(CIPHER.snapshot))
    assert RING.decrypt(bare.encrypt(b"x")) == b"x"
    with pytest.raises(TypeError, match="v1 only"):
        bare.encrypt(b"x", expires_at=T0)


# -- the time rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "stream"])
def test_expiry_and_max_drift(kind: str) -> None:
    expires = T0 + 60_000

    def token() -> bytes:
        if kind == "single":
            return CIPHER.encrypt(b"payload", expires_at=expires)
        return seal(b"payload", expires_at=expires)

    drift = 30
    ms = drift * 1000
    # a reader whose clock is behind by up to max_drift: a just-made message is fine
    assert RING.decrypt(token(), now_ms=T0 - ms, max_drift=drift) == b"payload"
    # up to max_drift past the expiry, by the reader's clock: still accepted ...
    assert RING.decrypt(token(), now_ms=expires + ms, max_drift=drift) == b"payload"
    # ... and no later
    with pytest.raises(ExpiredError, match=r"^ciphertext expired at 2023-11-14T22:14:20Z$") as e:
        RING.decrypt(token(), now_ms=expires + ms + 1, max_drift=drift)
    assert e.value.expires_at == expires
    assert isinstance(e.value, SnapshotError)
    assert pickle.loads(pickle.dumps(e.value)).expires_at == expires  # noqa: S301
    # the pure core never reads the clock, and never skips the check
    with pytest.raises(NowRequiredError, match="now_ms") as missing:
        RING.decrypt(token())
    assert isinstance(missing.value, TypeError)
    # the older rules still hold for v2
    with pytest.raises(SnapshotError, match="future"):
        RING.decrypt(token(), now_ms=T0 - ms - 1, max_drift=drift)
    with pytest.raises(SnapshotError, match="ttl"):
        RING.decrypt(token(), now_ms=T0 + 20_001, ttl=20)


def test_an_expired_stream_releases_no_plaintext() -> None:
    token = seal(os.urandom(4 * SEG), expires_at=T0 + 1)
    dec = RING.stream_decryptor(now_ms=T0 + 61_002)
    with pytest.raises(ExpiredError):
        dec.update(token[: HEADER + UNIT + 1])  # segment 0 verifies, then the rule applies
    with pytest.raises(DecryptionError):
        dec.update(token[HEADER + UNIT + 1 :])  # and the decryptor stays closed


def test_time_failures_come_only_after_authentication() -> None:
    forged = bytearray(CIPHER.encrypt(b"x", expires_at=T0 + 1))
    forged[59:67] = (1).to_bytes(8, "big")  # an attacker's "already expired"
    with pytest.raises(DecryptionError):
        RING.decrypt(bytes(forged), now_ms=T0 + 10**9)
    with pytest.raises(DecryptionError):  # no now_ms: still the opaque error, not NowRequired
        RING.decrypt(bytes(forged))


# -- time text and peek -----------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # up to 9999-12-31
def test_iso8601_matches_datetime(ms: int) -> None:
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    expect = when.strftime("%Y-%m-%dT%H:%M:%S")
    expect += f".{ms % 1000:03d}Z" if ms % 1000 else "Z"
    assert iso8601_utc(ms) == expect


def test_format_age() -> None:
    assert format_age(0) == "0 s ago"
    assert format_age(59_999) == "59 s ago"
    assert format_age(3_725_000) == "1 h 2 min ago"
    assert format_age(-90_061_000) == "in 1 d 1 h"


def test_peek_reads_every_format_without_a_key() -> None:
    v1 = CIPHER.encrypt(b"x" * 10)
    single = CIPHER.encrypt(b"x" * 10, expires_at=T0 + 3_600_000)
    stream = seal(os.urandom(2 * SEG + 1), expires_at=T0 + 60_000)
    a, b, c = peek(v1), peek(single), peek(stream)
    assert (a.version, a.mode, a.expires_at, a.plaintext_size) == (1, "single", None, 10)
    assert (b.version, b.mode, b.expires_at, b.plaintext_size) == (2, "single", T0 + 3_600_000, 10)
    assert (c.mode, c.segment_size, c.segments, c.plaintext_size) == ("stream", SEG, 3, 2 * SEG + 1)
    for info in (a, b, c):
        assert info.key_id == CIPHER.snapshot.key_id
        assert info.tick == 5
        assert info.timestamp == T0
        assert info.problem is None
    # a large stream: its first bytes and its size are enough
    assert peek(stream[:100], total_size=len(stream)) == c
    text = describe(c, T0 + 30_000)
    assert "2023-11-14T22:13:20Z (30 s ago)" in text
    assert "expires in 30 s" in text
    assert text.endswith(NOT_AUTHENTICATED)
    assert "expired" in describe(c, T0 + 61_000)


def test_peek_reports_impossible_sizes_and_rejects_garbage() -> None:
    head, chunks = chunks_of(seal(bytes(2 * SEG)))
    assert peek(head).problem is not None  # no last segment at all
    assert peek(head + chunks[0] + b"\x00" * 16).problem is not None  # an empty last after one
    assert peek(CIPHER.encrypt(b"")[:60]).problem is not None
    for garbage in (b"", b"\x00abc", b"\x03" * 100, b"\x02" + bytes(40) + b"\x05"):
        with pytest.raises(ValueError, match=r"envelope|range|short"):
            peek(garbage)


def test_no_v2_key_shows_in_reprs_or_errors() -> None:
    snapshot = CIPHER.snapshot
    key = RING.primary
    salt = bytes(range(16))
    secrets = [
        SECRET,
        key.single_key(snapshot),
        key.stream_key(snapshot),
        payload_key(key.stream_key(snapshot), salt),
    ]
    enc = CIPHER._stream_encryptor(b"", T0 + 1, SEG, salt)
    token = enc.update(b"x" * 3000) + enc.finish()
    texts = [repr(CIPHER), repr(RING), repr(enc), repr(RING.stream_decryptor())]
    cases: list[tuple[bytes, int | None]] = [
        (token, T0 + 10**7),  # expired
        (token, None),  # no now_ms
        (token[:-1], T0),  # truncated
        (CIPHER.encrypt(b"x", expires_at=T0 + 1), None),
    ]
    for envelope, now in cases:
        with pytest.raises((SnapshotError, DecryptionError, TypeError)) as caught:
            RING.decrypt(envelope, now_ms=now)
        texts.append(repr(caught.value) + str(caught.value))
    haystack = "\n".join(texts)
    for secret in secrets:
        assert secret.hex() not in haystack
        assert repr(secret)[2:-1] not in haystack
