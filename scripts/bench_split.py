"""Does a tick's CPU split cleanly over two processes on this machine? (issue 11)

    python -m scripts.bench_split                      # 10 000 clients, 3 runs
    python -m scripts.bench_split --clients 4000 --runs 1

The same clients (two client processes, half each: bench_fanout's epoll clients)
against, alternating run by run:

- ``one``: one in-process arraycrypto server (``bench_fanout``'s), both client
  processes on its port: the reference;
- ``two``: two independent in-process servers on two ports, one client process each:
  the best split two processes can show here, with nothing shared;
- ``shared``: the same two servers on one port with SO_REUSEPORT, as workers share it
  (each client process's connections spread over both), and no supervisor;
- ``w1``, ``w2``: ``arraycrypto serve --workers 1`` and ``--workers 2`` (the CLI: for 2,
  a supervisor and two workers on one port with SO_REUSEPORT; the kernel spreads each
  client process's connections over both workers).

Reported per server: CPU per second of ticking (user and system, summed over its
processes, between "every client connected" and "every client reported"), p99 delivery
and connect time, medians of the runs, and each one's CPU as a ratio of ``one``'s. If
``two`` costs more than ``one``, that much is this machine (two busy server processes and
two client processes on two cores), not the workers. Only 127.0.0.1; every process
started is ended.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from scripts.bench_fanout import MODULE, safe_ratio, workers_server
from scripts.fanout_children import SHARED_PORT_ENV
from tests.harness.light import end, raise_fd_limit, read_tagged, spawn
from tests.harness.proc import children

MODES = ("one", "two", "shared", "w1", "w2")
TICK = 1.0


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def run(mode: str, clients: int, ticks: int) -> dict[str, float]:
    """One run of ``mode``; CPU in ms per second of ticking."""
    servers: list[Any] = []
    loads: list[Any] = []
    served = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if mode in ("w1", "w2"):
                served = workers_server(int(mode[1]), TICK, tmp)
                ports = [served.port, served.port]
                pids = [served.pid, *children(served.pid)]
            elif mode == "shared":
                port = 0
                for _ in range(2):
                    os.environ[SHARED_PORT_ENV] = str(port)  # the first picks, the second joins
                    try:
                        servers.append(
                            spawn(MODULE, "_server", "arraycrypto", str(TICK), "asyncio")
                        )
                    finally:
                        del os.environ[SHARED_PORT_ENV]
                    port = int(read_tagged(servers[-1], "PORT", 60))
                ports = [port, port]
                pids = [s.pid for s in servers]
            else:
                for _ in range(2 if mode == "two" else 1):
                    servers.append(spawn(MODULE, "_server", "arraycrypto", str(TICK), "asyncio"))
                ports = [int(read_tagged(s, "PORT", 60)) for s in servers]
                ports = ports if mode == "two" else ports * 2
                pids = [s.pid for s in servers]
            time.sleep(0.5)
            started = time.monotonic()
            for port in ports:
                args = (str(port), str(clients // 2), str(ticks), str(TICK))
                loads.append(spawn(MODULE, "_clients", *args))
            for load in loads:
                read_tagged(load, "CONNECTED", 300)
            connect = time.monotonic() - started
            before, t0 = [user_system(p) for p in pids], time.monotonic()
            results = [
                json.loads(read_tagged(load, "RESULT", 120 + ticks * TICK)) for load in loads
            ]
            after, t1 = [user_system(p) for p in pids], time.monotonic()
            seconds = t1 - t0
            user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
            system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
            return {
                "user_ms": user * 1000 / seconds,
                "system_ms": system * 1000 / seconds,
                "cpu_ms": (user + system) * 1000 / seconds,
                "p99_ms": max(r["p99_ms"] for r in results),
                "connect_s": connect,
                "delivered": sum(r["samples"] for r in results)
                / sum(r["expected_samples"] for r in results),
            }
        finally:
            end(*loads, *servers)
            if served is not None:
                served.stop()


def main() -> int:
    """Run every mode ``--runs`` times, alternating, and print the medians' table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=10)
    args = parser.parse_args()
    raise_fd_limit()
    measured: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.runs):
        for mode in MODES:
            result = run(mode, args.clients, args.ticks)
            measured[mode].append(result)
            print(f"  measured {mode}: CPU {result['cpu_ms']:.1f} ms/s", file=sys.stderr)
    rows = {
        m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in measured.items()
    }
    print(f"{args.clients} clients, tick {TICK}s, medians of {args.runs} run(s)")
    print(
        f"{'server':>6} {'user ms/s':>10} {'sys ms/s':>9} {'CPU ms/s':>9} {'vs one':>7}"
        f" {'p99 ms':>7} {'connect s':>9} {'delivered':>9}"
    )
    for mode, row in rows.items():
        print(
            f"{mode:>6} {row['user_ms']:10.1f} {row['system_ms']:9.1f} {row['cpu_ms']:9.1f}"
            f" {safe_ratio(row['cpu_ms'], rows['one']['cpu_ms']):6.2f}x {row['p99_ms']:7.1f}"
            f" {row['connect_s']:9.2f} {row['delivered']:9.1%}"
        )
    print(
        f"w2 vs w1: CPU {safe_ratio(rows['w2']['cpu_ms'], rows['w1']['cpu_ms']):.2f}x,"
        f" connect {safe_ratio(rows['w2']['connect_s'], rows['w1']['connect_s']):.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
