"""Encrypting under one snapshot: envelope v1 (PROTOCOL.md, 3) and v2 (section 3a).

``encrypt`` makes an envelope v1, as always; with ``expires_at`` it makes a single-shot
envelope v2 that carries the sender's expiry, and ``stream_encryptor`` starts a v2
stream. Pure: no I/O, no clock (``expires_at`` is an absolute time the caller computed);
nonces and salts are drawn from ``os.urandom`` unless a test or the vector generator
passes them in (``_encrypt``, ``_stream_encryptor``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .envelope2 import (
    DEFAULT_SEGMENT_SHIFT,
    MAX_SEGMENT_SHIFT,
    MIN_SEGMENT_SHIFT,
    MODE_SINGLE,
    MODE_STREAM,
    SALT_SIZE,
    check_expires_at,
)
from .keys import ENVELOPE_V2, NONCE_SIZE, TAG_SIZE, Key, Snapshot, payload_key
from .stream import StreamEncryptor

__all__ = ["DEFAULT_SEGMENT_SIZE", "STEP", "SnapshotCipher"]

_urandom = os.urandom  # bound once: the encrypt hot path skips an attribute lookup
_pack_u64 = struct.Struct(">Q").pack
_MAX_TIME_MS: Final = 2**53 - 1

#: Chunked AES-GCM step: about 0.1 ms of work holding the GIL.
STEP: Final = 1 << 20
#: Plaintext bytes per stream segment unless the caller chooses (as age's 64 KiB chunks).
DEFAULT_SEGMENT_SIZE: Final = 1 << DEFAULT_SEGMENT_SHIFT
_V2_SINGLE: Final = bytes([MODE_SINGLE])


#: Large single-shot encrypts seal into a reused scratch buffer, then copy once into the
#: returned bytes. Returning ``header || nonce || ciphertext`` from pyca's own output
#: means two short-lived allocations of the payload's size per call; glibc's malloc
#: gives that memory back to the kernel when both are freed and faults it in again on
#: the next call, which cost more than the AES-GCM itself here (docs/benchmarks.md).
#: At most _POOL_SIZE buffers of at most _POOLED_MAX bytes are kept, shared by every
#: cipher; ``list.pop``/``append`` are atomic, so threads never share a buffer.
_POOLED_MIN: Final = 1 << 16
_POOLED_MAX: Final = (4 << 20) + TAG_SIZE
_POOL_SIZE: Final = 2
_pool: list[bytearray] = []


def _seal_pooled(aead: AESGCM, header: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    size = len(data) + TAG_SIZE
    if size > _POOLED_MAX:
        return header + nonce + aead.encrypt(nonce, data, aad)
    try:
        buf = _pool.pop()
    except IndexError:
        buf = bytearray(size)
    if len(buf) < size:
        buf = bytearray(size)
    with memoryview(buf) as whole, whole[:size] as view:
        aead.encrypt_into(nonce, data, aad, view)
        envelope = b"".join((header, nonce, view))
    if len(_pool) < _POOL_SIZE:
        _pool.append(buf)
    return envelope


class SnapshotCipher:
    """Encrypts under one verified snapshot's keys; built once per snapshot.

    Obtain one from :meth:`Keyring.cipher`. The AES-GCM object and the envelope header
    are prepared once, so each :meth:`encrypt` is one AEAD call and a concatenation.
    The v2 keys (single-shot with an expiry, streams) are derived on first use.
    """

    __slots__ = (
        "_aead",
        "_header",
        "_key",
        "_last_v2",
        "_owner",
        "_single_aead",
        "_single_key",
        "_stream_key",
        "_v2_single",
        "snapshot",
    )

    def __init__(self, snapshot: Snapshot, data_key: bytes, key: Key | None = None) -> None:
        self.snapshot = snapshot
        self._header = snapshot.header()
        self._key = data_key
        self._aead = AESGCM(data_key)
        self._owner = key  # derives the v2 keys; None: this cipher makes v1 only
        self._single_aead: AESGCM | None = None
        self._single_key = b""
        self._stream_key = b""
        # the single-shot v2 header up to expires_at: v1 header, version 2, mode 1
        self._v2_single = bytes([ENVELOPE_V2]) + self._header[1:] + _V2_SINGLE
        # (expires_at, its header, the single-shot AEAD) of the last call with an expiry;
        # None: none yet. Not 0: a first expires_at=0 would then match it, skip the range
        # check and seal under an empty header. (The v1 AEAD only fills the slot.)
        self._last_v2: tuple[int | None, bytes, AESGCM] = (None, b"", self._aead)

    def __repr__(self) -> str:
        return f"SnapshotCipher(key_id={self.snapshot.key_id.hex()}, tick={self.snapshot.tick})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SnapshotCipher holds a key and cannot be pickled")

    def _need_owner(self) -> Key:
        if self._owner is None:
            raise TypeError("this SnapshotCipher was built without its Key: v1 only")
        return self._owner

    def _init_single(self) -> AESGCM:
        """Derive the single-shot v2 key on first use (verified snapshot: see Keyring)."""
        self._single_key = self._need_owner().single_key(self.snapshot)
        self._single_aead = AESGCM(self._single_key)
        return self._single_aead

    def _init_stream(self) -> bytes:
        """Derive the snapshot's stream key (only ever HKDF input) on first use."""
        self._stream_key = self._need_owner().stream_key(self.snapshot)
        return self._stream_key

    def encrypt(
        self,
        data: bytes | str,
        associated_data: bytes = b"",
        *,
        expires_at: int | None = None,
    ) -> bytes:
        """Return the envelope of ``data`` (``str`` is encoded as UTF-8).

        An envelope v1 by default. With ``expires_at`` (milliseconds since the epoch,
        e.g. ``now_ms + 3_600_000``), a single-shot envelope v2 that every decrypt
        refuses with :class:`ExpiredError` once that time (plus the reader's
        ``max_drift``) has passed.
        """
        # Inlined rather than calling _encrypt: this is the hot path (~1 us budget).
        if isinstance(data, str):
            data = data.encode()
        nonce = _urandom(NONCE_SIZE)
        if expires_at is None:
            header = self._header
            aead = self._aead
        else:
            last = self._last_v2  # one tuple: threads never see a torn one
            if expires_at != last[0]:  # callers at ms resolution repeat it call after call
                if type(expires_at) is not int or not 0 < expires_at <= _MAX_TIME_MS:
                    check_expires_at(expires_at)  # raises, with the reason
                single = self._single_aead or self._init_single()
                last = (expires_at, self._v2_single + _pack_u64(expires_at), single)
                self._last_v2 = last
            _, header, aead = last
        aad = header + associated_data if associated_data else header
        if len(data) < _POOLED_MIN:
            return header + nonce + aead.encrypt(nonce, data, aad)
        return _seal_pooled(aead, header, nonce, data, aad)

    def v1_encryptor(self) -> Callable[[bytes | str, bytes], bytes]:
        """:meth:`encrypt` without ``expires_at``, as a function over this cipher's state.

        The same envelopes (v1), for a caller's hot path: ``CryptoClient`` binds one per
        snapshot it accepts. The header and the AEAD are the closure's locals rather
        than attributes, and there is no keyword to parse: about 0.1 µs less per call
        than the method, against raw AES-GCM's 1.4 µs for 64 bytes here.
        """
        header = self._header
        aead = self._aead
        seal = aead.encrypt
        urandom = _urandom

        def encrypt(data: bytes | str, associated_data: bytes = b"") -> bytes:
            if isinstance(data, str):
                data = data.encode()
            nonce = urandom(NONCE_SIZE)
            aad = header + associated_data if associated_data else header
            if len(data) < _POOLED_MIN:
                return header + nonce + seal(nonce, data, aad)
            return _seal_pooled(aead, header, nonce, data, aad)

        return encrypt

    def stream_encryptor(
        self,
        associated_data: bytes = b"",
        *,
        expires_at: int | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> StreamEncryptor:
        """Return a :class:`StreamEncryptor` for one new stream (envelope v2, mode 2).

        ``segment_size`` is a power of two from 1 KiB to 16 MiB (64 KiB by default);
        each stream gets a fresh random salt, hence its own AES key.
        """
        return self._stream_encryptor(
            associated_data, expires_at, segment_size, _urandom(SALT_SIZE)
        )

    def _stream_encryptor(
        self, associated_data: bytes, expires_at: int | None, segment_size: int, salt: bytes
    ) -> StreamEncryptor:
        # Private: tests and the vector generator inject the salt here.
        shift = segment_size.bit_length() - 1
        if segment_size != 1 << shift or not MIN_SEGMENT_SHIFT <= shift <= MAX_SEGMENT_SHIFT:
            raise ValueError("segment_size must be a power of two from 1 KiB to 16 MiB")
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        expiry = 0 if expires_at is None else check_expires_at(expires_at)
        header = (
            bytes([ENVELOPE_V2])
            + self._header[1:]
            + bytes([MODE_STREAM])
            + _pack_u64(expiry)
            + bytes([shift])
            + salt
        )
        key = payload_key(self._stream_key or self._init_stream(), salt)
        return StreamEncryptor(header, key, associated_data, segment_size)

    def _header_for(self, expires_at: int | None) -> tuple[bytes, bytes]:
        """Return (header, AES key) of a single-shot envelope: v1, or v2 with an expiry."""
        if expires_at is None:
            return self._header, self._key
        header = self._v2_single + _pack_u64(check_expires_at(expires_at))
        if self._single_aead is None:
            self._init_single()
        return header, self._single_key

    def encrypt_chunked(
        self,
        data: bytes | str,
        associated_data: bytes = b"",
        *,
        expires_at: int | None = None,
    ) -> bytes:
        """Like :meth:`encrypt` (same envelope), for very large payloads in a thread.

        pyca's one-shot AES-GCM holds the GIL for the whole call (55 ms for 64 MiB), which
        would stall an event loop even from a worker thread. This runs the same GCM in
        1 MiB steps, so other threads get the GIL between steps.
        """
        if isinstance(data, str):
            data = data.encode()
        nonce = _urandom(NONCE_SIZE)
        header, key = self._header_for(expires_at)
        aad = header + associated_data if associated_data else header
        encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        view = memoryview(data)
        parts = [header, nonce]
        parts.extend(encryptor.update(view[i : i + STEP]) for i in range(0, len(view), STEP))
        parts.append(encryptor.finalize())
        parts.append(encryptor.tag)
        return b"".join(parts)

    def _decrypt_chunked(
        self, nonce: memoryview, body: memoryview, aad: bytes, *, single: bool = False
    ) -> bytes:
        if len(body) < TAG_SIZE:
            raise InvalidTag
        if single and self._single_aead is None:
            self._init_single()
        key = self._single_key if single else self._key
        decryptor = Cipher(
            algorithms.AES(key), modes.GCM(bytes(nonce), bytes(body[-TAG_SIZE:]))
        ).decryptor()
        decryptor.authenticate_additional_data(aad)
        ciphertext = body[:-TAG_SIZE]
        parts = [
            decryptor.update(ciphertext[i : i + STEP]) for i in range(0, len(ciphertext), STEP)
        ]
        decryptor.finalize()  # checks the tag: nothing is returned unless it matches
        return b"".join(parts)

    def envelope_size(self, plaintext_size: int, *, expires: bool = False) -> int:
        """Return the size of the envelope of a ``plaintext_size``-byte message.

        ``expires``: the size of the v2 envelope that ``encrypt(..., expires_at=)`` makes.
        """
        extra = len(self._v2_single) + 8 - len(self._header) if expires else 0
        return len(self._header) + extra + NONCE_SIZE + plaintext_size + TAG_SIZE

    def encrypt_into(
        self,
        data: bytes,
        buffer: bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        expires_at: int | None = None,
    ) -> int:
        """Write the envelope of ``data`` into ``buffer``; return the bytes written.

        For large payloads: :meth:`encrypt` must copy the ciphertext once to prepend the
        header to an immutable ``bytes``, this writes it in place (as pyca's own
        ``encrypt_into``). ``buffer`` must hold :meth:`envelope_size` bytes.
        """
        header, _ = self._header_for(expires_at)
        aead = self._aead if expires_at is None else self._single_aead
        assert aead is not None
        hl = len(header)
        size = hl + NONCE_SIZE + len(data) + TAG_SIZE
        if len(buffer) < size:
            raise ValueError(f"buffer must hold at least {size} bytes")
        nonce = os.urandom(NONCE_SIZE)
        view = memoryview(buffer)
        view[:hl] = header
        view[hl : hl + NONCE_SIZE] = nonce
        aad = header + associated_data if associated_data else header
        aead.encrypt_into(nonce, data, aad, view[hl + NONCE_SIZE : size])
        return size

    def _encrypt(
        self,
        data: bytes | str,
        associated_data: bytes,
        nonce: bytes,
        expires_at: int | None = None,
    ) -> bytes:
        # Private: tests and the vector generator inject the nonce here.
        if isinstance(data, str):
            data = data.encode()
        header, _ = self._header_for(expires_at)
        aead = self._aead if expires_at is None else self._single_aead
        assert aead is not None
        aad = header + associated_data if associated_data else header
        return header + nonce + aead.encrypt(nonce, data, aad)
