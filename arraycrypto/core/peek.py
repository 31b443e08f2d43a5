"""Key-free inspection of an envelope: what its header says, with no secret at all.

Everything here is read from bytes that anyone can change: nothing is authenticated
until the envelope is decrypted with the secret. :func:`describe` says so in its text.

Pure: no I/O, no clock (``now_ms`` is passed in to say how old a ciphertext is).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection
from typing import Final

import msgspec

from .envelope2 import MODE_STREAM, parse_header
from .isotime import format_age, iso8601_utc
from .keys import (
    ENVELOPE_V2,
    ENVELOPE_VERSION,
    MAX_SIGNATURE_SIZE,
    MIN_SIGNATURE_SIZE,
    NONCE_SIZE,
    SNAPSHOT_BODY_SIZE,
    TAG_SIZE,
    unpack_snapshot_body,
)

__all__ = ["NOT_AUTHENTICATED", "EnvelopeInfo", "describe", "diagnose", "peek"]

NOT_AUTHENTICATED: Final = (
    "NOT AUTHENTICATED: anyone can write these fields; nothing here is verified until"
    " the envelope is decrypted with the secret."
)


class EnvelopeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What an envelope's header claims, unverified (see :data:`NOT_AUTHENTICATED`).

    Sizes are in bytes; ``None`` where unknown (the total size was not given) or not
    applicable. ``problem`` names an inconsistency, e.g. a stream cut short.
    """

    version: int
    mode: str  # "single" or "stream"
    key_id: bytes
    tick: int
    timestamp: int  # ms since the epoch: when the snapshot was made
    expires_at: int | None  # ms since the epoch, or None: no expiry
    signature_size: int
    header_size: int  # bytes before the nonce (single) or the first segment (stream)
    segment_size: int | None = None
    total_size: int | None = None
    plaintext_size: int | None = None
    segments: int | None = None
    problem: str | None = None


def peek(data: bytes | bytearray | memoryview, *, total_size: int | None = None) -> EnvelopeInfo:
    """Return what the header at the start of ``data`` claims; no key needed.

    ``data`` is the envelope, or at least its first 100 bytes with ``total_size`` its
    full length (for a large stream read from a file). Raises ValueError if ``data``
    does not start like an envelope.
    """
    head = bytes(data[:128])
    total = len(data) if total_size is None else total_size
    if not head or head[0] not in (ENVELOPE_VERSION, ENVELOPE_V2):
        raise ValueError("not an arraycrypto envelope (unknown first byte)")
    if head[0] == ENVELOPE_V2:
        h = parse_header(head)
        info = EnvelopeInfo(
            version=2,
            mode="stream" if h.mode == MODE_STREAM else "single",
            key_id=h.key_id,
            tick=h.tick,
            timestamp=h.timestamp,
            expires_at=h.expires_at or None,
            signature_size=len(h.signature),
            header_size=h.size,
            segment_size=1 << h.segment_shift if h.mode == MODE_STREAM else None,
            total_size=total,
        )
        if h.mode == MODE_STREAM:
            return _stream_sizes(info, total)
        return _single_sizes(info, total)
    if len(head) <= SNAPSHOT_BODY_SIZE:
        raise ValueError("too short for an envelope header")
    sig_len = head[SNAPSHOT_BODY_SIZE]
    if not MIN_SIGNATURE_SIZE <= sig_len <= MAX_SIGNATURE_SIZE:
        raise ValueError("signature length out of range")
    _, key_id, tick, timestamp, _ = unpack_snapshot_body(head)
    info = EnvelopeInfo(
        version=1,
        mode="single",
        key_id=key_id,
        tick=tick,
        timestamp=timestamp,
        expires_at=None,
        signature_size=sig_len,
        header_size=SNAPSHOT_BODY_SIZE + 1 + sig_len,
        total_size=total,
    )
    return _single_sizes(info, total)


def _single_sizes(info: EnvelopeInfo, total: int) -> EnvelopeInfo:
    body = total - info.header_size - NONCE_SIZE - TAG_SIZE
    if body < 0:
        return msgspec.structs.replace(info, problem="too short: cut inside the nonce or tag")
    return msgspec.structs.replace(info, plaintext_size=body)


