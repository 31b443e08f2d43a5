"""What a task per connection costs the server: the same handshakes driven without one.

    python -m scripts.connect_floor                  # 10 000 connections, 3 runs
    python -m scripts.connect_floor --clients 5000 --runs 5

Three servers in turn, each connecting N of ``bench_fanout``'s epoll clients (the real
upgrade, challenge-response handshake and snapshot check), every run:

- **arraycrypto**: ``bench_fanout``'s server (``arraycrypto.Server`` with the paced
  collector policy: its room, where a plain-TCP connection waits with no task of its
  own through its handshake and then as a subscriber);
- **one epoll**: the same pure core (:class:`~arraycrypto.core.server_connection.
  ServerConnection`: the same parsing, upgrade, handshake and welcome) driven by a loop
  in one task that waits on a nested ``epoll`` (``anyio.wait_readable`` on the epoll's
  descriptor) and reads whichever sockets are ready, with no task, cancel scope or
  readiness registration per connection (:func:`run_floor_server`);
- **baseline**: websockets' own server doing the same handshake (``bench_fanout``'s).

It reports the wall time until all N are authenticated and the server's CPU per
connection (user and system, from ``/proc``), medians of the runs and ratios.

The "one epoll" server is a measurement, not a server: it does what a successful
handshake needs and nothing else (no admission, deadlines, HTTP answers, TLS, ticks,
pings, close handshake, a task for the subscribed connection, or a write the kernel
does not take at once). So it is the floor of a design with no task per connection at
all; how far ``arraycrypto`` is above it is what those cost. Linux only (epoll). Only
127.0.0.1; every process started is ended.
"""

from __future__ import annotations

import argparse
import os
import secrets
import select
import socket
import statistics
import subprocess
import sys
import time

from arraycrypto.core import http
from arraycrypto.core.keyring import Keyring
from arraycrypto.core.keys import CHALLENGE_SIZE
from arraycrypto.core.server_connection import ServerConnection, Subscribed
from scripts.fanout_children import bench_config
from tests.harness.constants import HOST
from tests.harness.epoll_clients import EpollClients
from tests.harness.light import ROOT, end, raise_fd_limit, read_tagged

#: Ticks an hour apart: connecting only.
TICK = 3600.0
_SERVERS = {
    "arraycrypto": ["scripts.bench_fanout", "_server", "arraycrypto", str(TICK), "asyncio"],
    "one epoll": ["scripts.connect_floor", "_server"],
    "baseline": ["scripts.bench_fanout", "_server", "baseline", str(TICK), "asyncio"],
}


