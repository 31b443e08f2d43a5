"""The child processes of scripts/bench_fanout.py: the two servers and the clients.

Each runs in its own process, started by the parent as
``python -m scripts.bench_fanout _server MODE INTERVAL LOOP`` or
``python -m scripts.bench_fanout _clients PORT N TICKS INTERVAL``; each prints one tagged
line (``PORT``, ``CONNECTED``, ``RESULT``) that the parent reads.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import ssl
import time
from typing import Any

from arraycrypto import Keyring, ServerConfig
from arraycrypto.core import messages as m
from tests.harness.constants import HOST, SECRET
from tests.harness.epoll_clients import EpollClients
from tests.harness.light import ClientBench, connect_light, raise_fd_limit

# Set by the parent for --tls: a directory with cert.pem, key.pem (server) and ca.pem.
TLS_DIR_ENV = "BENCH_FANOUT_TLS_DIR"
# Set by scripts/bench_split.py: listen with SO_REUSEPORT on this port (0: pick one), so
# independent servers share a port the way `serve --workers` does, without a supervisor.
SHARED_PORT_ENV = "BENCH_FANOUT_SHARED_PORT"


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


# -- servers (child process) ---------------------------------------------------------------


#: Set by scripts/connect_cost.py: both servers' ping interval and timeout (seconds), so
#: that no ping or pong falls in what it counts.
PING_ENV = "BENCH_FANOUT_PING"


def ping_seconds() -> float:
    """Both servers' ping interval and timeout: 60 s unless the environment says."""
    return float(os.environ.get(PING_ENV, "60"))


def bench_config(interval: float, port: int = 0) -> ServerConfig:
    """The benchmark's server config (in process or the CLI's): long waits, TLS if set."""
    tls = tls_files()
    return ServerConfig(
        secret_key=SECRET,
        host=HOST,
        port=port,
        tick_interval=interval,
        # As many as the fd limit allows (a config above it only logs a warning).
        max_connections=resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100,
        handshake_timeout=60,
        ping_interval=ping_seconds(),
        ping_timeout=ping_seconds(),
        tls_certfile=tls["cert"] if tls else None,
        tls_keyfile=tls["key"] if tls else None,
    )


def run_arraycrypto_server(interval: float, uvloop: bool = False, policy: str = "paced") -> None:
    """``arraycrypto.Server`` in this process, with the collector policy ``policy``."""
    import anyio

    from arraycrypto.server import Server
    from arraycrypto.server.tuning import keep_frozen, pace_gc, tune_process

    config = bench_config(interval, port=int(os.environ.get(SHARED_PORT_ENV, "0")))

    tune_process(config.max_connections, policy)  # as `arraycrypto serve` does

    async def main() -> None:
        server = Server(config)
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.run, SHARED_PORT_ENV in os.environ)
            if policy == "paced":  # the collector policy `arraycrypto serve` runs
                tg.start_soon(pace_gc)
            elif policy == "frozen":
                tg.start_soon(keep_frozen)
            print(f"PORT {port}", flush=True)

    anyio.run(main, backend_options={"use_uvloop": True} if uvloop else {})


def run_baseline_server(interval: float, uvloop: bool = False) -> None:
    """websockets' own ``serve()`` and ``broadcast()`` of a same-size snapshot each tick."""
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
            ping_interval=ping_seconds(),
            ping_timeout=ping_seconds(),
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


# -- clients (child process) ---------------------------------------------------------------


def run_clients(port: int, n: int, ticks: int, interval: float) -> None:
    """Connect ``n`` clients, record ``ticks`` ticks' latencies, print the result.

    Plain TCP: the epoll clients (about half the CPU of asyncio's, so that the client
    process leaves the server its cores); TLS: the asyncio light clients.
    """
    raise_fd_limit()
    tls = tls_files()
    if tls:
        asyncio.run(_run_tls_clients(port, n, ticks, interval, tls["ca"]))
        return
    clients = EpollClients(port)
    started = time.perf_counter()
    clients.connect(n, 60)
    connect_s = time.perf_counter() - started
    print(f"CONNECTED {connect_s:.3f}", flush=True)
    gc.freeze()  # see _run_tls_clients
    start = time.time() + interval - time.time() % interval + interval / 2
    clients.run(start)
    clients.bench.recording = True
    clients.run(start + ticks * interval)
    clients.bench.recording = False
    _report(clients.bench, n, ticks, connect_s)
    clients.close()


async def _run_tls_clients(port: int, n: int, ticks: int, interval: float, ca: str) -> None:
    ssl_context = ssl.create_default_context(cafile=ca)
    started = time.perf_counter()
    bench, protocols = await connect_light(port, n, 60, ssl_context=ssl_context)
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
    _report(bench, n, ticks, connect_s)
    for proto in protocols:
        if proto.transport is not None:
            proto.transport.close()


def _report(bench: ClientBench, n: int, ticks: int, connect_s: float) -> None:
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
