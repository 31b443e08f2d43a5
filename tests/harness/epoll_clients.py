"""Plain-TCP benchmark clients on one epoll loop, without asyncio (Linux).

A load generator must cost less than what it measures. On this 2-core machine the
benchmark's client process shares the cores with the server: with the asyncio
clients of :mod:`.light`, connecting 10 000 of them cost the client process about
6 s of CPU (asyncio's ``create_connection``, a transport, a protocol and a future per
client), as much as the server's own work, so a second server worker had no core to
run on. These clients do the same real exchange per connection (the HTTP upgrade,
the challenge-response handshake with the pure core's
:class:`~arraycrypto.core.handshake.ClientSession`, the snapshot's verification), each
a socket and a small record on one ``epoll``: about half the CPU.

After the handshake they read every push, record its delivery latency (arrival minus
the snapshot's timestamp, as :class:`~.light.LightClient` does) and answer pings.
TLS stays with :mod:`.light` (a handshake per socket is not worth a second TLS
client here).
"""

from __future__ import annotations

import base64
import os
import select
import socket
import time

from arraycrypto.core.handshake import Accepted, ClientSession, SnapshotPolicy

from . import frames
from .constants import HOST
from .light import ClientBench

__all__ = ["EpollClients"]

_REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Client:
    """One connection's state: its socket, unparsed bytes, handshake session."""

    __slots__ = ("buffer", "session", "sock", "upgraded")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.upgraded = False
        self.session: ClientSession | None = None


class EpollClients:
    """Many plain-TCP WebSocket clients of one server, driven by one epoll loop.

    :meth:`connect` opens and authenticates them; :meth:`run` then reads pushes until a
    given time, recording latencies into ``bench`` while its ``recording`` is set.
    """

    def __init__(self, port: int, bench: ClientBench | None = None, path: str = "/ws") -> None:
        self.port = port
        self.bench = bench or ClientBench()
        self.path = path
        self._epoll = select.epoll()
        self._clients: dict[int, _Client] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def connect(self, n: int, timeout: float, in_flight: int = 256) -> None:
        """Open ``n`` connections (``in_flight`` at most at once) until all authenticated.

        Raises ConnectionError if one is refused or closed before its welcome, and
        TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        pending: dict[int, _Client] = {}
        started = 0
        epoll = self._epoll
        while started < n or pending:
            while started < n and len(pending) < in_flight:
                new = self._open()
                pending[new.sock.fileno()] = new
                started += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(pending)} clients not authenticated in {timeout} s")
            for fd, mask in epoll.poll(min(left, 1.0)):
                client = pending.get(fd)
                if client is None:  # authenticated already: a push (ticks go on)
                    self._read(fd)
                elif mask & select.EPOLLOUT:
                    self._connected(client)
                elif self._handshake(client):
                    del pending[fd]
                    self._clients[fd] = client

    def _open(self) -> _Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(sock)
        sock.connect_ex((HOST, self.port))  # EINPROGRESS: writable once connected
        self._epoll.register(sock.fileno(), select.EPOLLOUT)
        return client

    def _connected(self, client: _Client) -> None:
        sock = client.sock
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise ConnectionError(os.strerror(error))
        key = base64.b64encode(os.urandom(16)).decode()
        request = _REQUEST.format(path=self.path, host=HOST, key=key)
        sock.send(request.encode())  # a few hundred bytes into an empty buffer
        self._epoll.modify(sock.fileno(), select.EPOLLIN)

    def _handshake(self, client: _Client) -> bool:
        """Read what arrived; answer the challenge; return whether the welcome came."""
        data = client.sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the welcome")
        buffer = client.buffer + data
        if not client.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                client.buffer = buffer
                return False
            if not buffer.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"refused: {buffer[:60]!r}")
            buffer = buffer[end + 4 :]
            client.upgraded = True
        welcomed = False
        while not welcomed and (parsed := frames.parse(buffer)) is not None:
            opcode, payload, buffer = parsed
            if opcode != frames.TEXT:
                continue
            if client.session is None:
                # A policy each: it remembers the newest snapshot its client accepted
                # (workers of one server may be a tick apart).
                policy = SnapshotPolicy(self.bench.keyring, max_drift=3600)
                client.session = ClientSession(policy, os.urandom(32))
            result = client.session.receive_text(payload, int(time.time() * 1000))
            if isinstance(result, bytes):
                client.sock.send(frames.encode(frames.TEXT, result))
            elif isinstance(result, Accepted):
                welcomed = True
            else:
                raise ConnectionError(f"welcome not accepted: {result}")
        client.buffer = buffer  # a push may follow the welcome in the same read
        return welcomed

    def run(self, until: float) -> None:
        """Read pushes until ``time.time()`` reaches ``until``: record, answer pings."""
        while (left := until - time.time()) > 0:
            for fd, _mask in self._epoll.poll(min(left, 1.0)):
                self._read(fd)

    def _read(self, fd: int) -> None:
        client = self._clients[fd]
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # the server closed it: nothing more to read
            self._epoll.unregister(fd)
            return
        arrived = time.time()
        bench = self.bench
        buffer = client.buffer + data
        while (parsed := frames.parse(buffer)) is not None:
            opcode, payload, buffer = parsed
            if opcode == frames.TEXT:
                bench.record(arrived * 1000 - bench.timestamp_of(payload))
            elif opcode == frames.PING:  # answer, as a real client would
                client.sock.send(frames.encode(frames.PONG, payload))
        client.buffer = buffer

    def close(self) -> None:
        """Close every connection and the epoll."""
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
        self._epoll.close()
