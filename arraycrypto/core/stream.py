"""Envelope v2 streams: the STREAM construction over AES-256-GCM (PROTOCOL.md, 3a).

A stream is a v2 header (mode 2: segment size and a fresh random salt), then segments:
the plaintext is cut into segments of exactly ``2**shift`` bytes except the last, which
holds 1 to ``2**shift`` bytes (0 only when the whole plaintext is empty). Segment ``i``
is sealed with AES-256-GCM under the stream's own payload key, with the nonce
``u88(i) || u8(last)`` and the whole header (plus any associated data) as associated
data. So a reordered, duplicated, dropped or added segment, a stream cut at a segment
boundary and any changed header byte all fail authentication (Hoang, Reyhanitabar,
Rogaway and Vizár's STREAM, as age and Tink use it).

Sans-I/O: :class:`StreamEncryptor` and :class:`StreamDecryptor` take bytes and hand
bytes back; they never read, write or look at a clock. The decryptor releases a
segment's plaintext only after its tag verified, and :meth:`StreamDecryptor.finish`
fails closed on a truncated stream. Drivers (files, anyio streams) are in
``arraycrypto.streaming``.
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn, Protocol, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .envelope2 import (
    MAX_HEADER_SIZE,
    MODE_STREAM,
    HeaderV2,
    NowRequiredError,
    check_time,
    header_length,
    parse_header,
    v1_form,
)
from .exceptions import DecryptionError, SnapshotError
from .keys import TAG_SIZE, payload_key

__all__ = ["MAX_SEGMENTS", "Buffer", "StreamDecryptor", "StreamEncryptor", "StreamKeys"]

#: What the streams accept and write into (``collections.abc.Buffer`` is Python 3.12+).
Buffer: TypeAlias = bytes | bytearray | memoryview

#: Segment indexes are below 2**32 (the nonce's counter): 256 TiB at 64 KiB segments.
MAX_SEGMENTS: Final = 2**32
_NONCE = struct.Struct(">7xIB")  # u88 big-endian index (< 2**32), then the last flag
_nonce = _NONCE.pack


class StreamKeys(Protocol):
    """Where a decryptor finds a stream's key: a :class:`~arraycrypto.Keyring`."""

    def stream_key(self, header: bytes) -> bytes:
        """The stream key of the snapshot an envelope v1 header names, once verified.

        Raises the opaque DecryptionError if no key of the keyring signed it.
        """
        ...


def _bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format in ("B", "b", "c") and view.ndim == 1 else view.cast("B")


