"""A TCP socket as a byte stream with a synchronous write path, for asyncio and trio.

The server's fan-out writes each tick's frame to thousands of sockets. An awaited
``send`` per client per tick costs a task switch each; here :meth:`SocketStream.write_now`
hands the frame to the kernel in one non-blocking ``send`` when nothing is queued, and
queues whatever the kernel did not take, in order, for an awaited :meth:`~SocketStream.flush`.

Built on the non-blocking socket itself plus ``anyio.wait_readable``/``wait_writable``,
not on anyio's stream classes: an anyio stream carries an asyncio transport, a protocol
and several event queues per connection (about 4 KiB), and its direct-write path would
need anyio's private ``_transport``. This needs neither, and runs the same code under
asyncio and trio.

:class:`SocketStream` and :class:`~arraycrypto.net.tls.ServerTLSStream` share one
surface (:class:`DirectStream`), so the fan-out has one path for plain and TLS clients.
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

import anyio
import anyio.abc

__all__ = ["STREAM_ERRORS", "DirectStream", "SocketStream"]

#: Everything a stream raises when the other side is gone or the stream is unusable.
STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)

_READ_SIZE = 65536
_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class DirectStream(Protocol):
    """The surface the server's connections use, plain TCP and TLS alike."""

    @property
    def socket(self) -> socket.socket:
        """The socket underneath (for addresses and options)."""

    def write_now(self, data: bytes) -> bool:
        """Take ``data`` synchronously if nothing is queued or sending; see SocketStream."""

    @property
    def backlogged(self) -> bool:
        """Whether taken bytes still wait to be sent: ``await flush()`` sends them."""

    async def flush(self) -> None:
        """Send everything queued, in order."""

    async def send(self, data: bytes) -> None:
        """Queue ``data`` after everything queued before it, then flush."""

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        """Return the next bytes; raise anyio.EndOfStream at the end of input."""

    async def send_eof(self) -> None:
        """Half-close after everything queued: FIN, or close_notify on TLS."""

    async def aclose(self) -> None:
        """Close gracefully where the stream can (TLS close_notify), then close."""

    def close(self) -> None:
        """Close now, waking any task waiting on the stream; queued bytes are dropped."""


class _Gate:
    """One awaited sender at a time, without anyio.Lock's per-call cancel scope."""

    __slots__ = ("_free", "busy")

    def __init__(self) -> None:
        self.busy = False
        self._free: anyio.Event | None = None

    async def acquire(self) -> None:
        while self.busy:
            if self._free is None:
                self._free = anyio.Event()
            await self._free.wait()
        self.busy = True

    def release(self) -> None:
        self.busy = False
        if self._free is not None:
            self._free.set()
            self._free = None


class SocketStream:
    """A connected non-blocking TCP socket: receive, ordered writes, half-close, close.

    Every byte written goes either straight to the kernel (nothing queued, no sender
    active) or to the end of one ordered queue that a single awaited sender drains, so
    writes from several tasks (a reader answering pings, the fan-out, a writer task)
    never interleave or reorder.
    """

    __slots__ = ("_closed", "_gate", "_out", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._out = b""  # bytes taken but not yet in the kernel; they go first
        self._gate = _Gate()
        self._closed = False

    @property
    def socket(self) -> socket.socket:
        """The socket underneath (for addresses and options)."""
        return self._sock

    @property
    def backlogged(self) -> bool:
        """Whether bytes wait in the queue: someone must ``await flush()``."""
        return bool(self._out)

    @property
    def busy(self) -> bool:
        """Whether an awaited sender is active (then only the queue may grow)."""
        return self._gate.busy

    def write_now(self, data: bytes) -> bool:
        """Send ``data`` synchronously if the stream is idle; return whether it was taken.

        Taken means in the kernel, or partly there with the rest queued in order (then
        :attr:`backlogged` is true and someone must ``await flush()``). False, with
        nothing done, when a send is in progress or queued, the kernel buffer is full,
        the socket is broken or closed: the caller keeps the data for an awaited send.
        """
        if self._out or self._gate.busy or self._closed:
            return False
        try:
            sent = self._sock.send(data)
        except OSError:
            return False  # full (EAGAIN) or broken: the awaited path meets it and reports it
        if sent < len(data):
            self._out = data[sent:]
        return sent > 0

    def enqueue(self, data: bytes) -> None:
        """Queue ``data`` after everything queued before it; ``flush()`` sends it."""
        self._out += data

    async def flush(self) -> None:
        """Send everything queued, awaiting the kernel when its buffer is full."""
        if not self._out:
            return
        await self._gate.acquire()
        try:
            while self._out:
                if self._closed:
                    raise anyio.ClosedResourceError
                try:
                    sent = self._sock.send(self._out)
                except _WOULD_BLOCK:
                    sent = -1
                except OSError as exc:
                    raise anyio.BrokenResourceError(str(exc)) from None
                if sent < 0:
                    # Awaited outside the except block: a parked handler would keep the
                    # exception and its traceback alive for as long as it waits.
                    await anyio.wait_writable(self._sock)
                else:
                    self._out = self._out[sent:]
        finally:
            self._gate.release()

    async def send(self, data: bytes) -> None:
        """Queue ``data`` after everything taken before it, then send it all."""
        if self._closed:
            raise anyio.ClosedResourceError
        self._out += data
        await self.flush()

    def receive_into_now(self, buffer: memoryview) -> int | None:
        """Read what was already received into ``buffer``: how many bytes, None if there
        are none yet, 0 at the end.

        Never waits; raises anyio.BrokenResourceError if the connection failed. For a
        caller reading many sockets in turn with one buffer: ``recv(n)`` allocates n
        bytes and shrinks them to what came, which for a 64 KiB read of a 6-byte pong
        left the allocator's heap growing by a block every few minutes.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return self._sock.recv_into(buffer)
        except _WOULD_BLOCK:
            return None
        except OSError as exc:
            raise anyio.BrokenResourceError(str(exc)) from None

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        """Return the next bytes; raise anyio.EndOfStream at the end of input."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = self._sock.recv(max_bytes)
            except _WOULD_BLOCK:
                data = None
            except OSError as exc:
                raise anyio.BrokenResourceError(str(exc)) from None
            if data is None:
                # Outside the except block: an idle connection parks here for hours,
                # and a handler would keep the BlockingIOError and its traceback alive.
                await anyio.wait_readable(self._sock)
            elif data:
                return data
            else:
                raise anyio.EndOfStream

    async def send_eof(self) -> None:
        """Send what is queued, then half-close (FIN): the peer reads the end of input."""
        await self.flush()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise anyio.BrokenResourceError(str(exc)) from None

    async def aclose(self) -> None:
        """Close the socket now; a task waiting on it is woken with ClosedResourceError."""
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the socket synchronously (waking any waiter); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._out = b""
        if self._sock.fileno() >= 0:
            anyio.notify_closing(self._sock)
        self._sock.close()
