"""Envelope v2: the header and the time rules (PROTOCOL.md, 3a).

A v2 envelope starts with the v1 header with its first byte set to 2 (so the snapshot
signature still covers ``u8(1) || bytes 1..41``), then a mode byte and the sender's
``expires_at``. Mode 1 is one AES-256-GCM message (like v1, under its own key); mode 2
is a stream of segments (:mod:`.stream`).

Pure: no I/O, no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from .exceptions import ExpiredError, SnapshotError
from .isotime import iso8601_utc
from .keys import (
    ENVELOPE_V2,
    MAX_SIGNATURE_SIZE,
    MIN_SIGNATURE_SIZE,
    SNAPSHOT_BODY_SIZE,
    Snapshot,
    unpack_snapshot_body,
)

__all__ = [
    "DEFAULT_SEGMENT_SHIFT",
    "MAX_SEGMENT_SHIFT",
    "MAX_TIME_MS",
    "MIN_SEGMENT_SHIFT",
    "MODE_SINGLE",
    "MODE_STREAM",
    "SALT_SIZE",
    "HeaderV2",
    "NowRequiredError",
    "check_expires_at",
    "check_time",
    "header_length",
    "parse_header",
]

MODE_SINGLE: Final = 1
MODE_STREAM: Final = 2
SALT_SIZE: Final = 16
#: Segment size is ``2 ** shift`` plaintext bytes: 1 KiB to 16 MiB, 64 KiB by default.
MIN_SEGMENT_SHIFT: Final = 10
MAX_SEGMENT_SHIFT: Final = 24
DEFAULT_SEGMENT_SHIFT: Final = 16
#: ``expires_at`` is 1 .. 2^53 - 1 milliseconds (0 on the wire: no expiry), as timestamps.
MAX_TIME_MS: Final = 2**53 - 1

_SIG_LEN_OFFSET: Final = SNAPSHOT_BODY_SIZE  # 41
_unpack_u64 = struct.Struct(">Q").unpack_from
_MODE_EXPIRY = struct.Struct(">BQ")  # mode, expires_at: right after the signature
_STREAM_TAIL = struct.Struct(f">B{SALT_SIZE}s")  # segment shift, salt
SINGLE_EXTRA: Final = _MODE_EXPIRY.size  # 9
STREAM_EXTRA: Final = _MODE_EXPIRY.size + _STREAM_TAIL.size  # 26
MAX_HEADER_SIZE: Final = SNAPSHOT_BODY_SIZE + 1 + MAX_SIGNATURE_SIZE + STREAM_EXTRA  # 100


class NowRequiredError(TypeError):
    """Raised when a ciphertext carries an expiry and the caller gave no ``now_ms``.

    The caller's mistake, not the ciphertext's: the pure core never reads the clock, so
    it cannot enforce an expiry it is not given the time for, and it refuses to skip it.
    """


class HeaderV2(msgspec.Struct, frozen=True):
    """The parsed header of an envelope v2: public, and unauthenticated until decrypted."""

    key_id: bytes
    tick: int
    timestamp: int
    seed: bytes
    signature: bytes
    mode: int
    expires_at: int  # 0: none
    segment_shift: int  # 0 for single
    salt: bytes  # b"" for single
    size: int  # header bytes

    def snapshot(self) -> Snapshot:
        """Return the snapshot the header names (its signature not yet checked)."""
        return Snapshot(self.tick, self.seed, self.timestamp, self.key_id, self.signature)


def check_expires_at(expires_at: int) -> int:
    """Return ``expires_at`` if it is a valid expiry (ms, 1 .. 2^53 - 1); else ValueError."""
    if type(expires_at) is not int or not 0 < expires_at <= MAX_TIME_MS:
        raise ValueError("expires_at must be milliseconds since the epoch, 1 .. 2**53 - 1")
    return expires_at


def header_length(prefix: bytes | bytearray | memoryview) -> int | None:
    """Return the length of the v2 header that ``prefix`` starts, or None if too short to tell.

    Raises ValueError if the bytes cannot start a v2 header (version, signature length,
    mode or segment size out of range).
    """
    if not prefix:
        return None
    if prefix[0] != ENVELOPE_V2:
        raise ValueError("not an envelope v2")
    if len(prefix) <= _SIG_LEN_OFFSET:
        return None
    sig_len = prefix[_SIG_LEN_OFFSET]
    if not MIN_SIGNATURE_SIZE <= sig_len <= MAX_SIGNATURE_SIZE:
        raise ValueError("signature length out of range")
    mode_at = SNAPSHOT_BODY_SIZE + 1 + sig_len
    if len(prefix) <= mode_at:
        return None
    mode = prefix[mode_at]
    if mode == MODE_SINGLE:
        return mode_at + SINGLE_EXTRA
    if mode == MODE_STREAM:
        size = mode_at + STREAM_EXTRA
        shift_at = mode_at + SINGLE_EXTRA
        if len(prefix) > shift_at and not (
            MIN_SEGMENT_SHIFT <= prefix[shift_at] <= MAX_SEGMENT_SHIFT
        ):
            raise ValueError("segment size out of range")
        return size
    raise ValueError("unknown envelope v2 mode")


def parse_header(data: bytes | bytearray | memoryview) -> HeaderV2:
    """Parse the v2 header at the start of ``data`` (no key needed, nothing verified).

    Raises ValueError if ``data`` is too short or the header is malformed.
    """
    size = header_length(data)
    if size is None or len(data) < size:
        raise ValueError("too short for an envelope v2 header")
    head = bytes(data[:size])
    _, key_id, tick, timestamp, seed = unpack_snapshot_body(head)
    sig_len = head[_SIG_LEN_OFFSET]
    sig_end = SNAPSHOT_BODY_SIZE + 1 + sig_len
    mode, expires_at = _MODE_EXPIRY.unpack_from(head, sig_end)
    shift, salt = 0, b""
    if mode == MODE_STREAM:
        shift, salt = _STREAM_TAIL.unpack_from(head, sig_end + SINGLE_EXTRA)
    return HeaderV2(
        key_id=key_id,
        tick=tick,
        timestamp=timestamp,
        seed=seed,
        signature=head[SNAPSHOT_BODY_SIZE + 1 : sig_end],
        mode=mode,
        expires_at=expires_at,
        segment_shift=shift,
        salt=salt,
        size=size,
    )


def v1_form(header_prefix: bytes) -> bytes:
    """Return the v1 header (``signed_bytes || L || signature``) a v2 header starts with."""
    return b"\x01" + header_prefix[1:]


def check_time(
    timestamp: int,
    expires_at: int,
    now_ms: int | None,
    ttl: float | None,
    max_drift: float,
) -> None:
    """Apply the time rules to an authentic ciphertext (section 3a, "Time").

    Raises :class:`ExpiredError` past ``expires_at + max_drift``, :class:`SnapshotError`
    if dated beyond ``max_drift`` in the future or older than ``ttl``, and
    :class:`NowRequiredError` if there is an expiry but no ``now_ms`` to check it with.
    """
    if now_ms is None:
        if expires_at:
            raise NowRequiredError(
                f"this ciphertext expires at {iso8601_utc(expires_at)}: pass now_ms"
                " (milliseconds since the epoch) so decrypt can enforce it"
            )
        return
    drift_ms = max_drift * 1000
    if timestamp - now_ms > drift_ms:
        raise SnapshotError("ciphertext is dated in the future beyond max_drift")
    if ttl is not None and now_ms - timestamp > ttl * 1000:
        raise SnapshotError("ciphertext is older than its ttl")
    if expires_at and now_ms - expires_at > drift_ms:
        raise ExpiredError(expires_at)
