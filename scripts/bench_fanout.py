"""Fan-out benchmark: arraycrypto's server against websockets' own serve() + broadcast().

    python scripts/bench_fanout.py                       # N = 1000, 5000, 10000
    python scripts/bench_fanout.py --clients 10000 --runs 3   # medians of 3 runs
    python scripts/bench_fanout.py --tls --clients 1000 5000  # wss on both servers
    python scripts/bench_fanout.py --clients 1000 --ticks 5 --json

For each N, in the same run and with the same hand-made clients (another process):

- ``arraycrypto``: ``arraycrypto.Server`` (anyio driver, one-slot mailboxes, one frame
  serialised per tick);
- ``baseline``: ``websockets.asyncio.server.serve`` with compression off, the same
  handshake (our pure ``ServerSession``), then ``websockets.broadcast()`` of a signed
  snapshot of the same size at the same rate.

The clients speak raw WebSocket over asyncio protocols (light enough for 10 000 in one
process), do the real challenge-response handshake, and record arrival time minus the
``timestamp`` in each push. The parent process samples the server's CPU time and RSS
from /proc. Reported per N and server: p50/p99/max delivery latency, server CPU ms per
tick, server RSS KiB per connection, seconds to connect and authenticate all N.
With ``--tls`` both servers speak wss with a certificate from a throwaway ``trustme``
CA and the clients verify it. With ``--runs R`` each (N, server) pair runs R times,
alternating servers, and every figure is the median of its R runs (these machines are
shared and noisy).
Only 127.0.0.1 is used; every process started is ended.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import msgspec

from arraycrypto import Keyring, ServerConfig
from arraycrypto.core import messages as m

SECRET = bytes(range(32))
HOST = "127.0.0.1"
# Set by the parent for --tls: a directory with cert.pem, key.pem (server) and ca.pem.
TLS_DIR_ENV = "BENCH_FANOUT_TLS_DIR"


def tls_files() -> dict[str, str] | None:
    """The certificate files of a --tls run, or None for plain TCP."""
    tls_dir = os.environ.get(TLS_DIR_ENV)
    if not tls_dir:
        return None
    return {name: os.path.join(tls_dir, f"{name}.pem") for name in ("cert", "key", "ca")}


def make_tls_dir(tls_dir: str) -> None:
    """Write a throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", HOST)
    cert.private_key_pem.write_to_path(os.path.join(tls_dir, "key.pem"))
    cert.cert_chain_pems[0].write_to_path(os.path.join(tls_dir, "cert.pem"))
    ca.cert_pem.write_to_path(os.path.join(tls_dir, "ca.pem"))


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- servers (child process) ---------------------------------------------------------------


def run_arraycrypto_server(interval: float, uvloop: bool = False) -> None:
    import anyio

    from arraycrypto.server import Server

    tls = tls_files()
    config = ServerConfig(
        secret_key=SECRET,
        host=HOST,
        port=0,
        tick_interval=interval,
        # As many as the fd limit allows (a config above it only logs a warning).
        max_connections=resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100,
        handshake_timeout=60,
        ping_interval=60,
        ping_timeout=60,
        tls_certfile=tls["cert"] if tls else None,
        tls_keyfile=tls["key"] if tls else None,
    )

    async def main() -> None:
        server = Server(config)
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.run)
            print(f"PORT {port}", flush=True)

    anyio.run(main, backend_options={"use_uvloop": True} if uvloop else {})


