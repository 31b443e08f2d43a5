"""The envelope, snapshots and keyring, without any I/O."""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arraycrypto import DecryptionError, ExpiredError, Key, Keyring, Snapshot, SnapshotError
from arraycrypto.core.envelope import STEP as _STEP
from arraycrypto.core.envelope2 import NowRequiredError
from arraycrypto.core.keyring import CACHE_SIZE as _CACHE_SIZE

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))
T0 = 1_700_000_000_000  # ms


def snap(keyring: Keyring, tick: int = 7, timestamp: int = T0, size: int = 16) -> Snapshot:
    return keyring.new_snapshot(tick, bytes(16), timestamp, size)


@given(data=st.binary(max_size=4096), ad=st.binary(max_size=256))
@settings(max_examples=200, deadline=None)
def test_round_trip_any_bytes_any_associated_data(data: bytes, ad: bytes) -> None:
    ring = Keyring(SECRET)
    token = ring.encrypt(snap(ring), data, ad)
    assert ring.decrypt(token, ad) == data
    # a fresh keyring (nothing cached) decrypts it too: the envelope is self-contained
    assert Keyring(SECRET).decrypt(token, ad) == data


@given(text=st.text(max_size=200))
@settings(max_examples=50, deadline=None)
def test_str_is_utf8(text: str) -> None:
    ring = Keyring(SECRET)
    assert ring.decrypt(ring.encrypt(snap(ring), text)) == text.encode()


def test_large_payload_round_trip() -> None:
    ring = Keyring(SECRET)
    data = os.urandom(3 * 1024 * 1024 + 5)
    cipher = ring.cipher(snap(ring))
    assert ring.decrypt(cipher.encrypt(data)) == data
    buffer = bytearray(cipher.envelope_size(len(data)))
    written = cipher.encrypt_into(data, buffer, b"ad")
    assert written == len(buffer)
    assert ring.decrypt(bytes(buffer), b"ad") == data
    assert ring.decrypt(buffer, b"ad") == data  # bytearray input accepted


@pytest.mark.parametrize("size", [0, 64, 65535, 65536, 1024 * 1024])
@pytest.mark.parametrize("ad", [b"", b"ad"])
def test_the_v1_encryptor_makes_what_encrypt_makes(size: int, ad: bytes) -> None:
    # CryptoClient's hot path: the same v1 envelope as the method, small and pooled sizes.
    ring = Keyring(SECRET)
    cipher = ring.cipher(snap(ring))
    encrypt = cipher.v1_encryptor()
    data = os.urandom(size)
    token = encrypt(data, ad)
    assert token[:58] == cipher.encrypt(data, ad)[:58]  # same header: version, key, tick
    assert len(token) == len(cipher.encrypt(data, ad))
    assert Keyring(SECRET).decrypt(token, ad) == data
    assert ring.decrypt(encrypt("é", ad), ad) == "é".encode()


def test_encrypt_into_rejects_small_buffer() -> None:
    ring = Keyring(SECRET)
    cipher = ring.cipher(snap(ring))
    with pytest.raises(ValueError, match="at least"):
        cipher.encrypt_into(b"abc", bytearray(10))


def test_nonces_differ() -> None:
    ring = Keyring(SECRET)
    cipher = ring.cipher(snap(ring))
    tokens = {cipher.encrypt(b"same") for _ in range(1000)}
    assert len(tokens) == 1000


def test_every_bit_flip_and_truncation_fails_opaquely() -> None:
    ring = Keyring(SECRET)
    token = ring.encrypt(snap(ring), b"hello, world", b"ad")
    messages = set()
    for i in range(len(token) * 8):
        flipped = bytearray(token)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecryptionError) as info:
            ring.decrypt(bytes(flipped), b"ad")
        messages.add(str(info.value))
    for n in range(len(token)):
        with pytest.raises(DecryptionError) as info:
            ring.decrypt(token[:n], b"ad")
        messages.add(str(info.value))
    with pytest.raises(DecryptionError):
        ring.decrypt(token + b"\x00", b"ad")
    assert messages == {"decryption failed"}


def test_wrong_associated_data_fails() -> None:
    ring = Keyring(SECRET)
    token = ring.encrypt(snap(ring), b"x", b"ad")
    with pytest.raises(DecryptionError):
        ring.decrypt(token)
    with pytest.raises(DecryptionError):
        ring.decrypt(token, b"ae")


def test_wrong_key_and_unknown_key_id_fail_the_same_way() -> None:
    token = Keyring(SECRET).encrypt(snap(Keyring(SECRET)), b"x")
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        Keyring(OTHER).decrypt(token)
    # same key id, forged signature: the header check fails before AES-GCM is tried
    forged = bytearray(token)
    forged[45] ^= 0xFF
    with pytest.raises(DecryptionError, match=r"^decryption failed$"):
        Keyring(SECRET).decrypt(bytes(forged))


