"""The one driver loop between an anyio byte stream and a websockets Sans-I/O protocol.

Shared by the server and the client, so asyncio and trio run the same code. Read →
feed the protocol → flush what it wants sent → hand events to the caller. Every stream
error becomes "end of input" for the protocol; nothing half-handled leaks out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import anyio
import anyio.abc
from anyio import TypedAttributeLookupError
from anyio.abc import SocketAttribute
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
    """A websockets protocol object driven over an anyio byte stream.

    ``raw_socket`` is the socket under ``stream`` when the caller already holds it
    (the server's accept loop); otherwise it is looked up.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        protocol: ServerProtocol | ClientProtocol,
        *,
        raw_socket: socket.socket | None = None,
    ) -> None:
        self.stream = stream
        self.protocol = protocol
        # A reader (pongs, close echoes), a writer task and the fan-out's direct writes
        # share the stream: one writer at a time. A plain flag, not anyio.Lock: taking an
        # anyio.Lock costs a checkpoint and a cancel scope even when it is free, which
        # showed up as a large share of the server's per-connection CPU.
        self._writing = False
        self._write_free: anyio.Event | None = None
        self._eof_sent = False
        self._direct_sock, self._direct_transport = _direct_path(stream, raw_socket)

    @property
    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` can ever succeed on this stream (plain TCP only)."""
        return self._direct_sock is not None

    def write_now(self, data: bytes) -> int:
        """Write ``data`` synchronously if the stream is idle; return the bytes written.

        The fan-out fast path: one non-blocking ``send`` syscall, no task switch. Returns
        0 when that is not possible right now (another write in progress or buffered,
        kernel buffer full, TLS, closed): the caller then queues the data for an awaited
        send. Bytes never interleave with a send in progress.
        """
        if self._writing:
            return 0
        return self._write_direct(data)

    def _write_direct(self, data: bytes) -> int:
        sock = self._direct_sock
        if sock is None:
            return 0
        transport = self._direct_transport
        if transport is not None and (transport.is_closing() or transport.get_write_buffer_size()):
            return 0
        fd = sock.fileno()  # -1 once closed: never write to a reused descriptor
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0  # full (EAGAIN) or broken: the awaited path sees and reports it

    async def _acquire(self) -> None:
        # Free: taken at once, no checkpoint. Busy: wait for the holder's release.
        while self._writing:
            if self._write_free is None:
                self._write_free = anyio.Event()
            await self._write_free.wait()
        self._writing = True

    def _release(self) -> None:
        self._writing = False
        if self._write_free is not None:
            self._write_free.set()
            self._write_free = None

    async def _send(self, data: bytes) -> None:
        # Holding the write flag: try one non-blocking write, await only for the rest.
        sent = self._write_direct(data)
        if sent < len(data):
            await self.stream.send(data[sent:] if sent else data)

    async def flush(self) -> None:
        """Send everything the protocol has queued; stream errors mean the peer is gone."""
        chunks = self.protocol.data_to_send()
        if not chunks:
            return
        # An empty chunk means "half-close now"; it only ever comes last.
        eof = not chunks[-1]
        data = b"".join(chunks)
        await self._acquire()
        try:
            if data:
                await self._send(data)
            if eof and not self._eof_sent:
                self._eof_sent = True
                # TLSStream cannot half-close (send_eof is not implemented): its close
                # happens in aclose().
                if not isinstance(self.stream, TLSStream):
                    await self.stream.send_eof()
        finally:
            self._release()

    async def send_raw(self, data: bytes) -> None:
        """Write pre-serialised frame bytes (the per-tick push, encoded once for all)."""
        await self._acquire()
        try:
            await self._send(data)
        finally:
            self._release()

    async def receive(self) -> bool:
        """Read once and feed the protocol; return False at end of input.

        The caller then reads ``protocol.events_received()``.
        """
        try:
            data = await self.stream.receive(_READ_SIZE)
        except STREAM_ERRORS:
            data = b""
        if data:
            self.protocol.receive_data(data)
            # Flush at once: pongs and close echoes must leave even if nobody sends later.
            try:
                await self.flush()
                return True
            except STREAM_ERRORS:
                pass
        # Outside the except blocks on purpose: websockets keeps the EOFError it raises
        # (parser_exc), and raised inside a handler it would chain the stream error and
        # its traceback, whose frames hold this connection (see release()).
        self.protocol.receive_eof()
        return False

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

    def release(self) -> None:
        """Break the reference cycle websockets leaves behind; call once the session ended.

        After an end of input without a closing handshake, the protocol keeps the
        EOFError its parser raised (``parser_exc``); that exception's traceback holds
        the parser's frame, which holds the protocol. Only a full collection of the
        cyclic GC would reclaim the connection, and at 10 000 connections a full
        collection stalls the loop for about half a second. Dropping the traceback (the
        exception itself stays) lets reference counting free the connection at once.
        """
        exc = self.protocol.parser_exc
        if exc is not None:
            exc.__traceback__ = None

    async def aclose(self) -> None:
        """Close the stream without any closing handshake (the peer is gone or stalled)."""
        self.release()
        with anyio.CancelScope(shield=True):
            try:
                with anyio.move_on_after(1):
                    await self.stream.aclose()
            except STREAM_ERRORS:
                pass
        # move_on_after may leave a TLS close_notify unsent: make sure the socket is freed.
        await anyio.aclose_forcefully(self.stream)


def _running_trio() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _direct_path(
    stream: anyio.abc.ByteStream, sock: socket.socket | None
) -> tuple[socket.socket | None, asyncio.WriteTransport | None]:
    """Find the socket under a plain TCP stream, for synchronous writes when it is idle.

    Under trio, anyio's stream writes straight to the socket (no user-space buffer), so
    "no send in progress" is enough. Under asyncio the stream writes through a transport
    that may still buffer bytes after ``send()`` returned: the fast path is used only
    when that buffer is empty. anyio does not expose the transport publicly; if its
    private attribute ever changes, the fast path is simply off (tests check it is on).
    """
    if isinstance(stream, TLSStream):
        return None, None
    if sock is None:  # the caller may know it: extra() builds all attributes per call
        try:
            sock = stream.extra(SocketAttribute.raw_socket)
        except TypedAttributeLookupError:
            return None, None
    if _running_trio():
        return sock, None
    transport = getattr(stream, "_transport", None)
    if isinstance(transport, asyncio.WriteTransport):
        # With the default limits an awaited send returns while up to 64 KiB still sit
        # in the transport's buffer, so a stalled client would collect that much before
        # its write timeout even started. High-water mark 0: send() returns only once
        # everything is handed to the kernel, as under trio.
        transport.set_write_buffer_limits(high=0)
        return sock, transport
    return None, None