class _Socket:
    """One accepted socket: its connection once upgraded, or the head read so far."""

    __slots__ = ("conn", "head", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn: ServerConnection | None = None
        self.head = b""


class FloorServer:
    """The pure core's handshakes, every socket read from one nested epoll (see above)."""

    def __init__(self) -> None:
        self.config = bench_config(TICK)
        self.keyring = Keyring(self.config.secret_key)
        snapshot = self.keyring.new_snapshot(1, os.urandom(16), int(time.time() * 1000))
        self.current = lambda: snapshot
        self.listener = socket.create_server((HOST, 0), backlog=4096)
        self.listener.setblocking(False)
        self.poller = select.epoll()
        self.poller.register(self.listener.fileno(), select.EPOLLIN)
        self.sockets: dict[int, _Socket] = {}

    async def serve(self) -> None:
        """Wait for the epoll, then serve every ready socket; until cancelled."""
        import anyio

        listening = self.listener.fileno()
        while True:
            await anyio.wait_readable(self.poller.fileno())
            for fd, _ in self.poller.poll(0):
                if fd == listening:
                    self.accept()
                else:
                    self.read(fd)

    def accept(self) -> None:
        """Accept every pending connection and watch it."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets[sock.fileno()] = _Socket(sock)
            self.poller.register(sock.fileno(), select.EPOLLIN)

    def read(self, fd: int) -> None:
        """Read a ready socket and feed its connection (upgrading it first)."""
        entry = self.sockets[fd]
        try:
            data = entry.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self.poller.unregister(fd)
            entry.sock.close()
            del self.sockets[fd]
            return
        now = time.monotonic()
        conn = entry.conn
        if conn is None:
            data = entry.head + data
            size = http.find_head_end(data)
            if size < 0:
                entry.head = data
                return
            conn = ServerConnection.upgrade(
                http.parse_request_head(data[:size]),
                key=self.keyring.primary,
                challenge=os.urandom(CHALLENGE_SIZE),
                session_id=secrets.token_hex(6),
                tick_interval=TICK,
                max_frame_size=self.config.max_frame_size,
                current=self.current,
                now=now,
                deadline=now + self.config.handshake_timeout,
            )
            if conn is None:
                raise RuntimeError("the epoll clients send valid upgrades")
            entry.conn, entry.head = conn, b""
            self.send(entry.sock, conn)
            data = data[size:]
            if not data:
                return
        events = conn.receive_data(data, now)
        if not all(isinstance(event, Subscribed) for event in events):
            raise RuntimeError(f"a handshake failed: {events}")
        self.send(entry.sock, conn)

    @staticmethod
    def send(sock: socket.socket, conn: ServerConnection) -> None:
        """Send what the connection queued; handshake answers fit the kernel's buffer."""
        data = b"".join(conn.data_to_send())
        if data and sock.send(data) != len(data):
            raise RuntimeError("a partial write: not what this floor measures")


def run_floor_server() -> None:
    """Serve handshakes until killed, with the collector policy the other servers run."""
    import anyio

    from arraycrypto.server.tuning import pace_gc, tune_process

    server = FloorServer()
    tune_process(server.config.max_connections, "paced")
    print(f"PORT {server.listener.getsockname()[1]}", flush=True)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pace_gc)
            await server.serve()

    anyio.run(main)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's user and system CPU time so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measure(server: str, clients: int) -> tuple[float, float, float]:
    """Connect ``clients`` to a fresh ``server``: (wall s, user µs/conn, system µs/conn)."""
    child = subprocess.Popen(
        [sys.executable, "-m", *_SERVERS[server]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    epoll_clients = None
    try:
        port = int(read_tagged(child, "PORT", 60))
        user0, system0 = cpu_seconds(child.pid)
        started = time.perf_counter()
        epoll_clients = EpollClients(port)
        epoll_clients.connect(clients, 300)
        wall = time.perf_counter() - started
        user1, system1 = cpu_seconds(child.pid)
    finally:
        if epoll_clients is not None:
            epoll_clients.close()
        end(child)
    return wall, (user1 - user0) * 1e6 / clients, (system1 - system0) * 1e6 / clients


def main() -> int:
    if sys.argv[1:2] == ["_server"]:
        raise_fd_limit()
        run_floor_server()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per server (medians)")
    args = parser.parse_args()
    raise_fd_limit()
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in _SERVERS}
    for run in range(args.runs):
        for name in _SERVERS:  # interleaved: a slow minute hits every server
            results[name].append(measure(name, args.clients))
            wall, user, system = results[name][-1]
            print(
                f"run {run + 1} {name}: {wall:.2f} s, {user + system:.0f} µs/conn", file=sys.stderr
            )
    medians = {
        name: tuple(statistics.median(values) for values in zip(*runs, strict=True))
        for name, runs in results.items()
    }
    ours = medians["arraycrypto"][1] + medians["arraycrypto"][2]
    print(f"{args.clients} connections, medians of {args.runs} runs")
    header = ("server", "connect s", "user µs", "sys µs", "CPU/conn", "vs ours")
    print("{:>12} {:>10} {:>8} {:>7} {:>9} {:>8}".format(*header))
    for name, (wall, user, system) in medians.items():
        print(
            f"{name:>12} {wall:10.2f} {user:8.0f} {system:7.0f}"
            f" {user + system:7.0f}µs {(user + system) / ours:7.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
