"""The streaming drivers: binary files (sync) and anyio byte streams, in constant memory."""

from __future__ import annotations

import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.file import FileReadStream, FileWriteStream

from arraycrypto import DecryptionError, ExpiredError, Keyring
from arraycrypto.streaming import (
    decrypt_file,
    decrypt_stream,
    encrypt_file,
    encrypt_stream,
    expires_at_ms,
    is_stream,
)

from .harness.constants import SECRET, T0
from .harness.streams import Digest, Sink, Source, pattern

RING = Keyring(SECRET)
CIPHER = RING.cipher(RING.new_snapshot(3, bytes(16), T0))
CLOCK: Callable[[], float] = lambda: T0 / 1000  # noqa: E731
BIG = 24 << 20  # large against the bound below, small enough for a 2-core CI
BOUND = 6 << 20  # what streaming may hold at once, whatever the size


class Reader:
    """A binary file that makes its content as it is read."""

    def __init__(self, size: int) -> None:
        self.read = pattern(size)


def expected_digest(size: int) -> str:
    digest = Digest()
    read = pattern(size)
    while chunk := read(1 << 16):
        digest.write(chunk)
    return digest.hash.hexdigest()


def test_round_trip_through_files(tmp_path: Path) -> None:
    data = os.urandom(3 * 65536 + 7)
    src, enc, out = tmp_path / "p", tmp_path / "c", tmp_path / "d"
    src.write_bytes(data)
    with src.open("rb") as f, enc.open("wb") as g:
        assert encrypt_file(CIPHER, f, g, b"ad", expires_in=60, clock=CLOCK) == len(data)
    token = enc.read_bytes()
    assert is_stream(token[:100]) is True
    assert RING.decrypt(token, b"ad", now_ms=T0) == data
    with enc.open("rb") as f, out.open("wb") as g:
        assert decrypt_file(RING, f, g, b"ad", clock=CLOCK) == len(data)
    assert out.read_bytes() == data


def test_decrypt_file_takes_single_shot_envelopes_too() -> None:
    for token in (CIPHER.encrypt(b"small"), CIPHER.encrypt(b"small", expires_at=T0 + 1)):
        assert is_stream(token) is False
        out = io.BytesIO()
        assert decrypt_file(RING, io.BytesIO(token), out, clock=CLOCK) == 5
        assert out.getvalue() == b"small"
    with pytest.raises(DecryptionError):
        decrypt_file(RING, io.BytesIO(b"\x07garbage"), io.BytesIO(), clock=CLOCK)


def test_the_drivers_enforce_the_senders_expiry() -> None:
    sealed = io.BytesIO()
    encrypt_file(CIPHER, io.BytesIO(b"x" * 100), sealed, expires_in=10, clock=CLOCK)
    late: Callable[[], float] = lambda: T0 / 1000 + 10 + 60 + 0.002  # noqa: E731
    with pytest.raises(ExpiredError):
        decrypt_file(RING, io.BytesIO(sealed.getvalue()), io.BytesIO(), clock=late)
    assert expires_at_ms(2.5, clock=CLOCK) == T0 + 2500
    assert expires_at_ms(expires_at=T0) == T0
    assert expires_at_ms() is None
    with pytest.raises(ValueError, match="positive"):
        expires_at_ms(0)
    with pytest.raises(TypeError, match="not both"):
        expires_at_ms(1, T0)


def test_sync_helpers_run_in_constant_memory(tmp_path: Path) -> None:
    sealed = tmp_path / "sealed"
    tracemalloc.start()
    try:
        with sealed.open("wb") as f:
            assert encrypt_file(CIPHER, Reader(BIG), f) == BIG  # type: ignore[arg-type]
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = Digest()
        with sealed.open("rb") as f:
            assert decrypt_file(RING, f, digest, clock=CLOCK) == BIG
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sealed.stat().st_size > BIG
    assert digest.hash.hexdigest() == expected_digest(BIG)
    assert enc_peak < BOUND, enc_peak
    assert dec_peak < BOUND, dec_peak


# -- async: anyio byte streams, under asyncio and trio ---------------------------------------


@pytest.mark.anyio
async def test_async_round_trip() -> None:
    data = os.urandom(200_003)
    sealed = Sink(keep=True)
    size = await encrypt_stream(
        CIPHER, Source(0, data=data), sealed, b"ad", expires_in=5, clock=CLOCK
    )
    assert size == len(data)
    token = sealed.value()
    assert RING.decrypt(token, b"ad", now_ms=T0) == data
    plain = Sink(keep=True)
    assert await decrypt_stream(RING, Source(0, data=token), plain, b"ad", clock=CLOCK) == len(data)
    assert plain.value() == data
    single = Sink(keep=True)  # a single-shot envelope is taken whole
    await decrypt_stream(RING, Source(0, data=CIPHER.encrypt(b"hi")), single, clock=CLOCK)
    assert single.value() == b"hi"


