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
:class:`StormClients` also reconnect the way ``CryptoClient``'s connector does (at once
after an authenticated connection ends, then with its full-jitter backoff), for the
reconnect storm (scripts/storm.py).
TLS stays with :mod:`.light` (a handshake per socket is not worth a second TLS
client here).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import heapq
import itertools
import os
import select
import socket
import time
from collections.abc import Callable

from arraycrypto.client.connector import backoff
from arraycrypto.core.handshake import Accepted, ClientSession, SnapshotPolicy

from . import frames
from .constants import HOST
from .light import ClientBench

__all__ = ["EpollClients", "StormClients"]

_REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Client:
    """One connection's state: its socket, unparsed bytes, handshake session."""

    __slots__ = ("attempt", "buffer", "pongs", "session", "sock", "upgraded")

    def __init__(self, sock: socket.socket, attempt: int) -> None:
        self.sock = sock
        self.attempt = attempt  # failed attempts before this one (for a backoff)
        self.buffer = b""
        self.upgraded = False
        self.session: ClientSession | None = None
        self.pongs = 0  # pings answered


class EpollClients:
    """Many plain-TCP WebSocket clients of one server, driven by one epoll loop.

    :meth:`connect` opens and authenticates them; :meth:`run` then reads pushes until a
    given time, recording latencies into ``bench`` while its ``recording`` is set.
    Subclasses decide what a failed attempt and a lost connection mean
    (:meth:`_failed`, :meth:`_lost`: here, an error and nothing).
    """

    def __init__(self, port: int, bench: ClientBench | None = None, path: str = "/ws") -> None:
        self.port = port
        self.bench = bench or ClientBench()
        self.path = path
        self._epoll = select.epoll()
        self._pending: dict[int, _Client] = {}  # connecting or in the handshake
        self._clients: dict[int, _Client] = {}  # authenticated

    def __len__(self) -> int:
        return len(self._clients)

    def pongs(self) -> list[int]:
        """How many pings each authenticated client has answered."""
        return [client.pongs for client in self._clients.values()]

    @property
    def pending(self) -> int:
        """Connections not yet authenticated."""
        return len(self._pending)

    def connect(self, n: int, timeout: float, in_flight: int = 256) -> None:
        """Open ``n`` connections (``in_flight`` at most at once) until all authenticated.

        Raises ConnectionError if one is refused or closed before its welcome (unless
        :meth:`_failed` retries), and TimeoutError after ``timeout`` seconds.
        """
        target = len(self) + n
        self.until(lambda: len(self) >= target, timeout, start=n, in_flight=in_flight)

    def until(
        self, done: Callable[[], bool], timeout: float, start: int = 0, in_flight: int = 256
    ) -> None:
        """Drive the loop until ``done()``; first dial ``start`` clients, ``in_flight`` at once."""
        deadline = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"{len(self)} authenticated, {self.pending} pending after {timeout} s"
                )
            while start and self.pending < in_flight:
                self._dial(0)
                start -= 1
            self._poll(min(self._due(now), deadline - now, 0.05))

    def run(self, until: float) -> None:
        """Read pushes until ``time.time()`` reaches ``until``: record, answer pings."""
        while (left := until - time.time()) > 0:
            self._poll(min(left, 1.0))

    def close(self) -> None:
        """Close every connection and the epoll."""
        for client in (*self._pending.values(), *self._clients.values()):
            client.sock.close()
        self._pending.clear()
        self._clients.clear()
        self._epoll.close()

    # -- what subclasses may change ----------------------------------------------------

    def _failed(self, client: _Client, error: Exception) -> None:
        """An attempt failed before its welcome (its socket is closed): raise by default."""
        raise error

    def _authenticated(self, client: _Client) -> None:
        """A connection got its welcome."""

    def _lost(self, client: _Client) -> None:
        """An authenticated connection ended (its socket is closed)."""

    def _due(self, now: float) -> float:
        """Do what is due at ``now``; return how long the loop may then wait."""
        return 1.0

    # -- the loop ------------------------------------------------------------------------

    def _dial(self, attempt: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(sock, attempt)
        error = sock.connect_ex((HOST, self.port))
        if error not in (0, errno.EINPROGRESS):  # on loopback a refusal is immediate
            sock.close()
            self._failed(client, ConnectionRefusedError(error, os.strerror(error)))
            return
        self._pending[sock.fileno()] = client
        self._epoll.register(sock.fileno(), select.EPOLLOUT)  # writable once connected

    def _poll(self, timeout: float) -> None:
        for fd, mask in self._epoll.poll(timeout):
            client = self._pending.get(fd)
            if client is None:
                self._read(fd)
                continue
            try:
                if mask & select.EPOLLOUT:
                    self._connected(client)
                elif self._handshake(client):
                    del self._pending[fd]
                    self._clients[fd] = client
                    self._authenticated(client)
                    self._frames(client, time.time())  # what followed the welcome
            except OSError as exc:  # ConnectionError included: refused, closed, 503
                del self._pending[fd]
                self._epoll.unregister(fd)
                client.sock.close()
                self._failed(client, exc)

    def _connected(self, client: _Client) -> None:
        sock = client.sock
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise ConnectionError(error, os.strerror(error))
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

    def _read(self, fd: int) -> None:
        client = self._clients[fd]
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # the server closed it
            del self._clients[fd]
            self._epoll.unregister(fd)
            client.sock.close()
            self._lost(client)
            return
        client.buffer += data
        self._frames(client, time.time())

    def _frames(self, client: _Client, arrived: float) -> None:
        """Handle every whole frame in the client's buffer: record pushes, answer pings."""
        bench = self.bench
        buffer = client.buffer
        while (parsed := frames.parse(buffer)) is not None:
            opcode, payload, buffer = parsed
            if opcode == frames.TEXT:
                bench.record(arrived * 1000 - bench.timestamp_of(payload))
            elif opcode == frames.PING:  # answer, as a real client would
                client.pongs += 1
                with contextlib.suppress(OSError):  # gone: the next read says so
                    client.sock.send(frames.encode(frames.PONG, payload))
        client.buffer = buffer


class StormClients(EpollClients):
    """Epoll clients that reconnect like ``CryptoClient``: at once, then with backoff."""

    def __init__(self, port: int, max_delay: float = 30.0) -> None:
        super().__init__(port)
        self.max_delay = max_delay  # the client's reconnect_max_delay
        self.auth_times: list[float] = []
        self.closing = False
        self._timers: list[tuple[float, int, int]] = []  # (due, tie-break, attempt)
        self._order = itertools.count()

    def _authenticated(self, client: _Client) -> None:
        self.auth_times.append(time.time())

    def _lost(self, client: _Client) -> None:
        if not self.closing:
            self._dial(0)  # after a success: again at once (the connector's rule)

    def _failed(self, client: _Client, error: Exception) -> None:
        if not self.closing:
            due = time.monotonic() + backoff(client.attempt, self.max_delay)
            heapq.heappush(self._timers, (due, next(self._order), client.attempt + 1))

    def _due(self, now: float) -> float:
        while self._timers and self._timers[0][0] <= now:
            self._dial(heapq.heappop(self._timers)[2])  # a backoff ended: the next attempt
        return max(0.0, self._timers[0][0] - now) if self._timers else 1.0
