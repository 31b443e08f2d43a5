"""Envelope v1: one AES-256-GCM message under one snapshot's data key (PROTOCOL.md, 3).

Pure: no I/O, no clock; the nonce is drawn from ``os.urandom`` unless a test or the
vector generator passes it in (``_encrypt``).
"""

from __future__ import annotations

import os
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import NONCE_SIZE, TAG_SIZE, Snapshot

__all__ = ["STEP", "SnapshotCipher"]

_urandom = os.urandom  # bound once: the encrypt hot path skips an attribute lookup

#: Chunked AES-GCM step: about 0.1 ms of work holding the GIL.
STEP: Final = 1 << 20


class SnapshotCipher:
    """Encrypts under one verified snapshot's data key; built once per snapshot.

    Obtain one from :meth:`Keyring.cipher`. The AES-GCM object and the envelope header
    are prepared once, so each :meth:`encrypt` is one AEAD call and a concatenation.
    """

    __slots__ = ("_aead", "_header", "_key", "snapshot")

    def __init__(self, snapshot: Snapshot, data_key: bytes) -> None:
        self.snapshot = snapshot
        self._header = snapshot.header()
        self._key = data_key
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return f"SnapshotCipher(key_id={self.snapshot.key_id.hex()}, tick={self.snapshot.tick})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SnapshotCipher holds a key and cannot be pickled")

    def encrypt(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Return the envelope v1 of ``data`` (``str`` is encoded as UTF-8)."""
        # Inlined rather than calling _encrypt: this is the hot path (~1 us budget).
        if isinstance(data, str):
            data = data.encode()
        nonce = _urandom(NONCE_SIZE)
        header = self._header
        aad = header + associated_data if associated_data else header
        return header + nonce + self._aead.encrypt(nonce, data, aad)

    def encrypt_chunked(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Like :meth:`encrypt` (same envelope), for very large payloads in a thread.

        pyca's one-shot AES-GCM holds the GIL for the whole call (55 ms for 64 MiB), which
        would stall an event loop even from a worker thread. This runs the same GCM in
        1 MiB steps, so other threads get the GIL between steps.
        """
        if isinstance(data, str):
            data = data.encode()
        nonce = _urandom(NONCE_SIZE)
        header = self._header
        aad = header + associated_data if associated_data else header
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        view = memoryview(data)
        parts = [header, nonce]
        parts.extend(encryptor.update(view[i : i + STEP]) for i in range(0, len(view), STEP))
        parts.append(encryptor.finalize())
        parts.append(encryptor.tag)
        return b"".join(parts)

    def _decrypt_chunked(self, nonce: memoryview, body: memoryview, aad: bytes) -> bytes:
        if len(body) < TAG_SIZE:
            raise InvalidTag
        decryptor = Cipher(
            algorithms.AES(self._key), modes.GCM(bytes(nonce), bytes(body[-TAG_SIZE:]))
        ).decryptor()
        decryptor.authenticate_additional_data(aad)
        ciphertext = body[:-TAG_SIZE]
        parts = [
            decryptor.update(ciphertext[i : i + STEP]) for i in range(0, len(ciphertext), STEP)
        ]
        decryptor.finalize()  # checks the tag: nothing is returned unless it matches
        return b"".join(parts)

    def envelope_size(self, plaintext_size: int) -> int:
        """Return the size of the envelope of a ``plaintext_size``-byte message."""
        return len(self._header) + NONCE_SIZE + plaintext_size + TAG_SIZE

    def encrypt_into(
        self, data: bytes, buffer: bytearray | memoryview, associated_data: bytes = b""
    ) -> int:
        """Write the envelope of ``data`` into ``buffer``; return the bytes written.

        For large payloads: :meth:`encrypt` must copy the ciphertext once to prepend the
        header to an immutable ``bytes``, this writes it in place (as pyca's own
        ``encrypt_into``). ``buffer`` must hold :meth:`envelope_size` bytes.
        """
        header = self._header
        hl = len(header)
        size = hl + NONCE_SIZE + len(data) + TAG_SIZE
        if len(buffer) < size:
            raise ValueError(f"buffer must hold at least {size} bytes")
        nonce = os.urandom(NONCE_SIZE)
        view = memoryview(buffer)
        view[:hl] = header
        view[hl : hl + NONCE_SIZE] = nonce
        aad = header + associated_data if associated_data else header
        self._aead.encrypt_into(nonce, data, aad, view[hl + NONCE_SIZE : size])
        return size

    def _encrypt(self, data: bytes | str, associated_data: bytes, nonce: bytes) -> bytes:
        # Private: tests and the vector generator inject the nonce here.
        if isinstance(data, str):
            data = data.encode()
        header = self._header
        aad = header + associated_data if associated_data else header
        return header + nonce + self._aead.encrypt(nonce, data, aad)
