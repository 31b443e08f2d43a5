"""Replicas behind the real HAProxy, running the shipped deploy/haproxy.cfg, and clients.

- :func:`render`: deploy/haproxy.cfg for this machine (the only lines it changes are the
  frontend's ``bind``, the ``server`` lines, the stats socket and the process identity)
- :class:`HAProxy`: ``haproxy`` as a child process, and its stats socket
- :class:`Fleet`: replicas (``arraycrypto serve`` processes sharing one config) and one
  HAProxy in front of them; a replica can be killed, drained, restarted on its port
- :class:`Workload`: ``CryptoClient``\\ s encrypting on a beat, every failure classified,
  every reconnection timed (for the rate during a drain)

Used by tests/test_haproxy.py and scripts/lb.py. Blocking calls (starting and waiting for
processes) are plain functions: from async code, run them with ``anyio.to_thread``.
"""

from __future__ import annotations

import csv
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from arraycrypto import (
    ConnectionState,
    CryptoClient,
    Keyring,
    ServerConfig,
    SnapshotError,
    save_config,
)

from .constants import HOST, SECRET
from .light import ROOT
from .servers import ServeProcess

__all__ = [
    "BACKEND",
    "SHIPPED",
    "Fleet",
    "HAProxy",
    "Reconnect",
    "Workload",
    "free_port",
    "haproxy_binary",
    "health",
    "render",
    "spread",
]

#: The HAProxy config the repository ships, and that the tests run.
SHIPPED = ROOT / "deploy" / "haproxy.cfg"
#: The backend whose servers are the replicas, in the shipped config.
BACKEND = "arraycrypto_replicas"


def haproxy_binary() -> str | None:
    """The ``haproxy`` executable, or None when it is not installed."""
    # Debian installs it in /usr/sbin, which an unprivileged PATH may lack.
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _replace(text: str, pattern: str, new: str, count: int) -> str:
    """Replace the lines matching ``pattern``; there must be exactly ``count`` of them."""
    rx = re.compile(pattern, re.MULTILINE)
    found = len(rx.findall(text))
    if found != count:
        raise ValueError(f"deploy/haproxy.cfg: {found} lines match {pattern!r}, expected {count}")
    return rx.sub(new, text)


def render(text: str, *, port: int, replicas: Sequence[tuple[str, int]], stats: Path) -> str:
    """The shipped config for this machine: HAProxy on ``port``, ``replicas`` behind it.

    Every other line is kept as shipped. A change to the shipped file's shape that these
    substitutions no longer fit raises, rather than silently testing something else.
    """
    text = _replace(text, r"^(\s*)bind :8000$", rf"\g<1>bind {HOST}:{port}", 1)
    text = _replace(text, r"^\s*(user|group|chroot) .*\n", "", 3)
    text = _replace(
        text, r"^(\s*stats socket )/run/haproxy/arraycrypto\.sock( .*)$", rf"\g<1>{stats}\2", 1
    )
    servers = "".join(f"    server {name} {HOST}:{p}\n" for name, p in replicas)
    # The shipped example's three server lines, one after the other, become ours.
    return _replace(text, r"^(\s*server replica\d+ .*\n){3}", servers, 1)


def _parse_stat(raw: str) -> dict[str, dict[str, str]]:
    lines = raw.lstrip("# ").splitlines()
    return {
        f"{row['pxname']}/{row['svname']}": row for row in csv.DictReader(lines) if row["pxname"]
    }


