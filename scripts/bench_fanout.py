"""Fan-out benchmark: arraycrypto's server against websockets' own serve() + broadcast().

    python -m scripts.bench_fanout                       # N = 1000, 5000, 10000
    python -m scripts.bench_fanout --clients 10000 --runs 3   # medians of 3 runs
    python -m scripts.bench_fanout --tls --clients 1000 5000  # wss on both servers
    python -m scripts.bench_fanout --clients 1000 --ticks 5 --json
    python -m scripts.bench_fanout --clients 10000 --runs 3 --workers 1 2   # the CLI, N workers
    python -m scripts.bench_fanout --clients 10000 --runs 3 --gc-policy raised paced

For each N, in the same run and with the same hand-made clients (another process):

- ``arraycrypto``: ``arraycrypto.Server`` (anyio driver, one-slot mailboxes, one frame
  serialised per tick) with the collector policy ``arraycrypto serve`` applies
  ("paced"); with ``--gc-policy P ...``, one ``arraycrypto-P`` per policy instead;
- ``baseline``: ``websockets.asyncio.server.serve`` with compression off, the same
  handshake (our pure ``ServerSession``), then ``websockets.broadcast()`` of a signed
  snapshot of the same size at the same rate;
- ``arraycrypto-wN`` (with ``--workers N ...``): ``arraycrypto serve --workers N``, the
  CLI as an operator runs it (its own process, N workers on one port behind a
  supervisor when N > 1); CPU and RSS are summed over all its processes, and every
  ``wN`` is compared with ``w1``.

The clients speak raw WebSocket on one epoll loop (tests/harness/epoll_clients.py: light
enough for 10 000 in one process, and cheap enough to leave the server its cores; over
TLS, asyncio protocols), do the real challenge-response handshake, and record arrival
time minus the ``timestamp`` in each push. The parent process samples the server's CPU time and RSS
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
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from arraycrypto import save_config
from scripts.fanout_children import (
    TLS_DIR_ENV,
    bench_config,
    make_tls_dir,
    run_arraycrypto_server,
    run_baseline_server,
    run_clients,
)
from tests.harness.light import end, raise_fd_limit, read_tagged, spawn
from tests.harness.proc import children, cpu_seconds, rss_kib
from tests.harness.servers import ServeProcess

MODULE = "scripts.bench_fanout"  # children run as `python -m scripts.bench_fanout`
# -- orchestration (parent process) ----------------------------------------------------------


def workers_server(workers: int, interval: float, tmp: str) -> ServeProcess:
    """``arraycrypto serve --workers N`` (the CLI) with the in-process server's settings."""
    path = os.path.join(tmp, "server_config.json")
    save_config(path, bench_config(interval))
    server = ServeProcess("--config", path, "--workers", str(workers))
    server.start()
    deadline = time.monotonic() + 60
    processes = workers if workers > 1 else 0  # --workers 1 is the one process itself
    while len(children(server.pid)) < processes or server.output().count("listening on") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start")
        time.sleep(0.05)
    return server


def measure(mode: str, n: int, ticks: int, interval: float, loop: str) -> dict[str, Any]:
    """One run of ``mode`` (arraycrypto, baseline, or arraycrypto-wN: N workers).

    CPU and memory are summed over the server's processes (a supervisor's workers).
    """
    workers = int(mode.rsplit("-w", 1)[1]) if "-w" in mode else 0
    child = served = client = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if workers:
                served = workers_server(workers, interval, tmp)
                port = served.port
                pids = [served.pid, *children(served.pid)]
            else:
                child = spawn(MODULE, "_server", mode, str(interval), loop)
                port = int(read_tagged(child, "PORT", 60))
                pids = [child.pid]
            time.sleep(0.5)
            rss0 = sum(rss_kib(pid) for pid in pids)
            client = spawn(MODULE, "_clients", str(port), str(n), str(ticks), str(interval))
            read_tagged(client, "CONNECTED", 300)
            cpu0, t0 = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
            result: dict[str, Any] = json.loads(
                read_tagged(client, "RESULT", 120 + ticks * interval)
            )
            cpu1, t1 = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
            rss1 = sum(rss_kib(pid) for pid in pids)
            result["server"] = mode
            result["cpu_ms_per_tick"] = (cpu1 - cpu0) * 1000 / ((t1 - t0) / interval)
            result["rss_kib_per_conn"] = (rss1 - rss0) / n
            return result
        finally:
            end(client, child)
            if served is not None:
                served.stop()