class StreamEncryptor:
    """Seals a stream segment by segment; feed plaintext, write out what it returns.

    Obtain one from :meth:`SnapshotCipher.stream_encryptor`. Call :meth:`update` (or
    :meth:`update_into`) with plaintext as it comes, in pieces of any size, and write
    every byte it returns, in order; then call :meth:`finish` once and write that too.
    It holds back at most one segment (it cannot know a segment is the last until the
    input ends). Memory stays at about one segment whatever the stream's size.
    """

    __slots__ = (
        "_aad",
        "_aead",
        "_count",
        "_done",
        "_pending",
        "_started",
        "header",
        "segment_size",
    )

    def __init__(
        self, header: bytes, key: bytes, associated_data: bytes, segment_size: int
    ) -> None:
        # Private: built by SnapshotCipher.stream_encryptor (tests inject the salt there).
        self.header = header
        self.segment_size = segment_size
        self._aad = header + associated_data
        self._aead = AESGCM(key)
        self._pending = bytearray()
        self._count = 0
        self._started = False
        self._done = False

    def __repr__(self) -> str:
        return f"StreamEncryptor(segment_size={self.segment_size}, segments={self._count})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("StreamEncryptor holds a key and cannot be pickled")

    def output_limit(self, size: int) -> int:
        """Return the most bytes :meth:`update_into` can write for ``size`` input bytes.

        An upper bound whatever the encryptor holds back, so a driver can size one
        output buffer once for its read size.
        """
        segments = (size + self.segment_size - 1) // self.segment_size
        return len(self.header) + segments * (self.segment_size + TAG_SIZE)

    def update(self, data: Buffer) -> bytes:
        """Return the ciphertext that ``data`` completes (the header first, then segments)."""
        view = _bytes_view(data)
        out = bytearray(self.output_limit(len(view)))
        written = self.update_into(view, out)
        return bytes(memoryview(out)[:written])

    def update_into(self, data: Buffer, out: Buffer) -> int:
        """Write the ciphertext that ``data`` completes into ``out``; return its length.

        ``out`` must hold :meth:`output_limit` bytes. No copy of full segments is made:
        each is sealed from ``data`` straight into ``out``.
        """
        if self._done:
            raise ValueError("finish() was called: the stream is complete")
        view = _bytes_view(data)
        dest = _bytes_view(out)
        if len(dest) < self.output_limit(len(view)):
            raise ValueError("out is smaller than output_limit(len(data))")
        size = self.segment_size
        pending = self._pending
        written = 0
        if not self._started:
            written = len(self.header)
            dest[:written] = self.header
            self._started = True
        pos = 0
        if pending:
            if len(pending) + len(view) <= size:
                pending += view  # may still be the last segment
                return written
            pos = size - len(pending)
            pending += view[:pos]
            written += self._seal(pending, dest[written : written + size + TAG_SIZE])
            pending.clear()
        end = len(view)
        while end - pos > size:  # more follows, so this segment is not the last
            written += self._seal(view[pos : pos + size], dest[written : written + size + TAG_SIZE])
            pos += size
        pending += view[pos:]
        return written

    def _seal(self, segment: Buffer, dest: memoryview) -> int:
        if self._count >= MAX_SEGMENTS - 1:  # the last index is kept for the last segment
            raise ValueError("stream too long for its segment size")
        self._aead.encrypt_into(_nonce(self._count, 0), segment, self._aad, dest)
        self._count += 1
        return len(dest)

    def finish(self) -> bytes:
        """Seal the last segment and return it (after the header, if nothing was sent yet)."""
        if self._done:
            raise ValueError("finish() was called already")
        self._done = True
        head = b"" if self._started else self.header
        self._started = True
        last = self._aead.encrypt(_nonce(self._count, 1), bytes(self._pending), self._aad)
        self._pending = bytearray()
        self._count += 1
        return head + last


