"""Real-socket helpers for the I/O tests: a hand-driven WebSocket client, raw HTTP.

Everything talks to 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import trustme
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from arraycrypto import CryptoConfig, Keyring, ServerConfig, Snapshot
from arraycrypto._transport import WSConnection
from arraycrypto.core import messages as m
from arraycrypto.core.handshake import Accepted, ClientSession
from arraycrypto.server import Server

from .helpers import SECRET

HOST = "127.0.0.1"


def client_config(port: int, **overrides: Any) -> CryptoConfig:
    """A client config for tests: the server on 127.0.0.1:port, short waits."""
    base: dict[str, Any] = {
        "server_url": f"http://{HOST}:{port}",
        "secret_key": SECRET,
        "snapshot_timeout": 5.0,
        "connect_timeout": 5.0,
        "reconnect_max_delay": 0.5,
    }
    base.update(overrides)
    return CryptoConfig(**base)


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true, bounded by ``timeout`` (state owned by other tasks)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


def server_config(**overrides: Any) -> ServerConfig:
    """A server config for tests: loopback, any free port, fast ticks."""
    base: dict[str, Any] = {
        "secret_key": SECRET,
        "host": HOST,
        "port": 0,
        "tick_interval": 0.1,
    }
    base.update(overrides)
    return ServerConfig(**base)


def with_tls(config: ServerConfig, tmp_path: Path) -> tuple[ServerConfig, ssl.SSLContext]:
    """``config`` with a certificate from a throwaway trustme CA, and a client context."""
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tls = msgspec.structs.replace(config, tls_certfile=str(pem), tls_keyfile=str(pem))
    return tls, context


@asynccontextmanager
async def running_server(config: ServerConfig | None = None) -> AsyncIterator[Server]:
    """Run a real server in this event loop; stop it (cancel) on exit."""
    server = Server(config or server_config())
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


class RawClient:
    """A WebSocket client driven by hand, to send what a real client never would."""

    def __init__(self, conn: WSConnection) -> None:
        self.conn = conn
        self.protocol = conn.protocol
        self.frames: list[Frame] = []
        self.session_id: str | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/ws",
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RawClient:
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
        conn = WSConnection(stream, protocol)
        protocol.send_request(protocol.connect())
        await conn.flush()
        client = cls(conn)
        with anyio.fail_after(5):
            while True:
                assert await conn.receive(), "server closed during the upgrade"
                events = protocol.events_received()
                client.frames.extend(e for e in events if isinstance(e, Frame))
                if any(isinstance(e, Response) for e in events):
                    break
        assert protocol.handshake_exc is None, protocol.handshake_exc
        return client

    async def recv_text(self, timeout: float = 5.0) -> bytes:
        """Return the next text frame's payload."""
        with anyio.fail_after(timeout):
            while True:
                for i, frame in enumerate(self.frames):
                    if frame.opcode is Opcode.TEXT:
                        del self.frames[: i + 1]
                        return bytes(frame.data)
                self.frames.clear()
                assert await self.conn.receive(), "connection closed"
                self.frames.extend(
                    e for e in self.protocol.events_received() if isinstance(e, Frame)
                )

    async def recv_message(self, timeout: float = 5.0) -> m.Message:
        return m.decode(await self.recv_text(timeout))

    async def send_text(self, data: bytes) -> None:
        self.protocol.send_text(data)
        await self.conn.flush()

    async def send_binary(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        await self.conn.flush()

    async def wait_closed(self, timeout: float = 5.0) -> Close | None:
        """Read until the server closes; return the close frame it sent (None: none)."""
        with anyio.fail_after(timeout):
            while self.protocol.state is not State.CLOSED:
                if not await self.conn.receive():
                    break
                self.frames.extend(
                    e for e in self.protocol.events_received() if isinstance(e, Frame)
                )
        await self.conn.aclose()
        return self.protocol.close_rcvd

    async def handshake(self, keyring: Keyring | None = None) -> Snapshot:
        """Answer the challenge properly; return the snapshot of the welcome."""
        session = ClientSession(keyring or Keyring(SECRET), os.urandom(32))
        now = current_ms()
        reply = session.receive_text(await self.recv_text(), now)
        assert isinstance(reply, bytes)
        await self.send_text(reply)
        verdict = session.receive_text(await self.recv_text(), current_ms())
        assert isinstance(verdict, Accepted), verdict
        self.session_id = session.session_id
        return verdict.snapshot

    async def aclose(self) -> None:
        await self.conn.aclose()


def current_ms() -> int:
    """Wall-clock milliseconds, the unit of snapshot timestamps."""
    return int(time.time() * 1000)


async def http_request(
    port: int, raw: bytes, *, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole response (the server closes), parse it."""
    async with await anyio.connect_tcp(HOST, port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(timeout):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    assert data, "empty reply from server"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


async def http_get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    raw = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()
    return await http_request(port, raw)


@contextmanager
def serve_process(
    *args: str, port: int = 0, **popen: Any
) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """Start ``python -m arraycrypto serve``; yield it, its port and the lines read."""
    args = ("--port", str(port), *args)
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", "serve", "--host", "127.0.0.1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        port = 0  # the one it reports
        seen: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/ws", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "server did not report its port"
        yield proc, port, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
