"""The one driver loop between an anyio byte stream and a websockets Sans-I/O protocol.

Shared by the server and the client, so asyncio and trio run the same code. Read →
feed the protocol → flush what it wants sent → hand events to the caller. Every stream
error becomes "end of input" for the protocol; nothing half-handled leaks out.
"""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["STREAM_ERRORS", "WSConnection"]

#: Everything anyio raises when the other side is gone or the stream is unusable.
STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)

_READ_SIZE = 65536


class WSConnection:
    """A websockets protocol object driven over an anyio byte stream."""

    def __init__(
        self, stream: anyio.abc.ByteStream, protocol: ServerProtocol | ClientProtocol
    ) -> None:
        self.stream = stream
        self.protocol = protocol
        # A reader (pongs, close echoes) and a pusher share the stream: one writer at a time.
        self._write_lock = anyio.Lock()
        self._eof_sent = False

    async def flush(self) -> None:
        """Send everything the protocol has queued; stream errors mean the peer is gone."""
        chunks = self.protocol.data_to_send()
        if not chunks:
            return
        async with self._write_lock:
            for chunk in chunks:
                if chunk:
                    await self.stream.send(chunk)
                elif not self._eof_sent:
                    # An empty chunk means "half-close now". TLSStream cannot half-close
                    # (send_eof is not implemented): its close happens in aclose().
                    self._eof_sent = True
                    if not isinstance(self.stream, TLSStream):
                        await self.stream.send_eof()

    async def send_raw(self, data: bytes) -> None:
        """Write pre-serialised frame bytes (the per-tick push, encoded once for all)."""
        async with self._write_lock:
            await self.stream.send(data)

    async def receive(self) -> bool:
        """Read once and feed the protocol; return False at end of input.

        The caller then reads ``protocol.events_received()``.
        """
        try:
            data = await self.stream.receive(_READ_SIZE)
        except STREAM_ERRORS:
            self.protocol.receive_eof()
            return False
        self.protocol.receive_data(data)
        # Flush at once: pongs and close echoes must leave even if nobody sends later.
        try:
            await self.flush()
        except STREAM_ERRORS:
            self.protocol.receive_eof()
            return False
        return True

    async def close(self, code: int, reason: str, timeout: float = 2.0) -> None:
        """Start the closing handshake, wait (bounded) for the peer's echo, then close."""
        with anyio.move_on_after(timeout, shield=True):
            try:
                if self.protocol.state is State.OPEN:
                    self.protocol.send_close(code, reason)
                    await self.flush()
                while self.protocol.state is not State.CLOSED:
                    if not await self.receive():
                        break
                    self.protocol.events_received()
            except STREAM_ERRORS:
                pass
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream without any closing handshake (the peer is gone or stalled)."""
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(1):
                    await self.stream.aclose()
            except STREAM_ERRORS:
                pass
        # move_on_after may leave a TLS close_notify unsent: make sure the socket is freed.
        await anyio.aclose_forcefully(self.stream)