def _stream_sizes(info: EnvelopeInfo, total: int) -> EnvelopeInfo:
    assert info.segment_size is not None
    unit = info.segment_size + TAG_SIZE
    body = total - info.header_size
    if body < TAG_SIZE:
        return msgspec.structs.replace(info, problem="too short: no last segment")
    segments = -(-body // unit)
    last = body - (segments - 1) * unit
    if last < TAG_SIZE or (last == TAG_SIZE and segments > 1):
        # a last segment holds 1..segment_size bytes (0 only in an empty stream)
        return msgspec.structs.replace(
            info, segments=segments, problem="cut short or extended: no valid last segment"
        )
    return msgspec.structs.replace(
        info, segments=segments, plaintext_size=body - segments * TAG_SIZE
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} B ({n / scale:.1f} {unit})"
    return f"{n} B"


def describe(info: EnvelopeInfo, now_ms: int) -> str:
    """Return ``info`` as lines of text for a person, ending with the warning."""
    lines = [
        f"envelope     v{info.version}, {info.mode}",
        f"key id       {info.key_id.hex()}",
        f"tick         {info.tick}",
        f"created      {iso8601_utc(info.timestamp)} ({format_age(now_ms - info.timestamp)})",
    ]
    if info.expires_at is None:
        lines.append("expires      never (no expiry set by the sender)")
    else:
        state = "expired" if now_ms > info.expires_at else "expires"
        when = format_age(now_ms - info.expires_at)
        lines.append(f"expires      {iso8601_utc(info.expires_at)} ({state} {when})")
    lines.append(f"header       {info.header_size} B (signature {info.signature_size} B)")
    if info.segment_size is not None:
        count = f", {info.segments} segment(s)" if info.segments is not None else ""
        lines.append(f"segments     {_size(info.segment_size)} each{count}")
    if info.total_size is not None:
        lines.append(f"ciphertext   {_size(info.total_size)}")
    if info.plaintext_size is not None:
        lines.append(f"plaintext    {_size(info.plaintext_size)}")
    if info.problem is not None:
        lines.append(f"problem      {info.problem}")
    lines.append(NOT_AUTHENTICATED)
    return "\n".join(lines)


_BASE64_TEXT: Final = re.compile(rb"[A-Za-z0-9+/_=-]+")
_ARMOR_LINE: Final = re.compile(rb"-----BEGIN [ -~]{1,64}?-----")
_TEXT_CONTROLS: Final = frozenset(b"\t\n\r\f")


def diagnose(head: bytes | bytearray | memoryview, key_ids: Collection[bytes]) -> str | None:
    """Say why ``head`` cannot be decrypted by a keyring of ``key_ids``, if it can be told.

    ``head`` is the start of the input (its first kilobyte is plenty). Only what needs
    no secret is told: no input, input that is not an envelope at all (base64 of one,
    other text, another format), and an envelope made under a key id the keyring lacks
    (key ids are public, in every header). Returns None once the header is recognised
    and its key is at hand: from there on, every failure is the one opaque
    :class:`~arraycrypto.DecryptionError`, which tells nothing apart. Pure.
    """
    data = bytes(head[:1024])
    if not data:
        return "empty input: there is nothing to decrypt"
    if data[0] not in (ENVELOPE_VERSION, ENVELOPE_V2):
        return f"not an arraycrypto envelope ({_not_ours(data)})"
    try:
        info = peek(data)
    except ValueError as exc:
        return f"not an arraycrypto envelope ({exc})"
    if info.key_id in key_ids:
        return None
    have = ", ".join(k.hex() for k in key_ids)
    return (
        f"made under key id {info.key_id.hex()}, which is not in this keyring (it has:"
        f" {have}): a different secret_key, or add the secret it was made with to"
        " old_secret_keys"
    )


def _not_ours(data: bytes) -> str:
    """What input that does not start with a version byte looks like instead."""
    stripped = data.strip()
    armor = _ARMOR_LINE.match(stripped)
    if armor:
        return f"it is armored text of another kind: {armor.group().decode()}"
    compact = b"".join(stripped.split())
    if len(compact) >= 8 and _BASE64_TEXT.fullmatch(compact):
        quads = compact[: len(compact) // 4 * 4]
        try:
            first = base64.b64decode(quads.replace(b"-", b"+").replace(b"_", b"/"))[:1]
        except (binascii.Error, ValueError):
            first = b""
        if first and first[0] in (ENVELOPE_VERSION, ENVELOPE_V2):
            return (
                "it looks like base64 text: decode it first (base64 -d);"
                " `encrypt --armor` makes text that decrypt reads as it is"
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data[: exc.start].decode("utf-8") if exc.start > len(data) - 4 else ""
    if text and all(c.isprintable() or ord(c) in _TEXT_CONTROLS for c in text):
        return (
            "it is text; an envelope is binary, or armored text that starts with"
            " -----BEGIN ARRAYCRYPTO MESSAGE-----"
        )
    return f"its first byte is 0x{data[0]:02x}; an envelope starts with 0x01 or 0x02"
