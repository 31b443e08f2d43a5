"""The keyring: which secrets sign, which only decrypt, and the decrypt hot path.

Pure: no I/O, no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

import contextlib
from typing import Final, NoReturn, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .envelope import SnapshotCipher
from .envelope2 import MODE_STREAM, NowRequiredError, check_time
from .exceptions import DecryptionError, SnapshotError
from .keys import (
    ENVELOPE_VERSION,
    MAX_SIGNATURE_SIZE,
    MIN_SIGNATURE_SIZE,
    SNAPSHOT_BODY_SIZE,
    Key,
    Snapshot,
    unpack_snapshot_body,
)
from .stream import StreamDecryptor

__all__ = ["CACHE_SIZE", "Keyring"]

_V = TypeVar("_V")

#: Ciphers decryption remembers by default: the snapshots of the most recent
#: ciphertexts decrypted (one entry per snapshot, about 4 KiB each with its AES context,
#: mostly outside Python's heap: 64 entries hold about 256 KiB).
CACHE_SIZE: Final = 64
_SIG_LEN_OFFSET: Final = SNAPSHOT_BODY_SIZE


class Keyring:
    """The secrets of one party, selected by key id: which sign, which only decrypt.

    - ``primary``: the secret this party uses now. A server signs with it; a client
      trusts it to sign handshakes and snapshots.
    - ``next``: secrets a client already trusts to sign, ranked after the primary, so a
      server can move to one of them without a moment where clients refuse it (the
      first step of a rotation, as Tink stages a key before making it primary).
    - ``old``: retired secrets, **decrypt-only**: never trusted to sign anything again,
      kept so every ciphertext made under them still decrypts.

    Every secret decrypts. Decryption needs no server and no history: everything else
    needed is inside the envelope.
    """

    __slots__ = ("_by_id", "_cache_size", "_ciphers", "_ranks", "_singles", "primary")

    def __init__(
        self,
        primary: bytes,
        old: tuple[bytes, ...] | list[bytes] = (),
        *,
        next: tuple[bytes, ...] | list[bytes] = (),
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self.primary = Key(primary)
        self._by_id: dict[bytes, Key] = {}
        #: Trusted signers by key id: the primary ranks 0, the next secrets 1, 2, ...
        self._ranks: dict[bytes, int] = {}
        for rank, secret in enumerate((primary, *next)):
            key = self._add(secret)
            self._ranks.setdefault(key.key_id, rank)
        for secret in old:
            key = self._add(secret)
            if key.key_id in self._ranks:
                raise ValueError("a secret cannot be both trusted to sign and retired")
        # Envelope header -> cipher, for the headers of ciphertexts that decrypted (and
        # of snapshots a caller asked cipher() for);
        # bounded by cache_size, oldest evicted first. Encryption keeps its own cipher.
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._cache_size = cache_size
        self._ciphers: dict[bytes, SnapshotCipher] = {}
        # The same for envelope v2 single headers (expiry included), bounded alike:
        # their AEAD, snapshot timestamp and expires_at, so an expiring message costs
        # the same dict hit as a v1 one (docs/benchmarks.md: an expiry field's cost).
        self._singles: dict[bytes, tuple[AESGCM, int, int]] = {}

    def _add(self, secret: bytes) -> Key:
        key = Key(secret)
        known = self._by_id.get(key.key_id)
        if known is not None and known._secret != secret:
            raise ValueError("two secrets in the keyring share a key id")
        return self._by_id.setdefault(key.key_id, key)

    def __repr__(self) -> str:
        ids = ", ".join(k.hex() for k in self._by_id)
        return f"Keyring(primary={self.primary.key_id.hex()}, key_ids=[{ids}])"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Keyring holds secrets and cannot be pickled")

    def trust_rank(self, key_id: bytes) -> int | None:
        """How new a trusted signer is (0 = the primary, then ``next``); None: not trusted."""
        return self._ranks.get(key_id)

    def key(self, key_id: bytes) -> Key | None:
        """Return the key named by ``key_id``, or ``None`` if this keyring lacks it."""
        return self._by_id.get(key_id)

    def new_snapshot(
        self, tick: int, seed: bytes, timestamp: int, signature_size: int = 16
    ) -> Snapshot:
        """Return a snapshot signed with the primary key."""
        return self.primary.sign_snapshot(tick, seed, timestamp, signature_size)

    def tick_snapshot(self, tick: int, interval_ms: int, signature_size: int = 16) -> Snapshot:
        """The primary key's snapshot of ``tick`` (see :meth:`Key.tick_snapshot`)."""
        return self.primary.tick_snapshot(tick, interval_ms, signature_size)

    def verify(self, snapshot: Snapshot) -> Key | None:
        """Return the key that signed ``snapshot``, or None if none of ours did."""
        key = self._by_id.get(snapshot.key_id)
        return key if key is not None and key.verify_snapshot(snapshot) else None

    def admit(self, snapshot: Snapshot, key: Key) -> SnapshotCipher:
        """The cipher of a snapshot ``key`` verified (see :meth:`verify`), for encrypting.

        Not put in the decrypt cache: a client accepts a snapshot every tick and
        encrypts under the latest only; caching each would hold one AES context per tick
        seen (about 16 MiB after an hour at 1 s ticks). The decrypt cache fills from
        what is actually decrypted.
        """
        header = snapshot.header()
        cipher = self._ciphers.get(header)
        return (
            cipher if cipher is not None else SnapshotCipher(snapshot, key.data_key(snapshot), key)
        )

    def cipher(self, snapshot: Snapshot) -> SnapshotCipher:
        """Return the cipher for a snapshot, verifying its signature the first time.

        Raises :class:`SnapshotError` if no key of this keyring signed it.
        """
        header = snapshot.header()
        cipher = self._ciphers.get(header)
        if cipher is None:
            cipher = self._admit(header, snapshot)
            if cipher is None:
                raise SnapshotError("snapshot signature is not valid under any known key")
        return cipher

    def _admit(self, header: bytes, snapshot: Snapshot) -> SnapshotCipher | None:
        key = self.verify(snapshot)
        return None if key is None else self._remember(header, snapshot, key)

    def _remember(self, header: bytes, snapshot: Snapshot, key: Key) -> SnapshotCipher:
        cipher = SnapshotCipher(snapshot, key.data_key(snapshot), key)
        self._store(header, cipher)
        return cipher

    def _store(self, header: bytes, cipher: SnapshotCipher) -> None:
        _bounded_put(self._ciphers, header, cipher, self._cache_size)

    def encrypt(
        self,
        snapshot: Snapshot,
        data: bytes | str,
        associated_data: bytes = b"",
        *,
        expires_at: int | None = None,
    ) -> bytes:
        """Encrypt ``data`` under ``snapshot`` (verified once, then cached); see SnapshotCipher."""
        return self.cipher(snapshot).encrypt(data, associated_data, expires_at=expires_at)

    def decrypt(
        self,
        token: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
        now_ms: int | None = None,
        max_drift: float = 60.0,
        chunked: bool = False,
    ) -> bytes:
        """Decrypt an envelope (v1, v2 single or v2 stream) and return the plaintext.

        Any failure to authenticate raises the one opaque :class:`DecryptionError`.
        When ``now_ms`` (milliseconds since the epoch) is given, an authentic ciphertext
        whose snapshot is older than ``ttl`` seconds, or dated more than ``max_drift``
        seconds in the future, raises :class:`SnapshotError`, and one more than
        ``max_drift`` past the expiry its sender set raises :class:`ExpiredError`.
        ``ttl`` needs ``now_ms``: this module never reads the clock; so does a
        ciphertext that carries an expiry (:class:`NowRequiredError`, a ``TypeError``).
        ``chunked`` decrypts a large envelope in 1 MiB steps (see
        :meth:`SnapshotCipher.encrypt_chunked`), for worker threads.
        """
        if ttl is not None and now_ms is None:
            raise TypeError("ttl needs now_ms: pass the current time in milliseconds")
        # Hot path (~1.3 us budget): one dict lookup for a header seen before, one AEAD
        # call. Only headers of ciphertexts that decrypted enter the cache, so a cache
        # hit needs no checks, and junk after a valid (public) header takes no slot.
        try:
            data = token if type(token) is bytes else bytes(token)
            end = data[41] + 42  # signature length byte at offset 41, then the signature
            if data[0] == 2:  # envelope v2 (a literal: a global costs a lookup per call)
                # The single-shot header ends after mode and expires_at: one slice, one
                # lookup for a header that decrypted before (no v1 lookup first).
                hend = end + 9
                header = data[:hend]
                single = self._singles.get(header)
                if single is None or now_ms is None or len(data) > 4096:
                    return _decrypt_v2(self, data, associated_data, ttl, now_ms, max_drift, chunked)
                aead, stamp, expires_at = single
                aad = header + associated_data if associated_data else header
                plaintext = aead.decrypt(data[hend : hend + 12], data[hend + 12 :], aad)
                drift_ms = max_drift * 1000
                if ttl is not None or stamp - now_ms > drift_ms or now_ms - expires_at > drift_ms:
                    check_time(stamp, expires_at, now_ms, ttl, max_drift)
                return plaintext
            header = data[:end]
            cipher = self._ciphers.get(header)
            new = cipher is None
            if cipher is None:
                cipher = self._header_cipher(header)
            aad = header + associated_data if associated_data else header
            if len(data) > 4096:
                # Large payloads: memoryview slices avoid copying the ciphertext.
                view = memoryview(data)
                if chunked:
                    plaintext = cipher._decrypt_chunked(view[end : end + 12], view[end + 12 :], aad)
                else:
                    plaintext = cipher._aead.decrypt(view[end : end + 12], view[end + 12 :], aad)
            else:
                plaintext = cipher._aead.decrypt(data[end : end + 12], data[end + 12 :], aad)
        except NowRequiredError:
            raise  # the caller's mistake, not the ciphertext's
        except (IndexError, TypeError, ValueError, InvalidTag, DecryptionError):
            # AES-GCM rejects a short body or a bad tag before returning anything.
            raise DecryptionError from None
        if new:
            self._store(header, cipher)
        if now_ms is not None:
            stamp = cipher.snapshot.timestamp
            if stamp - now_ms > max_drift * 1000:
                raise SnapshotError("ciphertext is dated in the future beyond max_drift")
            if ttl is not None and now_ms - stamp > ttl * 1000:
                raise SnapshotError("ciphertext is older than its ttl")
        return plaintext

    def cipher_for_header(self, header: bytes) -> tuple[SnapshotCipher, bool]:
        """The verified cipher of an envelope v1 header (``signed_bytes || L || sig``).

        Returns it with whether it came from the cache; one verified now is not cached
        (call :meth:`decrypted` once a ciphertext under it decrypted). Envelope v2 uses
        it with its header's first byte set back to 1. Raises the opaque
        :class:`DecryptionError` if no key of this keyring signed it.
        """
        cipher = self._ciphers.get(header)
        if cipher is not None:
            return cipher, True
        return self._header_cipher(header), False

    def stream_key(self, header: bytes) -> bytes:
        """The stream key of the snapshot a verified envelope v1 header names.

        For :class:`StreamDecryptor` (:class:`~arraycrypto.core.stream.StreamKeys`);
        raises the opaque :class:`DecryptionError` as :meth:`cipher_for_header` does.
        """
        cipher, _ = self.cipher_for_header(header)
        return cipher._stream_key or cipher._init_stream()

    def decrypted(self, header: bytes, cipher: SnapshotCipher) -> None:
        """Cache ``cipher`` for ``header``: a ciphertext under it just decrypted."""
        if header not in self._ciphers:
            self._store(header, cipher)

    def decrypted_single(
        self, header: bytes, cipher: SnapshotCipher, aead: AESGCM, expires_at: int
    ) -> None:
        """Cache an envelope v2 single ``header`` (whole): a ciphertext under it decrypted."""
        if header not in self._singles:
            entry = (aead, cipher.snapshot.timestamp, expires_at)
            _bounded_put(self._singles, header, entry, self._cache_size)

    def stream_decryptor(
        self,
        associated_data: bytes = b"",
        *,
        now_ms: int | None = None,
        ttl: float | None = None,
        max_drift: float = 60.0,
    ) -> StreamDecryptor:
        """Return a :class:`StreamDecryptor` for one envelope v2 stream (time rules as decrypt)."""
        return StreamDecryptor(self, associated_data, now_ms=now_ms, ttl=ttl, max_drift=max_drift)

    def _header_cipher(self, header: bytes) -> SnapshotCipher:
        """The cipher of an envelope header whose signature verifies (not cached)."""
        sig_len = len(header) - SNAPSHOT_BODY_SIZE - 1
        if not MIN_SIGNATURE_SIZE <= sig_len <= MAX_SIGNATURE_SIZE:
            raise DecryptionError
        if header[_SIG_LEN_OFFSET] != sig_len:  # the token was cut short inside the header
            raise DecryptionError
        version, key_id, tick, timestamp, seed = unpack_snapshot_body(header)
        if version != ENVELOPE_VERSION:
            raise DecryptionError
        snapshot = Snapshot(tick, seed, timestamp, key_id, header[SNAPSHOT_BODY_SIZE + 1 :])
        key = self.verify(snapshot)
        if key is None:
            raise DecryptionError
        return SnapshotCipher(snapshot, key.data_key(snapshot), key)


