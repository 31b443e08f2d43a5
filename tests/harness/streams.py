"""Byte streams and files made up for stream tests: made-up plaintext, digests."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["Digest", "Sink", "Source", "pattern"]


def pattern(size: int, chunk: int = 1 << 16) -> Callable[[int], bytes]:
    """A deterministic plaintext of ``size`` bytes, produced piece by piece (never whole)."""
    block = hashlib.sha256(b"block").digest() * (chunk // 32)
    state = {"left": size}

    def read(n: int = -1) -> bytes:
        n = state["left"] if n < 0 else min(n, state["left"], chunk)
        state["left"] -= n
        return block[:n]

    return read


class Digest:
    """A binary file that keeps only a hash and a count of what is written."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


class Source(anyio.abc.ByteReceiveStream):
    """Sends a made-up plaintext in chunks, then ends (or breaks, if told to)."""

    def __init__(self, size: int, *, data: bytes | None = None, break_after: int = -1) -> None:
        self.read = pattern(size) if data is None else io.BytesIO(data).read
        self.sent = 0
        self.break_after = break_after

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if self.break_after >= 0 and self.sent >= self.break_after:
            raise anyio.BrokenResourceError
        chunk = self.read(max_bytes)
        if not chunk:
            raise anyio.EndOfStream
        self.sent += len(chunk)
        return chunk

    async def aclose(self) -> None:
        pass


class Sink(anyio.abc.ByteSendStream):
    """Keeps a digest (or all the bytes, if asked)."""

    def __init__(self, keep: bool = False) -> None:
        self.digest = Digest()
        self.parts: list[bytes] | None = [] if keep else None

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        self.digest.write(item)
        if self.parts is not None:
            self.parts.append(item)

    async def aclose(self) -> None:
        pass

    def value(self) -> bytes:
        assert self.parts is not None
        return b"".join(self.parts)