def run_baseline_server(interval: float, uvloop: bool = False) -> None:
    import websockets
    from websockets.asyncio.server import ServerConnection, serve

    from arraycrypto.core.handshake import ServerSession, Violation

    keyring = Keyring(SECRET)
    clients: set[ServerConnection] = set()
    state: dict[str, Any] = {}

    def snapshot() -> Any:
        now = int(time.time() * 1000)
        return keyring.new_snapshot(now // int(interval * 1000), os.urandom(16), now)

    async def handler(ws: ServerConnection) -> None:
        session = ServerSession(keyring.primary, os.urandom(32), os.urandom(6).hex(), interval)
        await ws.send(session.challenge_message().decode())
        try:
            reply = await asyncio.wait_for(ws.recv(), 60)
            welcome = session.receive_text(
                reply.encode() if isinstance(reply, str) else reply, state["snapshot"]
            )
        except (Violation, TimeoutError, websockets.ConnectionClosed):
            return
        await ws.send(welcome.decode())
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async def ticker() -> None:
        while True:
            delay = interval - time.time() % interval
            await asyncio.sleep(delay)
            state["snapshot"] = snap = snapshot()
            text = m.encode(m.SnapshotMessage.from_snapshot(snap)).decode()
            websockets.broadcast(clients, text)

    tls = tls_files()
    ssl_context = None
    if tls:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(tls["cert"], tls["key"])

    async def main() -> None:
        state["snapshot"] = snapshot()
        async with serve(
            handler,
            HOST,
            0,
            ssl=ssl_context,
            compression=None,
            ping_interval=60,
            ping_timeout=60,
            max_size=4096,
            backlog=4096,
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            print(f"PORT {port}", flush=True)
            await ticker()

    if uvloop:
        import uvloop as uv  # type: ignore[import-not-found, unused-ignore]

        uv.run(main())
    else:
        asyncio.run(main())


# -- light clients (child process) -----------------------------------------------------------


class LightClient(asyncio.Protocol):
    """A raw WebSocket client: upgrade, handshake, then record push latencies."""

    def __init__(self, bench: ClientBench) -> None:
        self.bench = bench
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.session: Any = None
        self.authenticated = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
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
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length = int.from_bytes(self.buffer[2:4], "big")
                offset = 4
            elif length == 127:
                length = int.from_bytes(self.buffer[2:10], "big")
                offset = 10
            if len(self.buffer) < offset + length:
                return
            opcode = self.buffer[0] & 0x0F
            payload = self.buffer[offset : offset + length]
            self.buffer = self.buffer[offset + length :]
            if opcode == 0x1:
                self.on_text(payload, arrived)
            elif opcode == 0x9:  # ping: answer, as a real client would
                self.send(0xA, payload)

    def send(self, opcode: int, payload: bytes) -> None:
        from websockets.frames import Frame, Opcode

        assert self.transport is not None
        self.transport.write(Frame(Opcode(opcode), payload).serialize(mask=True))

    def on_text(self, payload: bytes, arrived: float) -> None:
        if self.authenticated.done():
            ts = self.bench.timestamp_of(payload)
            self.bench.record(arrived * 1000 - ts)
            return
        from arraycrypto.core.handshake import Accepted, ClientSession

        if self.session is None:
            self.session = ClientSession(self.bench.keyring, os.urandom(32), max_drift=3600)
        result = self.session.receive_text(payload, int(arrived * 1000))
        if isinstance(result, bytes):
            self.send(0x1, result)
        elif isinstance(result, Accepted) or self.session.session_id is not None:
            self.authenticated.set_result(None)


class _Stamp(msgspec.Struct):
    timestamp: int


class ClientBench:
    def __init__(self) -> None:
        self.keyring = Keyring(SECRET)
        self.recording = False
        self.latencies: list[float] = []
        self._decoder = msgspec.json.Decoder(_Stamp)

    def timestamp_of(self, payload: bytes) -> int:
        return self._decoder.decode(payload).timestamp

    def record(self, ms: float) -> None:
        if self.recording:
            self.latencies.append(ms)


async def run_clients(port: int, n: int, ticks: int, interval: float) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    bench = ClientBench()
    protocols: list[LightClient] = []
    gate = asyncio.Semaphore(256)  # connections in flight at once
    tls = tls_files()
    ssl_context = ssl.create_default_context(cafile=tls["ca"]) if tls else None

    async def one() -> None:
        async with gate:
            _, proto = await loop.create_connection(
                lambda: LightClient(bench),
                HOST,
                port,
                ssl=ssl_context,
                server_hostname="localhost" if ssl_context else None,
            )
            protocols.append(proto)
            await asyncio.wait_for(proto.authenticated, 60)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    connect_s = time.perf_counter() - started
    print(f"CONNECTED {connect_s:.3f}", flush=True)
    # The clients' objects live until the end: keep this process's own garbage
    # collector from scanning them during the measurement (a full collection of
    # 10 000 clients stalls it for a good part of a second, whichever server runs).
    gc.freeze()
    # Start on a tick boundary and record `ticks` whole ticks.
    await asyncio.sleep(interval - time.time() % interval + interval / 2)
    bench.recording = True
    await asyncio.sleep(ticks * interval)
    bench.recording = False
    lat = sorted(bench.latencies)
    result = {
        "clients": n,
        "connect_s": connect_s,
        "samples": len(lat),
        "expected_samples": n * ticks,
        "p50_ms": lat[len(lat) // 2] if lat else None,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
        "max_ms": lat[-1] if lat else None,
    }
    print("RESULT " + json.dumps(result), flush=True)
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()


# -- orchestration (parent process) ----------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_tagged(proc: subprocess.Popen[str], tag: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before {tag}")
        if line.strip() == tag or line.startswith(tag + " "):
            return line[len(tag) :].strip()
    raise TimeoutError(tag)


def measure(mode: str, n: int, ticks: int, interval: float, loop: str) -> dict[str, Any]:
    me = os.path.abspath(__file__)
    server = subprocess.Popen(
        [sys.executable, me, "_server", mode, str(interval), loop],
        stdout=subprocess.PIPE,
        text=True,
    )
    client: subprocess.Popen[str] | None = None
    try:
        port = int(read_tagged(server, "PORT", 60))
        time.sleep(0.5)
        rss0 = proc_rss_kib(server.pid)
        client = subprocess.Popen(
            [sys.executable, me, "_clients", str(port), str(n), str(ticks), str(interval)],
            stdout=subprocess.PIPE,
            text=True,
        )
        read_tagged(client, "CONNECTED", 300)
        cpu0, t0 = proc_cpu_s(server.pid), time.monotonic()
        result: dict[str, Any] = json.loads(read_tagged(client, "RESULT", 120 + ticks * interval))
        cpu1, t1 = proc_cpu_s(server.pid), time.monotonic()
        rss1 = proc_rss_kib(server.pid)
        result["server"] = mode
        result["cpu_ms_per_tick"] = (cpu1 - cpu0) * 1000 / ((t1 - t0) / interval)
        result["rss_kib_per_conn"] = (rss1 - rss0) / n
        return result
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait(timeout=30)
                if p.stdout is not None:
                    p.stdout.close()


def median_row(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of medians over repeated runs (and every run's connect time)."""
    row = dict(results[0])
    for key, value in results[0].items():
        if isinstance(value, float | int) and key != "clients":
            row[key] = statistics.median(r[key] for r in results)
    row["runs"] = len(results)
    row["connect_s_runs"] = [round(r["connect_s"], 2) for r in results]
    return row


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every (N, server) pair args.runs times; one median row per pair."""
    rows: list[dict[str, Any]] = []
    for n in args.clients:
        runs: dict[str, list[dict[str, Any]]] = {"arraycrypto": [], "baseline": []}
        for _ in range(args.runs):
            for mode, results in runs.items():  # alternate, so drifts hit both alike
                results.append(measure(mode, n, args.ticks, args.interval, args.loop))
                if not args.json:
                    r = results[-1]
                    print(
                        f"  measured {mode} N={n}: p99 {r['p99_ms']:.1f} ms,"
                        f" connect {r['connect_s']:.2f} s",
                        file=sys.stderr,
                    )
        rows.extend(median_row(results) for results in runs.values())
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        raise_fd_limit()
        mode, interval = sys.argv[2], float(sys.argv[3])
        use_uvloop = len(sys.argv) > 4 and sys.argv[4] == "uvloop"
        run = run_arraycrypto_server if mode == "arraycrypto" else run_baseline_server
        run(interval, use_uvloop)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_clients":
        port, n, ticks, tick_s = sys.argv[2:6]
        asyncio.run(run_clients(int(port), int(n), int(ticks), float(tick_s)))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--ticks", type=int, default=10, help="ticks measured per run")
    parser.add_argument("--interval", type=float, default=1.0, help="tick interval, s")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of both servers (uvloop must be installed)",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per N and server (medians)")
    parser.add_argument("--tls", action="store_true", help="wss with a throwaway trustme CA")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    limit = raise_fd_limit()
    if max(args.clients) + 100 > limit:
        print(f"fd limit {limit} is too low for {max(args.clients)} clients", file=sys.stderr)
        return 1

    if args.tls:
        with tempfile.TemporaryDirectory(prefix="bench-fanout-tls-") as tls_dir:
            make_tls_dir(tls_dir)
            os.environ[TLS_DIR_ENV] = tls_dir  # inherited by every child process
            rows = collect(args)
    else:
        rows = collect(args)
    by = {(r["server"], r["clients"]): r for r in rows}
    ratios = {}
    for n in args.clients:
        ours, base = by[("arraycrypto", n)], by[("baseline", n)]
        ratios[n] = {
            "cpu": ours["cpu_ms_per_tick"] / base["cpu_ms_per_tick"],
            "p99": ours["p99_ms"] / base["p99_ms"],
            "rss": ours["rss_kib_per_conn"] / base["rss_kib_per_conn"],
            "connect": ours["connect_s"] / base["connect_s"],
        }
    if args.json:
        print(
            json.dumps(
                {"interval_s": args.interval, "ticks": args.ticks, "runs": rows, "ratios": ratios}
            )
        )
        return 0
    print(
        f"{'TLS (wss), ' if args.tls else ''}tick {args.interval}s,"
        f" {args.ticks} ticks measured per run, medians of"
        f" {args.runs} run(s); latency = arrival - snapshot timestamp;"
        " ratio = arraycrypto / baseline"
    )
    head = (
        f"{'N':>6} {'server':>12} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'CPU ms/tick':>11} {'KiB/conn':>8} {'connect s':>9} {'delivered':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['clients']:>6} {r['server']:>12} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f}"
            f" {r['max_ms']:7.1f} {r['cpu_ms_per_tick']:11.1f} {r['rss_kib_per_conn']:8.1f}"
            f" {r['connect_s']:9.2f} {r['samples'] / r['expected_samples']:9.1%}"
        )
    if args.runs > 1:
        print()
        for r in rows:
            runs_s = ", ".join(f"{t:.2f}" for t in r["connect_s_runs"])
            print(f"N={r['clients']} {r['server']}: connect s per run {runs_s}")
    print()
    for n, ratio in ratios.items():
        print(
            f"N={n}: CPU per tick {ratio['cpu']:.2f}x baseline, p99 {ratio['p99']:.2f}x,"
            f" KiB/conn {ratio['rss']:.2f}x, connect time {ratio['connect']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