class StreamDecryptor:
    """Opens a stream segment by segment; feed ciphertext, use only what it returns.

    Obtain one from :meth:`Keyring.stream_decryptor`. Feed the ciphertext in pieces of
    any size to :meth:`update` (or :meth:`update_into`); each call returns the plaintext
    of the segments that have verified, nothing else. :meth:`finish` verifies the last
    segment and raises :class:`DecryptionError` if the stream was cut short; until it
    returns, the plaintext so far is a prefix of the sender's, never more nor other.

    Every failure to authenticate is the one opaque :class:`DecryptionError`, after
    which the decryptor refuses further input. The time rules (``now_ms``, ``ttl``,
    ``max_drift``, the sender's ``expires_at``) are applied once the first segment
    authenticated, before any plaintext is released.
    """

    __slots__ = (
        "_aad",
        "_aead",
        "_associated_data",
        "_count",
        "_failed",
        "_finished",
        "_keyring",
        "_max_drift",
        "_now_ms",
        "_pending",
        "_ttl",
        "_unit",
        "header",
    )

    def __init__(
        self,
        keyring: StreamKeys,
        associated_data: bytes = b"",
        *,
        now_ms: int | None = None,
        ttl: float | None = None,
        max_drift: float = 60.0,
    ) -> None:
        if ttl is not None and now_ms is None:
            raise TypeError("ttl needs now_ms: pass the current time in milliseconds")
        self._keyring = keyring
        self._associated_data = associated_data
        self._now_ms = now_ms
        self._ttl = ttl
        self._max_drift = max_drift
        #: The parsed header once it has arrived (unauthenticated until a segment verified).
        self.header: HeaderV2 | None = None
        self._aad = b""
        self._aead: AESGCM | None = None
        self._unit = 0  # ciphertext bytes of a full segment
        self._pending = bytearray()
        self._count = 0
        self._failed = False
        self._finished = False

    def __repr__(self) -> str:
        return f"StreamDecryptor(segments={self._count}, failed={self._failed})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("StreamDecryptor holds a key and cannot be pickled")

    @property
    def segment_size(self) -> int | None:
        """The plaintext bytes of a full segment, once the header has arrived."""
        return self._unit - TAG_SIZE if self._unit else None

    def output_limit(self, size: int) -> int:
        """Return the most bytes :meth:`update_into` can write for ``size`` input bytes.

        An upper bound whatever the decryptor holds back, once the header has arrived
        (before that, ``size``: header bytes yield no plaintext).
        """
        return size + self._unit

    def update(self, data: Buffer) -> bytes:
        """Return the plaintext of every segment that ``data`` completes and that verified."""
        view = _bytes_view(data)
        out = bytearray(self.output_limit(len(view)))
        written = self.update_into(view, out)
        return bytes(memoryview(out)[:written])

    def update_into(self, data: Buffer, out: Buffer) -> int:
        """Write the verified plaintext that ``data`` completes into ``out``; return its length.

        ``out`` must hold :meth:`output_limit` bytes. Bytes of ``out`` past the returned
        length are unspecified (a failing segment's region is wiped before raising).
        """
        self._check_usable()
        view = _bytes_view(data)
        dest = _bytes_view(out)
        if len(dest) < self.output_limit(len(view)):
            raise ValueError("out is smaller than output_limit(len(data))")
        pos = 0
        if self._aead is None:
            pos = self._read_header(view)
            if self._aead is None:
                return 0
        unit = self._unit
        pending = self._pending
        written = 0
        if pending:
            if len(pending) + len(view) - pos <= unit:
                pending += view[pos:]  # may still be the last segment
                return 0
            take = unit - len(pending)
            pending += view[pos : pos + take]
            pos += take
            written += self._open(pending, dest[written : written + unit - TAG_SIZE], 0)
            pending.clear()
        end = len(view)
        while end - pos > unit:
            segment = view[pos : pos + unit]
            written += self._open(segment, dest[written : written + unit - TAG_SIZE], 0)
            pos += unit
        pending += view[pos:]
        return written

    def finish(self) -> bytes:
        """Verify the last segment and return its plaintext; DecryptionError if cut short."""
        self._check_usable()
        self._finished = True
        pending = self._pending
        # A stream ends with a last segment of 1..size bytes, or 0 if it is the only one.
        shortest = TAG_SIZE if self._count == 0 else TAG_SIZE + 1
        if self._aead is None or len(pending) < shortest:
            self._failed = True
            raise DecryptionError
        out = bytearray(len(pending) - TAG_SIZE)
        self._open(pending, memoryview(out), 1)
        self._pending = bytearray()
        return bytes(out)

    def _check_usable(self) -> None:
        if self._failed:
            raise DecryptionError
        if self._finished:
            raise ValueError("finish() was called already")

    def _read_header(self, view: memoryview) -> int:
        """Take header bytes from ``view``; once whole, verify the snapshot and derive the key.

        Return how many bytes of ``view`` were header bytes.
        """
        head = self._pending
        before = len(head)
        head += view[: MAX_HEADER_SIZE - before]  # a header is never longer
        try:
            size = header_length(head)
            if size is None or len(head) < size:
                return len(head) - before
            header = parse_header(head)
            if header.mode != MODE_STREAM:
                raise ValueError("not a stream")
        except ValueError:
            self._failed = True
            raise DecryptionError from None
        raw = bytes(head[:size])
        try:  # the snapshot signature (a cache hit for a snapshot seen before)
            stream_key = self._keyring.stream_key(v1_form(raw[: 42 + len(header.signature)]))
        except DecryptionError:
            self._failed = True
            raise
        key = payload_key(stream_key, header.salt)
        self.header = header
        self._aad = raw + self._associated_data
        self._aead = AESGCM(key)
        self._unit = (1 << header.segment_shift) + TAG_SIZE
        self._pending = bytearray()
        return size - before

    def _open(self, segment: Buffer, dest: memoryview, last: int) -> int:
        assert self._aead is not None
        assert self.header is not None
        if self._count >= MAX_SEGMENTS:
            self._failed = True
            raise DecryptionError
        try:
            self._aead.decrypt_into(_nonce(self._count, last), segment, self._aad, dest)
        except InvalidTag:
            self._failed = True
            dest[:] = bytes(len(dest))  # pyca wrote unverified plaintext there: wipe it
            raise DecryptionError from None
        if self._count == 0:  # the header is authentic now: apply the time rules
            try:
                check_time(
                    self.header.timestamp,
                    self.header.expires_at,
                    self._now_ms,
                    self._ttl,
                    self._max_drift,
                )
            except (SnapshotError, NowRequiredError):
                self._failed = True
                dest[:] = bytes(len(dest))
                raise
        self._count += 1
        return len(dest)