@pytest.mark.anyio
async def test_async_truncated_stream_fails_closed() -> None:
    sealed = Sink(keep=True)
    await encrypt_stream(CIPHER, Source(300_000), sealed)
    token = sealed.value()
    boundary = 84 + 2 * (65536 + 16)  # exactly two segments: a plausible cut
    plain = Sink(keep=True)
    with pytest.raises(DecryptionError):
        await decrypt_stream(RING, Source(0, data=token[:boundary]), plain, clock=CLOCK)
    read = pattern(300_000)
    assert read(65536) == plain.value()  # the verified first segment only


@pytest.mark.anyio
async def test_a_broken_source_is_never_sealed_as_a_complete_stream() -> None:
    sealed = Sink(keep=True)
    with pytest.raises(anyio.BrokenResourceError):
        await encrypt_stream(CIPHER, Source(500_000, break_after=200_000), sealed)
    with pytest.raises(DecryptionError):  # what was sent has no last segment
        RING.decrypt(sealed.value())


@pytest.mark.anyio
async def test_async_binary_files(tmp_path: Path) -> None:
    data = os.urandom(150_000)
    (tmp_path / "p").write_bytes(data)
    async with (
        await FileReadStream.from_path(tmp_path / "p") as src,
        await FileWriteStream.from_path(tmp_path / "c") as dst,
    ):
        await encrypt_stream(CIPHER, src, dst)
    async with (
        await FileReadStream.from_path(tmp_path / "c") as src,
        await FileWriteStream.from_path(tmp_path / "d") as dst,
    ):
        await decrypt_stream(RING, src, dst, clock=CLOCK)
    assert (tmp_path / "d").read_bytes() == data


@pytest.mark.anyio
async def test_async_helpers_run_in_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "sealed"
    tracemalloc.start()
    try:
        async with await FileWriteStream.from_path(path) as dst:
            assert await encrypt_stream(CIPHER, Source(BIG), dst) == BIG
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = Sink()
        async with await FileReadStream.from_path(path) as src:
            assert await decrypt_stream(RING, src, sink, clock=CLOCK) == BIG
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.digest.hash.hexdigest() == expected_digest(BIG)
    assert enc_peak < BOUND, enc_peak
    assert dec_peak < BOUND, dec_peak


class BrokenPipeAfter:
    """A binary file whose writes fail once ``limit`` bytes went through."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.size + len(data) > self.limit:
            raise BrokenPipeError("the reader went away")
        self.size += len(data)
        return len(data)


def test_a_failing_write_stops_the_stream_with_its_error() -> None:
    """Writes run in a helper thread: its error must reach the caller, never hang."""
    sink = BrokenPipeAfter(3 << 20)
    with pytest.raises(BrokenPipeError, match="went away"):
        encrypt_file(CIPHER, Reader(BIG), sink)  # type: ignore[arg-type]
    assert sink.size <= 3 << 20
    sealed = io.BytesIO()
    encrypt_file(CIPHER, Reader(8 << 20), sealed)  # type: ignore[arg-type]
    with pytest.raises(BrokenPipeError):
        decrypt_file(RING, io.BytesIO(sealed.getvalue()), BrokenPipeAfter(1 << 20), clock=CLOCK)


def test_output_comes_out_in_order_with_any_read_sizes() -> None:
    """Short reads (as from a pipe) and the writer thread keep every byte in place."""
    data = os.urandom(5 * 65536 + 99)

    class Trickle(io.BytesIO):
        def readinto(self, buffer: Any) -> int:
            view = memoryview(buffer)
            return super().readinto(view[: 1 + len(view) // 3])

    sealed = io.BytesIO()
    encrypt_file(CIPHER, Trickle(data), sealed)
    out = io.BytesIO()
    decrypt_file(RING, Trickle(sealed.getvalue()), out, clock=CLOCK)
    assert out.getvalue() == data


class Endless:
    """A source that never ends (``/dev/zero`` on stdin)."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def read(self, n: int = -1) -> bytes:
        chunk, self.first = self.first, b""
        return chunk or bytes(max(n, 1) if n > 0 else 65536)


def test_input_that_is_no_envelope_or_too_large_fails_without_reading_it_all() -> None:
    with pytest.raises(DecryptionError):  # not 1 or 2: refused at the first byte
        decrypt_file(RING, Endless(b"\x00"), io.BytesIO(), clock=CLOCK)
    with pytest.raises(DecryptionError):  # a v1 start, but larger than the limit
        decrypt_file(
            RING,
            Endless(b"\x01"),
            io.BytesIO(),
            clock=CLOCK,
            max_single_size=8 << 20,
        )


@pytest.mark.anyio
async def test_async_input_past_the_single_shot_limit_fails() -> None:
    token = CIPHER.encrypt(os.urandom(300_000))
    with pytest.raises(DecryptionError):
        await decrypt_stream(
            RING, Source(0, data=token), Sink(), clock=CLOCK, max_single_size=200_000
        )
    sink = Sink(keep=True)
    await decrypt_stream(RING, Source(0, data=token), sink, clock=CLOCK)
    assert len(sink.value()) == 300_000
