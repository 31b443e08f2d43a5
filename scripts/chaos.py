"""Fault runs against a real server process, with figures for docs/reliability.md.

    python -m scripts.chaos kill       # SIGKILL + restart while 1000 clients encrypt
    python -m scripts.chaos stalled    # 10% of 1000 clients stop reading
    python -m scripts.chaos storm      # 10 000 clients, server restarted (scripts/storm.py)
    python -m scripts.chaos storm --workers 2   # the same against two workers
    python -m scripts.chaos all [--json]
    python -m scripts.chaos rotate     # the secret rotates by reload under 1000 clients
    python -m scripts.chaos soak --minutes 30       # memory under churn (scripts/soak.py)
    python -m scripts.chaos client-soak --minutes 10

Every scenario runs ``arraycrypto serve`` on 127.0.0.1 and its clients in another
process, bounds every wait, and ends every process it starts. The network faults (cut,
black-hole, delay, restore, failover) are exercised by tests/test_faults.py through a
TCP proxy; this script covers what needs scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.storm import scenario_storm
from tests.harness.constants import HOST, SECRET
from tests.harness.light import (
    connect_light,
    end,
    raise_fd_limit,
    read_tagged,
    spawn,
)
from tests.harness.proc import rss_kib
from tests.harness.servers import fetch_metric, serve_process

MODULE = "scripts.chaos"  # children run as `python -m scripts.chaos`


def child(*args: str) -> Any:
    """This script again, in a child process, in one of its client roles."""
    return spawn(MODULE, *args)


# -- kill: SIGKILL and restart while 1000 CryptoClients encrypt ----------------------------


async def kill_clients(port: int, n: int, seconds: float, max_drift: float) -> None:
    import anyio

    from arraycrypto import ConnectionState, CryptoClient, CryptoConfig, Keyring, SnapshotError

    raise_fd_limit()
    config = CryptoConfig(
        server_url=f"http://{HOST}:{port}",
        secret_key=SECRET,
        max_drift=max_drift,
        snapshot_timeout=60,
    )
    clients = [CryptoClient(config) for _ in range(n)]
    made: list[tuple[bytes, bytes]] = []
    fresh_failures = stale_failures = 0
    reconnected: dict[int, float] = {}
    lost: set[int] = set()

    async def enter(c: CryptoClient, *, task_status: Any) -> None:
        async with c:
            task_status.started()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        for c in clients:
            await tg.start(enter, c)
        with anyio.fail_after(120):
            for c in clients:
                await c.authenticate()
        print("READY", flush=True)
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            now = time.time()
            for k, c in enumerate(clients):
                if c.state is not ConnectionState.CONNECTED:
                    lost.add(k)
                elif k in lost and k not in reconnected:
                    reconnected[k] = now
                data = b"%d" % i
                i += 1
                snap = c.snapshot
                try:
                    made.append((c.encrypt(data), data))
                except SnapshotError:
                    fresh = snap is not None and now * 1000 - snap.timestamp < max_drift * 1000
                    fresh_failures += fresh
                    stale_failures += not fresh
            await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    ring = Keyring(SECRET)
    undecryptable = sum(ring.decrypt(t) != d for t, d in made)
    print(
        "RESULT "
        + json.dumps(
            {
                "clients": n,
                "encrypted": len(made),
                "undecryptable": undecryptable,
                "failures_while_fresh": fresh_failures,
                "failures_when_expired": stale_failures,
                "lost": len(lost),
                "reconnected": len(reconnected),
                "last_reconnect": max(reconnected.values()) if reconnected else None,
            }
        ),
        flush=True,
    )


def scenario_kill(n: int = 1000, down: float = 2.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = serve_process(Path(tmp), tick_interval=1.0)
        server.start()
        clients = None
        try:
            clients = child("_kill", str(server.port), str(n), "12", "30")
            read_tagged(clients, "READY", 300)
            time.sleep(2)
            server.kill()
            killed = time.time()
            time.sleep(down)
            server.start()
            restarted = time.time()
            result: dict[str, Any] = json.loads(read_tagged(clients, "RESULT", 300))
        finally:
            end(clients)
            server.kill()
    last = result.pop("last_reconnect")
    result["down_s"] = round(restarted - killed, 2)
    result["all_reconnected_s_after_restart"] = (
        round(last - restarted, 2) if last and result["reconnected"] == n else None
    )
    return result


# -- stalled readers -------------------------------------------------------------------------


async def stalled_clients(port: int, n: int, stalled: int, ticks: int) -> None:
    raise_fd_limit()
    bench, protos = await connect_light(port, n, 60)
    silent = protos[:stalled]
    for proto in silent:  # these stop reading: the kernel buffers fill, no pongs go back
        assert proto.transport is not None
        proto.transport.pause_reading()
    live = protos[stalled:]
    print("READY", flush=True)
    await asyncio.sleep(1 - time.time() % 1 + 0.5)
    bench.recording = True
    await asyncio.sleep(ticks)
    bench.recording = False
    lat = sorted(bench.latencies)
    print(
        "RESULT "
        + json.dumps(
            {
                "clients": n,
                "stalled": stalled,
                "samples": len(lat),
                "expected_samples": len(live) * ticks,
                "p50_ms": lat[len(lat) // 2],
                "p99_ms": lat[int(len(lat) * 0.99)],
            }
        ),
        flush=True,
    )
    for proto in protos:
        if proto.transport is not None:
            proto.transport.close()


def scenario_stalled(n: int = 1000, ticks: int = 15) -> dict[str, Any]:
    runs = {}
    for stalled in (0, n // 10):
        with tempfile.TemporaryDirectory() as tmp:
            server = serve_process(
                Path(tmp), tick_interval=1.0, ping_interval=2.0, ping_timeout=2.0
            )
            server.start()
            clients = None
            try:
                rss0 = rss_kib(server.pid)
                clients = child("_stalled", str(server.port), str(n), str(stalled), str(ticks))
                read_tagged(clients, "READY", 300)
                rss = []
                for _ in range(ticks + 1):  # the child measures for `ticks` seconds
                    rss.append(rss_kib(server.pid))
                    time.sleep(1)
                result: dict[str, Any] = json.loads(read_tagged(clients, "RESULT", 60))
                result["dropped_by_ping"] = fetch_metric(
                    server.port, 'arraycrypto_dropped_clients_total{reason="ping"}'
                )
                result["dropped_slow"] = fetch_metric(
                    server.port, 'arraycrypto_dropped_clients_total{reason="slow"}'
                )
                result["server_rss_kib_start"] = rss0
                result["server_rss_kib_max"] = max(rss)
                result["server_rss_kib_end"] = rss[-1]
            finally:
                end(clients)
                server.kill()
        runs["with_stalled" if stalled else "without_stalled"] = result
    runs["p99_ratio"] = runs["with_stalled"]["p99_ms"] / runs["without_stalled"]["p99_ms"]
    return runs


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("soak", "client-soak"):
        from scripts import soak

        return soak.main(sys.argv[1:])
    if len(sys.argv) > 1 and sys.argv[1] == "rotate":
        from scripts import rotate

        return rotate.main(sys.argv[1:])
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role, nums = sys.argv[1], [float(a) for a in sys.argv[2:]]
        if role == "_kill":
            import anyio

            anyio.run(kill_clients, int(nums[0]), int(nums[1]), nums[2], nums[3])
        elif role == "_stalled":
            asyncio.run(stalled_clients(int(nums[0]), int(nums[1]), int(nums[2]), int(nums[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["kill", "stalled", "storm", "all"])
    parser.add_argument(
        "--clients", type=int, default=10_000, help="storm: clients (default 10 000)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="storm: the server's --workers (default 1)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = {
        "kill": scenario_kill,
        "stalled": scenario_stalled,
        "storm": lambda: scenario_storm(args.clients, args.workers),
    }
    chosen = list(runs) if args.scenario == "all" else [args.scenario]
    results = {}
    for name in chosen:
        results[name] = runs[name]()
        if not args.json:
            print(f"== {name}")
            print(json.dumps(results[name], indent=2))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
