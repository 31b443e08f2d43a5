"""The one driver loop between an anyio byte stream and a websockets Sans-I/O protocol.

Shared by the server and the client, so asyncio and trio run the same code. Read →
feed the protocol → flush what it wants sent → hand events to the caller. Every stream
error becomes "end of input" for the protocol; nothing half-handled leaks out.

Also here: the synchronous write path the server's fan-out uses (one non-blocking
``send`` per client per tick, no task switch), and :class:`ServerTLSStream`, the
server's own TLS layer, which gives TLS connections that same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
from anyio import TypedAttributeLookupError
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["STREAM_ERRORS", "ServerTLSStream", "WSConnection", "can_half_close"]

#: Everything anyio raises when the other side is gone or the stream is unusable.
STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)

_READ_SIZE = 65536


class _WriteGate:
    """One writer at a time on a stream, without anyio.Lock.

    Taking an anyio.Lock costs a checkpoint and a cancel scope even when it is free,
    which showed up as a large share of the server's per-connection CPU. Free: taken at
    once. Busy: wait for the holder's release.
    """

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


class _DirectWriter:
    """Non-blocking writes straight to a plain TCP socket, when nothing is buffered."""

    __slots__ = ("_sock", "_transport")

    def __init__(self, sock: socket.socket, transport: asyncio.WriteTransport | None) -> None:
        self._sock = sock
        self._transport = transport

    def write(self, data: bytes) -> int:
        """Write what the kernel takes now; 0 if nothing can be written synchronously."""
        transport = self._transport
        if transport is not None and (transport.is_closing() or transport.get_write_buffer_size()):
            return 0  # bytes still wait in the transport: they go first
        fd = self._sock.fileno()  # -1 once closed: never write to a reused descriptor
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except OSError:
            return 0  # full (EAGAIN) or broken: the awaited path sees and reports it


def _direct_writer(
    stream: anyio.abc.ByteStream, sock: socket.socket | None
) -> _DirectWriter | None:
    """A direct writer for a plain TCP stream, or None (TLS, other streams).

    Under trio, anyio's stream writes straight to the socket (no user-space buffer), so
    "no send in progress" is enough. Under asyncio the stream writes through a transport
    that may still buffer bytes after ``send()`` returned: direct writes happen only
    when that buffer is empty. anyio does not expose the transport publicly; if its
    private attribute ever changes, the fast path is simply off (tests check it is on).
    """
    if isinstance(stream, TLSStream | ServerTLSStream):
        return None
    if sock is None:  # the caller may know it: extra() builds all attributes per call
        try:
            sock = stream.extra(SocketAttribute.raw_socket)
        except TypedAttributeLookupError:
            return None
    if _running_trio():
        return _DirectWriter(sock, None)
    transport = getattr(stream, "_transport", None)
    if isinstance(transport, asyncio.WriteTransport):
        # With the default limits an awaited send returns while up to 64 KiB still sit
        # in the transport's buffer, so a stalled client would collect that much before
        # its write timeout even started. High-water mark 0: send() returns only once
        # everything is handed to the kernel, as under trio.
        transport.set_write_buffer_limits(high=0)
        return _DirectWriter(sock, transport)
    return None


def can_half_close(stream: anyio.abc.ByteStream) -> bool:
    """Whether ``stream.send_eof()`` works: not on TLS, which ends in ``aclose()``."""
    # anyio's TLSStream does not implement send_eof, and ours neither.
    return not isinstance(stream, TLSStream | ServerTLSStream)


class ServerTLSStream(anyio.abc.ByteStream):
    """Server-side TLS over a plain TCP stream, driving an ``ssl.SSLObject`` itself.

    Why not anyio's TLSStream: it can only send by awaiting, so pushing a tick to N TLS
    clients took a task per client per tick (3.5x the CPU of websockets' broadcast()
    at 1 000 clients). Here every ciphertext byte, whether made by a write, by a read
    (TLS 1.3 post-handshake messages) or by closing, joins one ordered outgoing buffer
    right after the TLS operation that made it, and one sender at a time drains that
    buffer: records never reorder on the wire, and :meth:`write_now` can encrypt a frame
    and send it in one synchronous call whenever nothing is queued. As with anyio's
    TLSStream and ``standard_compatible=False``, an end of input without close_notify
    is an ordinary end of stream. There is no half-close (:meth:`send_eof`).
    """

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        context: ssl.SSLContext,
        sock: socket.socket | None = None,
    ) -> None:
        self._transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._out = bytearray()  # ciphertext made but not yet handed to the transport
        self._gate = _WriteGate()  # one sender of _out at a time
        self._direct = _direct_writer(transport, sock)
        self._closed = False

    @classmethod
    async def wrap(
        cls,
        transport: anyio.abc.ByteStream,
        context: ssl.SSLContext,
        sock: socket.socket | None = None,
    ) -> ServerTLSStream:
        """Run the server side of the TLS handshake over ``transport`` (bound it in time)."""
        stream = cls(transport, context, sock)
        try:
            await stream._run(stream._ssl.do_handshake)
        except BaseException:
            await anyio.aclose_forcefully(transport)
            raise
        return stream

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The socket attributes of the TCP stream underneath."""
        return self._transport.extra_attributes

    @property
    def backlogged(self) -> bool:
        """Whether ciphertext is queued: it must be sent (:meth:`flush`) before more."""
        return bool(self._out) or self._outgoing.pending > 0

    def _collect(self) -> None:
        # Called right after every TLS operation, so _out keeps the order records were made.
        if self._outgoing.pending:
            self._out += self._outgoing.read()

    async def flush(self) -> None:
        """Send all queued ciphertext, in order."""
        self._collect()
        if not self._out:
            return
        await self._gate.acquire()
        try:
            while self._out:
                data = bytes(self._out)
                self._out.clear()
                sent = self._direct.write(data) if self._direct is not None else 0
                if sent < len(data):
                    await self._transport.send(data[sent:] if sent else data)
        finally:
            self._gate.release()

    async def _run(self, operation: Callable[[], Any]) -> Any:
        """Run a TLS operation, feeding it input and flushing its output as needed."""
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                await self.flush()
                try:
                    data = await self._transport.receive()
                except anyio.EndOfStream:
                    self._incoming.write_eof()
                else:
                    self._incoming.write(data)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                await self.flush()
                raise anyio.EndOfStream from None
            except ssl.SSLError as exc:
                reason = exc.reason or type(exc).__name__
                raise anyio.BrokenResourceError(f"TLS error: {reason}") from None
            await self.flush()
            return result

    def write_now(self, data: bytes) -> bool:
        """Encrypt and send ``data`` synchronously if nothing else is queued or sending.

        True when the data was taken: its records are in the kernel, or partly there
        and the rest queued in order (then :attr:`backlogged` is true and the caller
        must ``await flush()``). False when nothing was done.
        """
        if self._gate.busy or self._closed or self.backlogged or self._direct is None:
            return False
        try:
            self._ssl.write(data)
        except ssl.SSLError:
            return False  # the awaited path meets the same error and reports it
        data = self._outgoing.read()
        sent = self._direct.write(data)
        if sent < len(data):
            self._out += data[sent:]
        return True

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return decrypted bytes; raise anyio.EndOfStream at the end of input."""
        data: bytes = await self._run(lambda: self._ssl.read(max_bytes))
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        """Encrypt and send ``item`` (after everything queued before it)."""
        if self._closed:
            raise anyio.ClosedResourceError
        if item:
            await self._run(lambda: self._ssl.write(item))
        else:
            await self.flush()

    async def send_eof(self) -> None:
        """Not supported: TLS has no half-close. Close with :meth:`aclose`."""
        raise NotImplementedError("TLS has no half-close: use aclose()")

    async def aclose(self) -> None:
        """Send close_notify (best effort, bounded by the caller), then close the socket."""
        try:
            if not self._closed:
                self._closed = True
                # SSLWantReadError: our close_notify is queued; we do not wait for theirs.
                with contextlib.suppress(ssl.SSLError, ValueError):
                    self._ssl.unwrap()
                with contextlib.suppress(*STREAM_ERRORS):
                    await self.flush()
        finally:
            # Even when cancelled (aclose_forcefully) while sending: never leak the socket.
            await self._transport.aclose()


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
        # share the stream: one writer at a time.
        self._gate = _WriteGate()
        self._eof_sent = False
        self._tls = stream if isinstance(stream, ServerTLSStream) else None
        self._direct = _direct_writer(stream, raw_socket)
        self._backlog = b""  # plain TCP: the unsent tail of a direct write; it goes first

    @property
    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` can ever succeed on this stream."""
        if self._tls is not None:
            return self._tls._direct is not None
        return self._direct is not None

    @property
    def backlogged(self) -> bool:
        """Whether bytes taken by :meth:`write_now` still wait: ``send_raw(b"")`` sends them."""
        return bool(self._backlog) or (self._tls is not None and self._tls.backlogged)

    def write_now(self, data: bytes) -> bool:
        """Write ``data`` synchronously if the connection is idle; return whether it was taken.

        The fan-out fast path: one non-blocking ``send`` (TLS: encrypt, then send), no
        task switch. Taken means in the kernel, or partly there with the rest queued in
        order: then :attr:`backlogged` is true and someone must ``await send_raw(b"")``.
        False (nothing done) when another write is in progress or queued, the kernel
        buffer is full, or the stream is closed: the caller queues the data for an
        awaited send instead. Bytes never interleave with a send in progress.
        """
        if self._gate.busy or self._backlog:
            return False
        if self._tls is not None:
            return self._tls.write_now(data)
        if self._direct is None:
            return False
        sent = self._direct.write(data)
        if sent and sent < len(data):
            self._backlog = data[sent:]
        return sent > 0

    async def _send(self, data: bytes) -> None:
        # Holding the gate: what write_now left queued goes first, then data; one
        # non-blocking write, awaiting only for what the kernel did not take.
        if self._tls is not None:
            await self._tls.send(data)  # queued ciphertext first; b"" just flushes
            return
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        if not data:
            return
        sent = self._direct.write(data) if self._direct is not None else 0
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
        await self._gate.acquire()
        try:
            if data:
                await self._send(data)
            if eof and not self._eof_sent:
                self._eof_sent = True
                if can_half_close(self.stream):
                    await self.stream.send_eof()
        finally:
            self._gate.release()

    async def send_raw(self, data: bytes) -> None:
        """Write pre-serialised frame bytes (the per-tick push, encoded once for all).

        Anything :meth:`write_now` left queued goes first; ``b""`` sends just that.
        """
        await self._gate.acquire()
        try:
            await self._send(data)
        finally:
            self._gate.release()

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