def test_not_bytes_fails_opaquely() -> None:
    ring = Keyring(SECRET)
    with pytest.raises(DecryptionError):
        ring.decrypt("not bytes")  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        ring.decrypt(b"")


def test_rotated_keyring_decrypts_old_ciphertexts() -> None:
    old_ring = Keyring(SECRET)
    old_token = old_ring.encrypt(snap(old_ring), b"made before rotation")
    new_ring = Keyring(OTHER, old=[SECRET])
    new_token = new_ring.encrypt(snap(new_ring), b"made after rotation")
    assert new_ring.primary.key_id == Key(OTHER).key_id
    assert new_ring.decrypt(old_token) == b"made before rotation"
    assert new_ring.decrypt(new_token) == b"made after rotation"
    with pytest.raises(DecryptionError):
        old_ring.decrypt(new_token)  # the old ring never held the new key


def test_a_secret_is_either_trusted_to_sign_or_retired() -> None:
    ring = Keyring(SECRET, next=[SECRET])  # the same secret twice is harmless
    assert len(repr(ring).split(",")) == 2
    with pytest.raises(ValueError, match="both trusted to sign and retired"):
        Keyring(SECRET, old=[SECRET])
    with pytest.raises(ValueError, match="both trusted to sign and retired"):
        Keyring(SECRET, old=[OTHER], next=[OTHER])


def test_cipher_rejects_unsigned_snapshot() -> None:
    ring = Keyring(SECRET)
    good = snap(ring)
    bad = Snapshot(good.tick + 1, good.seed, good.timestamp, good.key_id, good.signature)
    with pytest.raises(SnapshotError):
        ring.cipher(bad)
    with pytest.raises(SnapshotError):
        Keyring(OTHER).cipher(good)


@pytest.mark.parametrize("size", [16, 20, 32])
def test_signature_sizes(size: int) -> None:
    ring = Keyring(SECRET)
    s = snap(ring, size=size)
    assert len(s.signature) == size
    assert ring.verify(s) is not None
    assert ring.decrypt(ring.encrypt(s, b"m")) == b"m"


@pytest.mark.parametrize("size", [0, 8, 15, 33])
def test_signature_size_bounds(size: int) -> None:
    with pytest.raises(ValueError, match="16 to 32"):
        snap(Keyring(SECRET), size=size)


def test_truncated_signature_is_not_accepted() -> None:
    ring = Keyring(SECRET)
    s = snap(ring, size=32)
    short = Snapshot(s.tick, s.seed, s.timestamp, s.key_id, s.signature[:15])
    assert ring.verify(short) is None


class TestTime:
    def setup_method(self) -> None:
        self.ring = Keyring(SECRET)
        self.token = self.ring.encrypt(snap(self.ring, timestamp=T0), b"m")

    def test_no_now_means_no_time_check(self) -> None:
        assert self.ring.decrypt(self.token) == b"m"

    def test_ttl_needs_now(self) -> None:
        with pytest.raises(TypeError, match="now_ms"):
            self.ring.decrypt(self.token, ttl=10)

    def test_ttl_edges(self) -> None:
        assert self.ring.decrypt(self.token, ttl=10, now_ms=T0 + 10_000) == b"m"
        with pytest.raises(SnapshotError, match="ttl"):
            self.ring.decrypt(self.token, ttl=10, now_ms=T0 + 10_001)

    def test_future_edges(self) -> None:
        assert self.ring.decrypt(self.token, now_ms=T0 - 60_000, max_drift=60) == b"m"
        with pytest.raises(SnapshotError, match="future"):
            self.ring.decrypt(self.token, now_ms=T0 - 60_001, max_drift=60)

    def test_time_checked_only_after_authentication(self) -> None:
        bad = self.token[:-1] + bytes([self.token[-1] ^ 1])
        with pytest.raises(DecryptionError):
            self.ring.decrypt(bad, ttl=1, now_ms=T0 + 10**9)


def test_decrypt_cache_is_bounded() -> None:
    ring = Keyring(SECRET)
    tokens = [ring.encrypt(snap(ring, tick=t), b"m") for t in range(_CACHE_SIZE + 10)]
    fresh = Keyring(SECRET)
    for t in tokens:
        assert fresh.decrypt(t) == b"m"
    assert len(fresh._ciphers) == _CACHE_SIZE
    assert fresh.decrypt(tokens[0]) == b"m"  # evicted, verified again, still fine


def test_secret_size_bounds() -> None:
    with pytest.raises(ValueError, match="16 to 1024"):
        Key(b"x" * 15)
    with pytest.raises(TypeError):
        Key("x" * 32)  # type: ignore[arg-type]


def test_secrets_do_not_print_or_pickle() -> None:
    ring = Keyring(SECRET, old=[OTHER])
    cipher = ring.cipher(snap(ring))
    for obj in (ring, ring.primary, cipher):
        text = repr(obj)
        assert SECRET.hex() not in text
        assert ring.primary._snapshot_mac.hex() not in text
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(obj)