def _bounded_put(cache: dict[bytes, _V], key: bytes, value: _V, size: int) -> None:
    """Put ``key`` in a cache of at most ``size`` entries, evicting the oldest first."""
    if len(cache) >= size:
        # Threads (SyncCryptoClient) may evict at the same moment: losing that race
        # only means the cache holds an entry or two more for a while.
        with contextlib.suppress(RuntimeError, KeyError, StopIteration):
            del cache[next(iter(cache))]
    cache[key] = value


def _decrypt_v2(
    keyring: Keyring,
    data: bytes,
    associated_data: bytes,
    ttl: float | None,
    now_ms: int | None,
    max_drift: float,
    chunked: bool,
) -> bytes:
    """Decrypt a whole envelope v2 held in memory (single or stream); see Keyring.decrypt.

    Called by :meth:`Keyring.decrypt` inside its ``try``: an IndexError, ValueError or
    TypeError here becomes the opaque DecryptionError there.
    """
    # Small-message path (~1.5 us budget): literals rather than module globals; the
    # offsets are section 3a's (41: signature length; then mode, expires_at, nonce).
    end = data[41] + 42  # the mode byte, after the signature
    if data[end] != 1:  # MODE_SINGLE
        if data[end] != MODE_STREAM:
            raise DecryptionError
        decryptor = keyring.stream_decryptor(
            associated_data, now_ms=now_ms, ttl=ttl, max_drift=max_drift
        )
        return decryptor.update(data) + decryptor.finish()
    v1_header = b"\x01" + data[1:end]
    # verified once per snapshot, then a dict hit; cached only once it decrypted
    cipher, cached = keyring.cipher_for_header(v1_header)
    hend = end + 9  # the header ends after expires_at
    header = data[:hend]
    aad = header + associated_data if associated_data else header
    aead = cipher._single_aead or cipher._init_single()
    # AES-GCM raises InvalidTag (or ValueError for a short body) before returning anything.
    if len(data) > 4096:
        view = memoryview(data)
        if chunked:
            plaintext = cipher._decrypt_chunked(
                view[hend : hend + 12], view[hend + 12 :], aad, single=True
            )
        else:
            plaintext = aead.decrypt(view[hend : hend + 12], view[hend + 12 :], aad)
    else:
        plaintext = aead.decrypt(data[hend : hend + 12], data[hend + 12 :], aad)
    if not cached:
        keyring.decrypted(v1_header, cipher)
    expires_at = int.from_bytes(header[end + 1 :])
    keyring.decrypted_single(header, cipher, aead, expires_at)
    timestamp = cipher.snapshot.timestamp
    if now_ms is not None and ttl is None:  # the usual case, inlined
        drift_ms = max_drift * 1000
        if timestamp - now_ms <= drift_ms and now_ms - expires_at <= drift_ms:
            return plaintext
    check_time(timestamp, expires_at, now_ms, ttl, max_drift)
    return plaintext
