"""A WebSocket peer driven by hand, over the same driver loop as the server and client.

:class:`RawConnection` is a Sans-I/O connection object like the real ones, whose events
are simply the frames websockets parsed; :class:`RawClient` runs it with the shared
:class:`~arraycrypto.net.driver.Driver`, so a test can send what a real client never
would (fragments, binary frames, a second handshake) and read every frame.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Sequence

import anyio
import anyio.abc
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from arraycrypto import Keyring, Snapshot
from arraycrypto.core import messages as m
from arraycrypto.core.handshake import Accepted
from arraycrypto.net.driver import Driver

from .clock import current_ms
from .constants import HOST, SECRET
from .pure import client_session

__all__ = ["RawClient", "RawConnection"]

RawEvent = Frame | Response


class RawConnection:
    """websockets' ClientProtocol as a connection object: its events are the frames."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol

    @property
    def deadline(self) -> float | None:
        """No deadline: the test bounds its own waits."""
        return None

    @property
    def finished(self) -> bool:
        """Whether websockets has closed the connection."""
        return self.protocol.state is State.CLOSED

    def data_to_send(self) -> list[bytes]:
        """What websockets wants written."""
        return self.protocol.data_to_send()

    def receive_data(self, data: bytes, now: float) -> list[RawEvent]:
        """Feed bytes; the events are websockets' own."""
        self.protocol.receive_data(data)
        return [e for e in self.protocol.events_received() if isinstance(e, Frame | Response)]

    def receive_eof(self, now: float) -> list[RawEvent]:
        """Feed the end of input."""
        self.protocol.receive_eof()
        return [e for e in self.protocol.events_received() if isinstance(e, Frame | Response)]

    def timeout(self, now: float) -> list[RawEvent]:
        """Never called: there is no deadline."""
        return []


class _Stream:
    # anyio streams as the driver wants them: TLS has no half-close, so skip it.
    def __init__(self, stream: anyio.abc.ByteStream, tls: bool) -> None:
        self.raw = stream
        self.tls = tls

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.raw.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.raw.send(item)

    async def send_eof(self) -> None:
        if not self.tls:
            await self.raw.send_eof()


class RawClient:
    """A hand-driven WebSocket client for tests (every wait bounded)."""

    def __init__(self, stream: anyio.abc.ByteStream, protocol: ClientProtocol, tls: bool) -> None:
        self.stream = stream
        self.protocol = protocol
        self.driver = Driver(_Stream(stream, tls), RawConnection(protocol), time.monotonic)
        self.frames: list[Frame] = []
        self.session_id: str | None = None
        self.eof = False

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/ws",
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RawClient:
        """Open a connection and complete the WebSocket upgrade."""
        scheme = "wss" if ssl_context else "ws"
        uri = parse_uri(f"{scheme}://{HOST}:{port}{path}")
        stream: anyio.abc.ByteStream
        if ssl_context is not None:
            stream = await anyio.connect_tcp(
                HOST,
                port,
                ssl_context=ssl_context,
                tls_hostname="localhost",
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(HOST, port)
        protocol = ClientProtocol(uri, max_size=1 << 20)
        protocol.send_request(protocol.connect())
        client = cls(stream, protocol, ssl_context is not None)
        with anyio.fail_after(5):
            upgraded = False
            while not upgraded:
                events = await client.driver.step()
                assert events is not None, "server closed during the upgrade"
                upgraded = any(isinstance(e, Response) for e in events)
                client.frames.extend(e for e in events if isinstance(e, Frame))
                assert not client.driver.eof_received, "server closed during the upgrade"
        assert protocol.handshake_exc is None, protocol.handshake_exc
        return client

    async def flush(self) -> None:
        """Write what the protocol has queued (after ``protocol.send_*``)."""
        await self.driver.flush()

    async def receive(self) -> bool:
        """Read once; append the frames to :attr:`frames`; False at the end of input."""
        events = await self.driver.step()
        if events is None:
            return False
        self.frames.extend(e for e in events if isinstance(e, Frame))
        return not self.driver.eof_received

    async def recv_text(self, timeout: float = 5.0) -> bytes:
        """Return the next text frame's payload."""
        with anyio.fail_after(timeout):
            while True:
                for i, frame in enumerate(self.frames):
                    if frame.opcode is Opcode.TEXT:
                        del self.frames[: i + 1]
                        return bytes(frame.data)
                self.frames.clear()
                assert await self.receive(), "connection closed"

    async def recv_message(self, timeout: float = 5.0) -> m.Message:
        """Return the next text frame, decoded."""
        return m.decode(await self.recv_text(timeout))

    async def send_text(self, data: bytes) -> None:
        """Send one text frame."""
        self.protocol.send_text(data)
        await self.flush()

    async def send_binary(self, data: bytes) -> None:
        """Send one binary frame."""
        self.protocol.send_binary(data)
        await self.flush()

    async def wait_closed(self, timeout: float = 5.0) -> Close | None:
        """Read until the server closes; return the close frame it sent (None: none)."""
        with anyio.fail_after(timeout):
            while self.protocol.state is not State.CLOSED:
                if not await self.receive():
                    break
        await self.aclose()
        return self.protocol.close_rcvd

    async def handshake(self, keyring: Keyring | None = None) -> Snapshot:
        """Answer the challenge properly; return the snapshot of the welcome."""
        session = client_session(keyring or Keyring(SECRET), os.urandom(32))
        reply = session.receive_text(await self.recv_text(), current_ms())
        assert isinstance(reply, bytes)
        await self.send_text(reply)
        verdict = session.receive_text(await self.recv_text(), current_ms())
        assert isinstance(verdict, Accepted), verdict
        self.session_id = session.session_id
        return verdict.snapshot

    async def aclose(self) -> None:
        """Close the connection without a closing handshake."""
        await anyio.aclose_forcefully(self.stream)

    async def step_events(self) -> Sequence[RawEvent] | None:
        """One step of the driver, for tests that watch every event."""
        return await self.driver.step()
