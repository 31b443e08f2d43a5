"""The server's TLS layer: an ``ssl.SSLObject`` driven over a :class:`SocketStream`.

Why not anyio's TLSStream: it can only send by awaiting, so pushing a tick to N TLS
clients took a task per client per tick (3.5x the CPU of websockets' broadcast() at
1 000 clients). Here every ciphertext byte, whether made by a write, by a read (TLS 1.3
post-handshake messages) or by closing, joins the socket stream's one ordered queue
right after the TLS operation that made it: records never reorder on the wire, and
:meth:`ServerTLSStream.write_now` encrypts a frame and sends it in one synchronous call
whenever nothing is queued. The same surface as :class:`SocketStream`
(:class:`~arraycrypto.net.sockets.DirectStream`).

Renegotiation is refused (``OP_NO_RENEGOTIATION``): a TLS 1.2 peer that asks for it
could otherwise make a write wait for a read. Should a write still want to read, only
that connection fails.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import TypeVar

import anyio

from .sockets import STREAM_ERRORS, SocketStream

__all__ = ["ServerTLSStream", "server_context"]

_T = TypeVar("_T")
_READ_SIZE = 65536


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """Return the server's TLS context for a PEM certificate chain and key.

    Raises OSError or ssl.SSLError when the files cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(certfile, keyfile)
    return context


class ServerTLSStream:
    """Server-side TLS over a :class:`SocketStream`; create with :meth:`wrap`.

    As with anyio's TLSStream and ``standard_compatible=False``, an end of input without
    close_notify is an ordinary end of stream. :meth:`send_eof` sends close_notify and
    leaves the input open (TLS's half-close); :meth:`aclose` sends it if not yet sent,
    then closes.
    """

    __slots__ = ("_closed", "_incoming", "_outgoing", "_ssl", "_transport")

    def __init__(self, transport: SocketStream, context: ssl.SSLContext) -> None:
        self._transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._closed = False

    @classmethod
    async def wrap(cls, transport: SocketStream, context: ssl.SSLContext) -> ServerTLSStream:
        """Run the server side of the TLS handshake (the caller bounds it in time)."""
        stream = cls(transport, context)
        await stream._run(stream._ssl.do_handshake)
        return stream

    @property
    def socket(self) -> socket.socket:
        """The socket underneath (for addresses and options)."""
        return self._transport.socket

    @property
    def backlogged(self) -> bool:
        """Whether ciphertext is queued: it must be sent (:meth:`flush`) before more."""
        return self._transport.backlogged or self._outgoing.pending > 0

    def _collect(self) -> None:
        # Called right after every TLS operation, so the queue keeps the records' order.
        if self._outgoing.pending:
            self._transport.enqueue(self._outgoing.read())

    async def flush(self) -> None:
        """Send all queued ciphertext, in order."""
        self._collect()
        await self._transport.flush()

    async def _run(self, operation: Callable[[], _T], *, reading: bool = True) -> _T:
        """Run a TLS operation, feeding it input and flushing its output as needed."""
        while True:
            try:
                result = operation()
            except ssl.SSLWantReadError:
                if not reading:
                    # A write that needs the peer's input (renegotiation): never read
                    # here, where the connection's reader may be reading. Fail it alone.
                    raise anyio.BrokenResourceError("TLS write wants to read") from None
                await self.flush()
                try:
                    data = await self._transport.receive(_READ_SIZE)
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

        True when the data was taken: its records are in the kernel, or partly there and
        the rest queued in order (then :attr:`backlogged` is true and the caller must
        ``await flush()``). False when nothing was done.
        """
        transport = self._transport
        if self._closed or transport.busy or self.backlogged:
            return False
        try:
            self._ssl.write(data)
        except ssl.SSLError:
            return False  # the awaited path meets the same error and reports it
        records = self._outgoing.read()
        if not transport.write_now(records):
            transport.enqueue(records)  # already encrypted: it must go, in this order
        return True

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        """Return decrypted bytes; raise anyio.EndOfStream at the end of input."""
        data = await self._run(lambda: self._ssl.read(max_bytes))
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, data: bytes) -> None:
        """Encrypt and send ``data`` after everything queued before it."""
        if self._closed:
            raise anyio.ClosedResourceError
        if data:
            await self._run(lambda: self._ssl.write(data), reading=False)
        else:
            await self.flush()

    async def send_eof(self) -> None:
        """Send close_notify, TLS's end of output; reading goes on until the peer's.

        What a FIN is to plain TCP: the HTTP shim half-closes after its answer and then
        drains the client, and a client reading to the end of the answer sees it at once
        rather than when the drain gives up. Nothing can be sent after it.
        """
        if self._closed:
            return
        if self._ssl.pending() or self._incoming.pending:
            # Input not read yet (a request body's next record): the shutdown would read
            # it as data after close_notify and fail, and every read after it. Leave the
            # close_notify to aclose(), once the caller has drained what it wants.
            return
        self._closed = True
        # SSLWantReadError: our close_notify is queued; the peer's comes through receive().
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._ssl.unwrap()
        await self.flush()

    async def aclose(self) -> None:
        """Send close_notify (best effort, bounded by the caller), then close the socket."""
        try:
            if not self._closed:
                self._closed = True
                # SSLWantReadError: our close_notify is queued; we do not wait for theirs.
                with contextlib.suppress(ssl.SSLError, ValueError):
                    self._ssl.unwrap()
            # Also what send_eof() queued and could not send in its time: one more try.
            with contextlib.suppress(*STREAM_ERRORS):
                await self.flush()
        finally:
            # Even when cancelled while sending: never leak the socket.
            self._transport.close()

    def close(self) -> None:
        """Close the socket now, without close_notify."""
        self._closed = True
        self._transport.close()