def test_labels_give_distinct_keys() -> None:
    k = Key(SECRET)
    s = snap(Keyring(SECRET))
    keys = {k._snapshot_mac, k._client_proof, k._server_proof, k.data_key(s), k.key_id}
    assert len(keys) == 5


def test_data_key_depends_on_tick_seed_and_secret() -> None:
    k = Key(SECRET)
    ring = Keyring(SECRET)
    base = k.data_key(snap(ring, tick=1))
    assert base != k.data_key(snap(ring, tick=2))
    other_seed = ring.new_snapshot(1, b"\x01" * 16, T0)
    assert base != k.data_key(other_seed)
    assert base != Key(OTHER).data_key(snap(Keyring(OTHER), tick=1))


@pytest.mark.parametrize("size", [0, 1, _STEP - 1, _STEP, _STEP + 1, 3 * _STEP + 5])
def test_chunked_gcm_is_the_same_envelope(size: int) -> None:
    ring = Keyring(SECRET)
    cipher = ring.cipher(snap(ring))
    data = os.urandom(size)
    chunked = cipher.encrypt_chunked(data, b"ad")
    one_shot = cipher.encrypt(data, b"ad")
    assert len(chunked) == len(one_shot)
    for token in (chunked, one_shot):
        assert ring.decrypt(token, b"ad") == data
        assert ring.decrypt(token, b"ad", chunked=True) == data
    with pytest.raises(DecryptionError):
        ring.decrypt(chunked[:-1] + bytes([chunked[-1] ^ 1]), b"ad", chunked=True)
    with pytest.raises(DecryptionError):
        ring.decrypt(chunked, b"other", chunked=True)


def test_decrypt_cache_admits_only_ciphertexts_that_decrypt() -> None:
    # Anyone can read signed snapshots (GET /snapshot) and build tokens whose header
    # verifies; with junk after it they must not take cache slots from real entries.
    ring = Keyring(SECRET)
    real = ring.encrypt(snap(ring, tick=1), b"real")
    reader = Keyring(SECRET)
    assert reader.decrypt(real) == b"real"
    assert len(reader._ciphers) == 1
    for tick in range(2, 50):
        header = snap(ring, tick=tick).header()
        with pytest.raises(DecryptionError):
            reader.decrypt(header + bytes(12) + b"junk" * 8)
    assert len(reader._ciphers) == 1  # still only the snapshot that decrypted
    assert reader.decrypt(real) == b"real"


def test_caches_hold_what_they_serve() -> None:
    # A client accepts a snapshot every tick but encrypts under the latest only: the
    # decrypt cache must not fill from accepted snapshots (it held one AES context per
    # tick, up to 4 096, about 16 MiB), only from what is decrypted, up to its bound.
    from arraycrypto.core.handshake import Accepted, SnapshotPolicy

    ring = Keyring(SECRET, cache_size=8)
    policy = SnapshotPolicy(ring, max_drift=10**9)
    server = Keyring(SECRET)
    tokens = []
    for tick in range(1, 301):
        verdict = policy.check(server.new_snapshot(tick, bytes(16), tick), 150)
        assert isinstance(verdict, Accepted)
        tokens.append(verdict.cipher.encrypt(b"m"))
    assert len(ring._ciphers) == 0
    for token in tokens:
        assert ring.decrypt(token) == b"m"
    assert len(ring._ciphers) == 8
    with pytest.raises(ValueError, match="cache_size"):
        Keyring(SECRET, cache_size=0)


def test_expiring_messages_take_the_cached_path_and_stay_bounded() -> None:
    # An envelope v2 single whose header decrypted before is opened from a cache keyed
    # by its whole header (expiry included): no second verification, no rebuilding of
    # the v1 header. Only headers that decrypted get in, as many as cache_size.
    writer = Keyring(SECRET)
    cipher = writer.cipher(snap(writer))
    reader = Keyring(SECRET, cache_size=4)
    expires = T0 + 60_000
    first = cipher.encrypt(b"one", expires_at=expires)
    assert reader.decrypt(first, now_ms=T0) == b"one"
    assert list(reader._singles) == [first[:67]]  # 58-byte header, mode, expires_at
    second = cipher.encrypt(b"two", b"ad", expires_at=expires)
    assert reader.decrypt(second, b"ad", now_ms=T0) == b"two"  # from the cache
    forged = bytearray(second)
    forged[-1] ^= 1  # a cached header does not vouch for the rest
    with pytest.raises(DecryptionError):
        reader.decrypt(bytes(forged), b"ad", now_ms=T0)
    with pytest.raises(ExpiredError):  # the time rules hold on the cached path too
        reader.decrypt(second, b"ad", now_ms=expires + 60_001)
    with pytest.raises(NowRequiredError):
        reader.decrypt(second, b"ad")
    for n in range(10):  # a new expiry, a new header
        token = cipher.encrypt(b"m", expires_at=expires + n)
        assert reader.decrypt(token, now_ms=T0) == b"m"
    assert len(reader._singles) == 4