class HAProxy:
    """``haproxy -db -f CONFIG`` as a child process, its output in ``log``."""

    def __init__(self, directory: Path, replicas: Sequence[tuple[str, int]]) -> None:
        self.directory = directory
        self.port = free_port()
        self.socket = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        self.config.write_text(
            render(SHIPPED.read_text(), port=self.port, replicas=replicas, stats=self.socket)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What a client's ``server_url`` is: the balancer, never a replica."""
        return f"http://{HOST}:{self.port}"

    def check(self) -> str:
        """``haproxy -c``: the rendered config is valid (raises with the output if not)."""
        binary = haproxy_binary()
        assert binary is not None
        done = subprocess.run(
            [binary, "-c", "-f", str(self.config)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"haproxy -c failed:\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def start(self, timeout: float = 10.0) -> None:
        """Start HAProxy and return once its stats socket answers."""
        binary = haproxy_binary()
        assert binary is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"haproxy did not start:\n{self.log.read_text()}")

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``...); its whole answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    async def acommand(self, line: str) -> str:
        """:meth:`command` without blocking the event loop."""
        async with await anyio.connect_unix(self.socket) as s:
            await s.send(line.encode() + b"\n")
            chunks = []
            with anyio.fail_after(5):
                while True:
                    try:
                        chunks.append(await s.receive())
                    except anyio.EndOfStream:
                        break
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat``: one row per proxy and server, keyed ``proxy/server``."""
        return _parse_stat(self.command("show stat"))

    async def astats(self) -> dict[str, dict[str, str]]:
        """:meth:`stats` without blocking the event loop."""
        return _parse_stat(await self.acommand("show stat"))

    async def server(self, name: str) -> dict[str, str]:
        """The stats row of one replica: ``status`` (UP, DOWN, ...), ``check_status``..."""
        return (await self.astats())[f"{BACKEND}/{name}"]

    async def wait_status(self, name: str, status: str, timeout: float = 10.0) -> None:
        """Wait until HAProxy reports ``status`` for replica ``name`` (exactly)."""
        with anyio.fail_after(timeout):
            while (await self.server(name))["status"] != status:
                await anyio.sleep(0.05)

    def stop(self) -> None:
        """End HAProxy (SIGTERM: a hard stop), killing it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def health(port: int) -> dict[str, Any]:
    """``GET /health`` straight from a replica: status and ``subscribed`` clients."""
    import json

    from .http import http_get

    status, _, body = await http_get(port, "/health")
    return {"code": status, **json.loads(body)}


class Fleet:
    """``replicas`` servers with one config (one secret), HAProxy in front of them.

    A context manager: on exit every process it started is ended. ``names[i]`` is
    replica ``i``'s name in HAProxy (``replica1``...).
    """

    def __init__(self, directory: Path, replicas: int = 2, **config: Any) -> None:
        self.directory = directory
        self.config_path = directory / "server_config.json"
        self.server_config = ServerConfig(secret_key=SECRET, host=HOST, port=0, **config)
        save_config(self.config_path, self.server_config)
        self.names = [f"replica{i + 1}" for i in range(replicas)]
        self.replicas = [
            ServeProcess("--config", str(self.config_path), log=directory / f"{name}.log")
            for name in self.names
        ]
        self.haproxy: HAProxy | None = None

    @property
    def lb(self) -> HAProxy:
        """The running HAProxy."""
        assert self.haproxy is not None
        return self.haproxy

    def start(self) -> None:
        """Start the replicas, then HAProxy (replicas not yet up would get checked down)."""
        ports = [replica.start() for replica in self.replicas]
        self.haproxy = HAProxy(self.directory, list(zip(self.names, ports, strict=True)))
        self.haproxy.start()

    async def all_up(self, timeout: float = 15.0) -> None:
        """Wait until HAProxy reports every replica UP."""
        for name in self.names:
            await self.lb.wait_status(name, "UP", timeout)

    async def subscribed(self) -> list[int]:
        """Each replica's subscribed clients (0 for one that does not answer)."""
        counts = []
        for replica in self.replicas:
            try:
                counts.append(int((await health(replica.port))["subscribed"]))
            except OSError:
                counts.append(0)
        return counts

    async def restart(self, i: int) -> None:
        """Start replica ``i`` again on its port; return once HAProxy has it UP."""
        await anyio.to_thread.run_sync(self.replicas[i].start)
        await self.lb.wait_status(self.names[i], "UP", timeout=15)

    async def drain(self, i: int) -> int:
        """SIGTERM replica ``i`` (it drains for drain_seconds); wait for it to exit."""
        replica = self.replicas[i]
        replica.signal(signal.SIGTERM)
        timeout = self.server_config.drain_seconds + 15
        return await anyio.to_thread.run_sync(replica.wait, timeout)

    def stop(self) -> None:
        """End HAProxy and every replica."""
        if self.haproxy is not None:
            self.haproxy.stop()
        for replica in self.replicas:
            replica.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class Reconnect:
    """One client's reconnection: it left CONNECTED at ``lost``, had a new session at ``back``."""

    client: int
    lost: float
    back: float


@dataclass
class Workload:
    """Clients that encrypt every ``every`` seconds; failures and reconnections recorded.

    A failure is *fresh* when the client's cached snapshot was younger than
    ``max_drift`` (it should have encrypted), else *expired*. Times are ``time.monotonic``.
    """

    clients: list[CryptoClient]
    max_drift: float
    every: float = 0.05
    made: list[tuple[bytes, bytes]] = field(default_factory=list)
    failures_fresh: int = 0
    failures_expired: int = 0
    reconnects: list[Reconnect] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Encrypt and watch until cancelled; started once every client is authenticated."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._encrypt)
            tg.start_soon(self._watch)
            task_status.started()

    async def _encrypt(self) -> None:
        n = 0
        while True:
            for client in self.clients:
                data = b"%d" % n
                n += 1
                snapshot = client.snapshot
                try:
                    self.made.append((client.encrypt(data), data))
                except SnapshotError as exc:
                    age_ms = time.time() * 1000 - snapshot.timestamp if snapshot else None
                    if age_ms is not None and age_ms < self.max_drift * 1000:
                        self.failures_fresh += 1
                        self.errors.append(str(exc))
                    else:
                        self.failures_expired += 1
            await anyio.sleep(self.every)

    async def _watch(self) -> None:
        # Polled (10 ms) rather than hooked: the client's public state is what is tested.
        sessions = [client.session_id for client in self.clients]
        lost: list[float | None] = [None] * len(self.clients)
        while True:
            now = time.monotonic()
            for i, client in enumerate(self.clients):
                if client.state is not ConnectionState.CONNECTED and lost[i] is None:
                    lost[i] = now
                session = client.session_id
                if session != sessions[i] and client.state is ConnectionState.CONNECTED:
                    self.reconnects.append(Reconnect(i, lost[i] or now, now))
                    sessions[i] = session
                    lost[i] = None
            await anyio.sleep(0.01)

    def since(self, start: float) -> list[Reconnect]:
        """The reconnections that ended after ``start``."""
        return [r for r in self.reconnects if r.back >= start]

    async def wait_back(self, start: float, count: int, timeout: float = 10.0) -> list[Reconnect]:
        """Wait until ``count`` reconnections ended after ``start`` and all are connected."""
        with anyio.fail_after(timeout):
            while len(self.since(start)) < count or not self.connected:
                await anyio.sleep(0.01)
        return self.since(start)

    def undecryptable(self) -> int:
        """Ciphertexts that do not decrypt to what was encrypted (the secret alone)."""
        ring = Keyring(SECRET)
        return sum(ring.decrypt(token) != data for token, data in self.made)

    @property
    def connected(self) -> bool:
        """Whether every client is connected."""
        return all(c.state is ConnectionState.CONNECTED for c in self.clients)


def spread(times: Sequence[float], start: float, bucket: float = 0.1) -> dict[str, Any]:
    """Reconnection times (after ``start``) in ``bucket``-second bins: the rate's shape."""
    if not times:
        return {"count": 0}
    offsets = sorted(t - start for t in times)
    bins: dict[int, int] = {}
    for offset in offsets:
        bins[int(offset // bucket)] = bins.get(int(offset // bucket), 0) + 1
    return {
        "count": len(offsets),
        "first_s": round(offsets[0], 3),
        "last_s": round(offsets[-1], 3),
        "span_s": round(offsets[-1] - offsets[0], 3),
        "max_per_bucket": max(bins.values()),
        "buckets_used": len(bins),
    }
