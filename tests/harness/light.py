"""Clients light enough for 10 000 in one process, and the plumbing of script children.

:class:`LightClient` speaks raw WebSocket over an asyncio protocol (the harness's one
frame codec) and does the real challenge-response handshake with the pure core's
:class:`~arraycrypto.core.handshake.ClientSession`; afterwards it records each push's
delivery latency (arrival minus the snapshot's timestamp) and answers pings.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from arraycrypto import Keyring
from arraycrypto.core.handshake import Accepted, ClientSession, SnapshotPolicy

from . import frames
from .constants import HOST, SECRET

__all__ = [
    "ROOT",
    "ClientBench",
    "LightClient",
    "connect_light",
    "end",
    "raise_fd_limit",
    "read_tagged",
    "spawn",
]

#: The repository root: script children run as ``python -m scripts.NAME`` from here.
ROOT = Path(__file__).resolve().parents[2]


def raise_fd_limit() -> int:
    """Raise this process's soft descriptor limit to the hard limit; return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def spawn(module: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    """Start ``python -m MODULE ARGS`` from the repository root, stdout (and stdin) piped."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
        cwd=ROOT,
    )


def read_tagged(proc: subprocess.Popen[str], tag: str, timeout: float) -> str:
    """Read the child's lines until one starts with ``tag``; return the rest of it."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before {tag}")
        if line.strip() == tag or line.startswith(tag + " "):
            return line[len(tag) :].strip()
    raise TimeoutError(tag)


def end(*procs: subprocess.Popen[str] | None) -> None:
    """Kill and reap every child still running."""
    for p in procs:
        if p is None:
            continue
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
        if p.stdout is not None:
            p.stdout.close()


class _Stamp(msgspec.Struct):
    timestamp: int


class ClientBench:
    """What many light clients share: the keyring, and the latencies they record."""

    def __init__(self) -> None:
        self.keyring = Keyring(SECRET)
        self.recording = False
        self.latencies: list[float] = []
        self._decoder = msgspec.json.Decoder(_Stamp)

    def timestamp_of(self, payload: bytes) -> int:
        """The ``timestamp`` field of a snapshot push."""
        return self._decoder.decode(payload).timestamp

    def record(self, ms: float) -> None:
        """Keep one delivery latency, while recording."""
        if self.recording:
            self.latencies.append(ms)


class LightClient(asyncio.Protocol):
    """A raw WebSocket client: upgrade, handshake, then record push latencies."""

    def __init__(self, bench: ClientBench, path: str = "/ws") -> None:
        self.bench = bench
        self.path = path
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.session: ClientSession | None = None
        self.authenticated: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.authenticated.done():
            self.authenticated.set_exception(ConnectionError("lost before welcome"))

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.buffer.startswith(b"HTTP/1.1 101"), self.buffer[:60]
            self.buffer = self.buffer[end + 4 :]
            self.upgraded = True
        while (parsed := frames.parse(self.buffer)) is not None:
            opcode, payload, self.buffer = parsed
            if opcode == frames.TEXT:
                self.on_text(payload, arrived)
            elif opcode == frames.PING:  # answer, as a real client would
                self.send(frames.PONG, payload)

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one masked client frame."""
        assert self.transport is not None
        self.transport.write(frames.encode(opcode, payload))

    def on_text(self, payload: bytes, arrived: float) -> None:
        """A text frame: the handshake's, or a push whose latency is recorded."""
        if self.authenticated.done():
            self.bench.record(arrived * 1000 - self.bench.timestamp_of(payload))
            return
        if self.session is None:
            policy = SnapshotPolicy(self.bench.keyring, max_drift=3600)
            self.session = ClientSession(policy, os.urandom(32))
        result = self.session.receive_text(payload, int(arrived * 1000))
        if isinstance(result, bytes):
            self.send(frames.TEXT, result)
        elif isinstance(result, Accepted) or self.session.session_id is not None:
            self.authenticated.set_result(True)


async def connect_light(
    port: int,
    n: int,
    timeout: float,
    bench: ClientBench | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[ClientBench, list[LightClient]]:
    """Connect ``n`` light clients, 256 in flight at once, and wait until all authenticated.

    Each waits at most ``timeout`` seconds for its handshake once connected.
    """
    loop = asyncio.get_running_loop()
    bench = bench or ClientBench()
    clients: list[LightClient] = []
    gate = asyncio.Semaphore(256)  # connections in flight at once

    async def one() -> None:
        async with gate:
            _, client = await loop.create_connection(
                lambda: LightClient(bench),
                HOST,
                port,
                ssl=ssl_context,
                server_hostname="localhost" if ssl_context else None,
            )
            clients.append(client)
            await asyncio.wait_for(client.authenticated, timeout)

    await asyncio.gather(*(one() for _ in range(n)))
    return bench, clients
