"""Memory per connection of the server, broken down by who allocated it (tracemalloc).

    python -m scripts.bench_memory                      # 2 000 clients, this tree
    python -m scripts.bench_memory --clients 2000 --before /path/to/older/checkout

The server runs in a child process with tracemalloc on; 2 000 light clients (another
process) connect, authenticate and stay subscribed. The server takes a snapshot of its
heap before they connect and once they all are subscribed (after a full collection),
and reports the difference per connection, grouped by the source file that allocated
it: asyncio, anyio, websockets, ssl, each arraycrypto room, and the rest. With
``--before PATH`` the same measurement runs, alternating, against the server of an older
checkout at PATH (its ``arraycrypto`` package is imported instead of this one), so both
are measured side by side in one run. Only 127.0.0.1; every process started is ended.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter

# Only the standard library at module level: the server child may import another
# tree's arraycrypto (--before), which must come before any import of this one's.

MODULE = "scripts.bench_memory"
HOST = "127.0.0.1"
SECRET = bytes(range(32))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def category(filename: str) -> str:
    """The owner of an allocation site, from its file name."""
    path = filename.replace(os.sep, "/")
    if "/arraycrypto/" in path:
        rest = path.rsplit("/arraycrypto/", 1)[1]
        room = rest.split("/")[0] if "/" in rest else rest.removesuffix(".py")
        return f"arraycrypto/{room}"
    for name in ("anyio", "websockets", "trio", "msgspec"):
        if f"/{name}/" in path:
            return name
    for name in ("asyncio", "ssl", "socket", "selectors", "collections", "enum"):
        if f"/{name}/" in path or path.endswith(f"/{name}.py"):
            return name
    return "other"


def run_server(clients: int, detail: int) -> None:
    """Child: a server with tracemalloc on; snapshots on the parent's commands."""
    tree = os.environ.get("BENCH_MEMORY_TREE")
    if tree:
        sys.path.insert(0, tree)  # before the current directory: its arraycrypto wins
    import anyio
    import anyio.to_thread

    from arraycrypto import ServerConfig
    from arraycrypto.server import Server

    config = ServerConfig(
        secret_key=SECRET,
        host=HOST,
        port=0,
        tick_interval=1.0,
        max_connections=clients + 1000,
        handshake_timeout=60,
        ping_interval=600,
        ping_timeout=600,
    )
    try:
        from arraycrypto.server.tuning import tune_process
    except ImportError:  # an older tree: its Server.run() tunes the process itself
        pass
    else:
        tune_process(config.max_connections)
    tracemalloc.start(int(os.environ.get("BENCH_MEMORY_DEPTH", "1")))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(Server(config).run)
            print(f"PORT {port}", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # "BASE"
            gc.collect()
            base = tracemalloc.take_snapshot()
            print("BASE", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # "SNAP"
            gc.collect()
            now = tracemalloc.take_snapshot()
            by: Counter[str] = Counter()
            for stat in now.compare_to(base, "filename"):
                frame = stat.traceback[0]
                by[category(frame.filename)] += stat.size_diff
            key = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
            for stat in now.compare_to(base, key)[:detail]:
                where = " <- ".join(
                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback
                )
                print(f"DETAIL {stat.size_diff / clients:8.1f} B/conn  {where}", flush=True)
            print("RESULT " + json.dumps(dict(by)), flush=True)
            tg.cancel_scope.cancel()

    anyio.run(main)


async def run_clients(port: int, n: int) -> None:
    """Child: ``n`` light clients that authenticate and then stay subscribed."""
    from tests.harness.light import connect_light, raise_fd_limit

    raise_fd_limit()
    _, protos = await connect_light(port, n, 120)
    print("CONNECTED", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # until the parent is done
    for proto in protos:
        if proto.transport is not None:
            proto.transport.close()


def measure(n: int, tree: str | None, detail: int) -> dict[str, float]:
    """One run: KiB per connection by category, for this tree or the one at ``tree``."""
    from tests.harness.light import end, read_tagged

    env = dict(os.environ)
    if tree is not None:
        env["BENCH_MEMORY_TREE"] = tree
    server = subprocess.Popen(
        [sys.executable, "-m", MODULE, "_server", str(n), str(detail)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    clients = None
    try:
        assert server.stdin is not None
        port = int(read_tagged(server, "PORT", 60))
        time.sleep(1.0)  # a tick or so: the server's own steady state
        server.stdin.write("BASE\n")
        server.stdin.flush()
        read_tagged(server, "BASE", 60)
        clients = subprocess.Popen(
            [sys.executable, "-m", MODULE, "_clients", str(port), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        read_tagged(clients, "CONNECTED", 300)
        time.sleep(2.0)  # a couple of ticks pushed to everyone
        server.stdin.write("SNAP\n")
        server.stdin.flush()
        assert server.stdout is not None
        while (line := server.stdout.readline()).startswith("DETAIL"):
            print(f"{tree or 'this tree'}: {line[7:].rstrip()}", file=sys.stderr)
        assert line.startswith("RESULT "), line
        by: dict[str, int] = json.loads(line[7:])
    finally:
        end(clients, server)
    return {k: v / n / 1024 for k, v in by.items()}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        run_server(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_clients":
        asyncio.run(run_clients(int(sys.argv[2]), int(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1, help="runs per tree (medians)")
    parser.add_argument("--before", help="an older checkout to measure side by side")
    parser.add_argument("--detail", type=int, default=0, help="top N allocation lines (stderr)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    trees: dict[str, str | None] = {"this tree": None}
    if args.before:
        trees = {"before": args.before, "this tree": None}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():  # alternate, so drifts hit both alike
            runs[name].append(measure(args.clients, tree, args.detail))
    table: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        keys = {k for r in results for k in r}
        table[name] = {k: statistics.median(r.get(k, 0.0) for r in results) for k in keys}
        table[name]["total"] = sum(v for k, v in table[name].items())
    if args.json:
        print(json.dumps({"clients": args.clients, "kib_per_connection": table}))
        return 0
    print(
        f"KiB per subscribed connection, tracemalloc in the server, {args.clients} clients,"
        f" medians of {args.runs} run(s), by the file that allocated"
    )
    rows = sorted({k for t in table.values() for k in t} - {"total"})
    head = f"{'allocated by':<24}" + "".join(f"{name:>12}" for name in table)
    print(head)
    print("-" * len(head))
    for row in [*rows, "total"]:
        print(f"{row:<24}" + "".join(f"{t.get(row, 0.0):12.2f}" for t in table.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
