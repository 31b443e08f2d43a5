"""The one driver loop: write → read → feed → events, between a stream and a connection.

Shared by the server, the client and the test harness, so asyncio and trio, plain TCP
and TLS all run the same loop. The connection object (pure, in ``arraycrypto.core``)
decides everything; this only moves bytes and time:

1. write what the connection wants sent (an empty chunk means half-close);
2. stop if the connection says it is finished;
3. read once, bounded by the connection's deadline if it has one;
4. feed the bytes (or the end of input, or the deadline) and hand the events on.

Every stream error is the end of input for the connection: nothing half-handled leaks
out. Closing the stream is the caller's (it may have more to say first).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import anyio

from .sockets import STREAM_ERRORS

__all__ = ["Driver", "SansIOConnection", "Stream"]

E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)

_READ_SIZE = 65536


class Stream(Protocol):
    """The stream surface the driver needs (SocketStream, ServerTLSStream, anyio streams)."""

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        """Return the next bytes; raise anyio.EndOfStream at the end of input."""

    async def send(self, item: bytes) -> None:
        """Send bytes after everything sent before them."""

    async def send_eof(self) -> None:
        """Half-close: FIN, or close_notify on TLS (a no-op where the stream cannot)."""


class SansIOConnection(Protocol[E_co]):
    """What a connection object offers its driver (server side, client side, test peer)."""

    @property
    def deadline(self) -> float | None:
        """When to call ``timeout`` on the driver's clock; None for no deadline."""

    @property
    def finished(self) -> bool:
        """Whether nothing more is to be read or written: the transport may close."""

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order; an empty chunk means half-close now."""

    def receive_data(self, data: bytes, now: float) -> Sequence[E_co]:
        """Feed bytes; return the events they caused."""

    def receive_eof(self, now: float) -> Sequence[E_co]:
        """Feed the end of input; return the events it caused."""

    def timeout(self, now: float) -> Sequence[E_co]:
        """Report that the deadline passed; return the events it caused."""


class Driver(Generic[E]):
    """Runs one connection object over one stream.

    ``clock`` is the clock the connection's deadlines are on (seconds).
    """

    __slots__ = ("_eof_received", "_eof_sent", "clock", "conn", "stream")

    def __init__(
        self, stream: Stream, conn: SansIOConnection[E], clock: Callable[[], float]
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.clock = clock
        self._eof_sent = False
        self._eof_received = False

    @property
    def eof_received(self) -> bool:
        """Whether the end of input was fed to the connection."""
        return self._eof_received

    async def flush(self) -> None:
        """Write everything the connection has queued (stream errors propagate)."""
        chunks = self.conn.data_to_send()
        if not chunks:
            return
        eof = not chunks[-1]  # an empty chunk only ever comes last
        data = b"".join(chunks)
        if data:
            await self.stream.send(data)
        if eof and not self._eof_sent:
            self._eof_sent = True
            await self.stream.send_eof()

    async def step(self) -> Sequence[E] | None:
        """Write, then read once and feed; return the events, or None once finished."""
        conn = self.conn
        try:
            await self.flush()
        except STREAM_ERRORS:
            return self.end_of_input()  # the peer is gone
        if conn.finished or self._eof_received:
            return None
        deadline = conn.deadline
        data = b""
        # The read is written out here rather than in a helper: this frame is where
        # every idle connection waits, and each extra suspended frame costs memory.
        try:
            if deadline is None:
                data = await self.stream.receive(_READ_SIZE)
            else:
                with anyio.move_on_after(deadline - self.clock()) as scope:
                    data = await self.stream.receive(_READ_SIZE)
                if scope.cancelled_caught:
                    return conn.timeout(self.clock())
        except STREAM_ERRORS:
            data = b""
        if data:
            return conn.receive_data(data, self.clock())
        # Outside any except block on purpose: websockets keeps the EOFError it raises
        # (parser_exc), and raised inside a handler it would chain the stream error,
        # whose traceback holds this frame and so the connection (a reference cycle).
        return self.end_of_input()

    def end_of_input(self) -> Sequence[E]:
        """Feed the end of input, once (also for a caller whose own write failed)."""
        # Once only: after the end of input there is nothing more to read.
        if self._eof_received:
            return ()
        self._eof_received = True
        return self.conn.receive_eof(self.clock())

    async def run(self, handle: Callable[[Sequence[E]], None]) -> None:
        """Step until the connection is finished, handing every batch of events on."""
        while (events := await self.step()) is not None:
            if events:
                handle(events)
