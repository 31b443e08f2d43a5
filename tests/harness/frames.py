"""The one hand-written WebSocket frame codec of the harness (RFC 6455, section 5.2).

Tests and scripts use it to send what a real client never would (``encode`` gives the
caller every field) and to read server frames without a WebSocket library
(``parse``), for clients light enough to run 10 000 in one process.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["CLOSE", "PING", "PONG", "TEXT", "close_code", "encode", "parse", "rewrite_text"]

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def encode(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A client frame, with every field under the caller's control."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _masked(payload, key)


def _masked(payload: bytes, key: bytes) -> bytes:
    # XOR as two big integers: a byte-by-byte loop cost a benchmark client 20 us a frame.
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def parse(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """Split one server frame (unmasked) off ``buffer``: (opcode, payload, rest), or None."""
    if len(buffer) < 2:
        return None
    n, offset = buffer[1] & 0x7F, 2
    if n == 126:
        if len(buffer) < 4:
            return None
        n, offset = struct.unpack(">H", buffer[2:4])[0], 4
    elif n == 127:
        if len(buffer) < 10:
            return None
        n, offset = struct.unpack(">Q", buffer[2:10])[0], 10
    if len(buffer) < offset + n:
        return None
    return buffer[0] & 0x0F, buffer[offset : offset + n], buffer[offset + n :]


def close_code(payload: bytes) -> int | None:
    """The code of a Close frame's payload (None when it carries none)."""
    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


def rewrite_text(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Apply ``change`` to every JSON text frame from the server in ``data``.

    ``data`` may start with an HTTP head (the 101 response); frames it cannot parse
    whole are passed through untouched. Used to play a relaying attacker.
    """
    head = b""
    if data.startswith(b"HTTP/"):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return data
        head, data = data[: end + 4], data[end + 4 :]
    out = b""
    while (parsed := parse(data)) is not None:
        opcode, payload, data = parsed
        if opcode == TEXT:
            message = json.loads(payload)
            change(message)
            payload = json.dumps(message).encode()
        out += _server_frame(opcode, payload)
    return head + out + data


def _server_frame(opcode: int, payload: bytes) -> bytes:
    # Server frames are unmasked.
    return encode(opcode, payload, mask=False)