def safe_ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``; NaN where ``theirs`` read 0 (a tiny run under the clock's tick)."""
    return ours / theirs if theirs else float("nan")


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
        ours = (
            ["arraycrypto"]
            if args.gc_policy == ["paced"]
            else [f"arraycrypto-{policy}" for policy in args.gc_policy]
        )
        modes = ours + [f"arraycrypto-w{w}" for w in args.workers] + ["baseline"]
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
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
        if mode.startswith("arraycrypto"):
            policy = mode.split("-", 1)[1] if "-" in mode else "paced"
            run_arraycrypto_server(interval, use_uvloop, policy)
        else:
            run_baseline_server(interval, use_uvloop)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_clients":
        port, n, ticks, tick_s = sys.argv[2:6]
        run_clients(int(port), int(n), int(ticks), float(tick_s))
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
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[],
        help="also `arraycrypto serve --workers N` (the CLI, a process of its own) for each N",
    )
    parser.add_argument(
        "--gc-policy",
        nargs="+",
        default=["paced"],
        choices=["default", "raised", "frozen", "paced"],
        help="the in-process server's collector policy; several: one mode each",
    )
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
    ours_modes = [r["server"] for r in rows if r["server"] != "baseline"]
    ours_modes = list(dict.fromkeys(ours_modes))
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for n in args.clients:
        base = by[("baseline", n)]
        for mode in ours_modes:
            ours = by[(mode, n)]
            ratios.setdefault(mode, {})[str(n)] = {
                "cpu": safe_ratio(ours["cpu_ms_per_tick"], base["cpu_ms_per_tick"]),
                "p99": safe_ratio(ours["p99_ms"], base["p99_ms"]),
                "rss": safe_ratio(ours["rss_kib_per_conn"], base["rss_kib_per_conn"]),
                "connect": safe_ratio(ours["connect_s"], base["connect_s"]),
            }
    # Workers against one process: the same CPU for the same work, a faster connect storm.
    # Workers against one worker of the same CLI: the same CPU for the same work (the
    # cost splits cleanly), a faster connect storm where there are cores to spare.
    scaling: dict[str, dict[str, dict[str, float]]] = {}
    if "arraycrypto-w1" in ours_modes:
        for mode in ours_modes:
            if not mode.startswith("arraycrypto-w") or mode == "arraycrypto-w1":
                continue
            for n in args.clients:
                one, many = by[("arraycrypto-w1", n)], by[(mode, n)]
                scaling.setdefault(mode, {})[str(n)] = {
                    "cpu": safe_ratio(many["cpu_ms_per_tick"], one["cpu_ms_per_tick"]),
                    "p99": safe_ratio(many["p99_ms"], one["p99_ms"]),
                    "connect": safe_ratio(many["connect_s"], one["connect_s"]),
                }
    if args.json:
        print(
            json.dumps(
                {
                    "interval_s": args.interval,
                    "ticks": args.ticks,
                    "runs": rows,
                    "ratios": ratios,
                    "workers_vs_one": scaling,
                }
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
        f"{'N':>6} {'server':>14} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f" {'CPU ms/tick':>11} {'KiB/conn':>8} {'connect s':>9} {'delivered':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['clients']:>6} {r['server']:>14} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f}"
            f" {r['max_ms']:7.1f} {r['cpu_ms_per_tick']:11.1f} {r['rss_kib_per_conn']:8.1f}"
            f" {r['connect_s']:9.2f} {r['samples'] / r['expected_samples']:9.1%}"
        )
    if args.runs > 1:
        print()
        for r in rows:
            runs_s = ", ".join(f"{t:.2f}" for t in r["connect_s_runs"])
            print(f"N={r['clients']} {r['server']}: connect s per run {runs_s}")
    print()
    for mode, per_n in ratios.items():
        for n_text, ratio in per_n.items():
            print(
                f"N={n_text} {mode}: CPU per tick {ratio['cpu']:.2f}x baseline,"
                f" p99 {ratio['p99']:.2f}x, KiB/conn {ratio['rss']:.2f}x,"
                f" connect time {ratio['connect']:.2f}x"
            )
    for mode, per_n in scaling.items():
        for n_text, ratio in per_n.items():
            print(
                f"N={n_text} {mode} vs arraycrypto-w1: CPU per tick {ratio['cpu']:.2f}x,"
                f" p99 {ratio['p99']:.2f}x, connect time {ratio['connect']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
