"""Replicas behind the real HAProxy (deploy/haproxy.cfg), figures for docs/reliability.md.

    python -m scripts.lb kill       # one replica SIGKILLed while 40 clients encrypt
    python -m scripts.lb rolling    # rolling restart with drain, and with drain_seconds 0
    python -m scripts.lb all [--json] [--clients 40] [--replicas 2] [--drain-seconds 5]

Each scenario starts ``--replicas`` ``arraycrypto serve`` processes with one secret on
127.0.0.1 and HAProxy in front of them, running the shipped deploy/haproxy.cfg with only
the addresses rewritten (``tests/harness/lb.py``), then ``--clients`` ``CryptoClient``\\ s
in this process whose only URL is HAProxy's, each encrypting every 50 ms. Every
ciphertext is decrypted at the end with the secret alone. Reconnections are timed from
the clients' own state (a new session id), polled every 10 ms; the rate during a drain
is counted in 100 ms buckets from the replica's SIGTERM. Every wait is bounded and every
process is ended. The bounded version runs in CI: tests/test_haproxy.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from arraycrypto import CryptoClient, CryptoConfig
from tests.harness.constants import SECRET
from tests.harness.lb import BACKEND, Fleet, Workload, haproxy_binary, spread
from tests.harness.light import raise_fd_limit

MAX_DRIFT = 30.0  # seconds a cached snapshot may still encrypt (as in chaos.py kill)


@asynccontextmanager
async def clients_through(fleet: Fleet, n: int) -> AsyncIterator[Workload]:
    """``n`` clients connected through HAProxy, spread over the replicas, encrypting."""
    await fleet.all_up()
    config = CryptoConfig(
        server_url=fleet.lb.url,
        secret_key=SECRET,
        max_drift=MAX_DRIFT,
        snapshot_timeout=30,
        connect_timeout=5,
    )

    async def enter(client: CryptoClient, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with client:
            task_status.started()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        clients = [CryptoClient(config) for _ in range(n)]
        for client in clients:
            await tg.start(enter, client)
        with anyio.fail_after(60):
            for client in clients:
                await client.authenticate()
            while sum(await fleet.subscribed()) != n:
                await anyio.sleep(0.05)
        work = Workload(clients, max_drift=MAX_DRIFT)
        await tg.start(work.run)
        yield work
        tg.cancel_scope.cancel()


async def lb_counters(fleet: Fleet) -> dict[str, int]:
    """HAProxy's view: requests retried (a 503 from a draining replica, a refused
    connection), of which redispatched to another replica, and 5xx that reached clients."""
    stats = await fleet.lb.astats()

    def total(field: str, rows: list[str]) -> int:
        return sum(int(stats[row][field] or 0) for row in rows)

    return {
        "retries": total("wretr", [f"{BACKEND}/BACKEND"]),
        "redispatches": total("wredis", [f"{BACKEND}/BACKEND"]),
        "client_5xx": total("hrsp_5xx", ["arraycrypto/FRONTEND"]),
    }


def outcome(work: Workload, connected: bool) -> dict[str, Any]:
    """What the clients saw: ciphertexts, failures, lost ciphertexts, reconnections."""
    return {
        "encrypted": len(work.made),
        "failures_while_fresh": work.failures_fresh,
        "failures_when_expired": work.failures_expired,
        "undecryptable": work.undecryptable(),
        "disconnections": len(work.reconnects),
        "all_connected_at_end": connected,
    }


async def scenario_kill(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        Fleet(
            Path(tmp), args.replicas, tick_interval=args.tick, drain_seconds=args.drain_seconds
        ) as fleet,
    ):
        async with clients_through(fleet, args.clients) as work:
            await anyio.sleep(2)
            before = await fleet.subscribed()
            victim = before.index(max(before))
            killed = time.monotonic()
            fleet.replicas[victim].kill()
            back = max(r.back for r in await work.wait_back(killed, before[victim], 60)) - killed
            await fleet.lb.wait_status(fleet.names[victim], "DOWN", timeout=30)
            marked_down = time.monotonic() - killed
            await anyio.sleep(2)
            await fleet.restart(victim)
            await anyio.sleep(1)
            counters = await lb_counters(fleet)
            connected = work.connected
        return {
            "clients": args.clients,
            "replicas": args.replicas,
            **outcome(work, connected),
            "clients_on_killed_replica": before[victim],
            "all_back_s_after_kill": round(back, 3),
            "haproxy_marked_down_s_after_kill": round(marked_down, 3),
            **counters,
        }


async def rolling(args: argparse.Namespace, drain_seconds: float) -> dict[str, Any]:
    steps = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Fleet(
            Path(tmp), args.replicas, tick_interval=args.tick, drain_seconds=drain_seconds
        ) as fleet,
    ):
        async with clients_through(fleet, args.clients) as work:
            await anyio.sleep(1)
            for i in range(args.replicas):
                clients = (await fleet.subscribed())[i]
                started = time.monotonic()
                code = await fleet.drain(i)
                exited = time.monotonic() - started
                times = [r.back for r in await work.wait_back(started, clients, 30)]
                shape = spread(times, started)
                bins = [0] * (int(max(t - started for t in times) // 0.1) + 1) if times else []
                for t in times:
                    bins[int((t - started) // 0.1)] += 1
                steps.append(
                    {
                        "replica": fleet.names[i],
                        "clients": clients,
                        "exit_code": code,
                        "exited_s": round(exited, 3),
                        **shape,
                        "per_100ms": bins,
                    }
                )
                await fleet.restart(i)
            await anyio.sleep(1)
            counters = await lb_counters(fleet)
            connected = work.connected
    return {
        "clients": args.clients,
        "replicas": args.replicas,
        "drain_seconds": drain_seconds,
        **outcome(work, connected),
        **counters,
        "drains": steps,
    }


async def scenario_rolling(args: argparse.Namespace) -> dict[str, Any]:
    return {
        f"drain_{args.drain_seconds:g}s": await rolling(args, args.drain_seconds),
        "drain_0s": await rolling(args, 0),
    }


def print_rolling(name: str, run: dict[str, Any]) -> None:
    print(
        f"{name}: {run['clients']} clients, {run['replicas']} replicas, "
        f"drain_seconds {run['drain_seconds']:g}"
    )
    print(
        f"  encrypted {run['encrypted']}, failures while fresh {run['failures_while_fresh']}, "
        f"when expired {run['failures_when_expired']}, undecryptable {run['undecryptable']}, "
        f"disconnections {run['disconnections']}, all connected at end "
        f"{run['all_connected_at_end']}"
    )
    print(
        f"  HAProxy: {run['retries']} retries, {run['redispatches']} redispatched, "
        f"{run['client_5xx']} 5xx to clients"
    )
    print("  replica  clients exit exited_s reconnects first_s last_s span_s max/100ms")
    for d in run["drains"]:
        print(
            f"  {d['replica']:>8} {d['clients']:>7} {d['exit_code']:>4} {d['exited_s']:>8.2f}"
            f" {d['count']:>10} {d.get('first_s', 0):>7.2f} {d.get('last_s', 0):>6.2f}"
            f" {d.get('span_s', 0):>6.2f} {d.get('max_per_bucket', 0):>9}"
        )
    for d in run["drains"]:
        per = " ".join(str(n) for n in d["per_100ms"])
        print(f"  {d['replica']} reconnects per 100 ms from SIGTERM: {per}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["kill", "rolling", "all"])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--tick", type=float, default=1.0, help="tick_interval (s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if haproxy_binary() is None:
        print("haproxy is not installed: apt-get install haproxy", file=sys.stderr)
        return 2
    raise_fd_limit()
    runs = {"kill": scenario_kill, "rolling": scenario_rolling}
    chosen = list(runs) if args.scenario == "all" else [args.scenario]
    results: dict[str, Any] = {}
    for name in chosen:
        results[name] = anyio.run(runs[name], args)
        if args.json:
            continue
        print(f"== {name}")
        if name == "kill":
            print(json.dumps(results[name], indent=2))
        else:
            for key, run in results[name].items():
                print_rolling(key, run)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
