"""Soak: does memory stay flat under churn, for weeks? Slopes from a run of minutes.

    python -m scripts.chaos soak --minutes 30              # the documented run
    python -m scripts.chaos soak --minutes 3 --warmup 1 --every 10 --max-slope 200 --check  # CI
    python -m scripts.chaos client-soak --minutes 10       # one client, 0.01 s ticks

``soak``: ``arraycrypto serve`` (tick 0.5 s, ping 5 s) with 1 000 light clients of which
20 leave and 20 join every second (clean closes, FINs and RSTs in turn), 50 garbage
connections every 10 s (half of them never send a byte, half upgrade and never answer
the challenge), and 10 real ``CryptoClient``s in another process, each encrypting and
decrypting every 100 ms. Every ``--every`` seconds the parent samples the server's RSS,
descriptors, tasks, live connection objects (a debug gauge) and the largest event-loop
stall and GC pause of the last minute, and the clients' RSS. After the warm-up it prints
the slope of each; once the load stops it checks that descriptors and tasks are back to
their baseline and that no connection object outlives its connection. ``--check``
exits 1 when any of that fails (a growing RSS, a leak).

``client-soak``: one ``CryptoClient`` under a 0.01 s tick (60 000 snapshots in 10
minutes, an hour's worth at 0.06 s): its process's RSS over time.
Only 127.0.0.1; every process started is ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from arraycrypto import ServerConfig, save_config
from tests.harness import frames
from tests.harness.constants import HOST, SECRET
from tests.harness.light import ClientBench, LightClient, end, raise_fd_limit, read_tagged, spawn
from tests.harness.proc import fd_count, rss_kib
from tests.harness.servers import ServeProcess, fetch_metric

MODULE = "scripts.soak"

__all__ = ["main"]


def serve(tmp: Path, gc_policy: str, objects: bool, **config: Any) -> ServeProcess:
    path = tmp / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, host=HOST, port=0, **config))
    debug = ["--debug-objects"] if objects else []
    return ServeProcess(
        "--config", str(path), *debug, "--gc-policy", gc_policy, log=tmp / "server.log"
    )


# -- the churn (child process) ----------------------------------------------------------------


class Leaver(LightClient):
    """A light client that can leave three ways."""

    def leave(self, how: int) -> None:
        assert self.transport is not None
        if how == 0:  # clean: a Close frame; the server echoes and ends the TCP connection
            self.transport.write(frames.encode(frames.CLOSE, struct.pack(">H", 1000)))
        elif how == 1:  # FIN, no Close frame
            self.transport.close()
        else:  # RST
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()


class Silent(asyncio.Protocol):
    """Connects and never speaks (the server's pre-authentication deadline ends it)."""

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class Mute(LightClient):
    """Upgrades, then never answers the challenge (4002)."""

    def on_text(self, payload: bytes, arrived: float) -> None:
        if not self.authenticated.done():
            self.authenticated.set_result(False)


async def churn(port: int, n: int, seconds: float) -> None:
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    bench = ClientBench()
    live: list[Leaver] = []
    gate = asyncio.Semaphore(128)

    async def join() -> None:
        async with gate:
            try:
                _, proto = await loop.create_connection(lambda: Leaver(bench), HOST, port)
                await asyncio.wait_for(proto.authenticated, 30)
                live.append(proto)
            except (OSError, TimeoutError, ConnectionError):
                pass

    async def garbage() -> None:
        async with gate:
            try:
                if len(live) % 2:
                    await loop.create_connection(Silent, HOST, port)
                else:
                    await loop.create_connection(lambda: Mute(bench), HOST, port)
            except OSError:
                pass

    await asyncio.gather(*(join() for _ in range(n)))
    print("READY", flush=True)
    started = time.monotonic()
    second = 0
    tasks: set[asyncio.Task[None]] = set()
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1.0)
        second += 1
        for i in range(20):
            if live:
                live.pop(0).leave(i % 3)
        for _ in range(20):
            task = asyncio.ensure_future(join())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if second % 10 == 0:
            for _ in range(50):
                task = asyncio.ensure_future(garbage())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    print("STOPPED", flush=True)
    for proto in live:
        proto.leave(1)
    await asyncio.sleep(1.0)


async def real_clients(port: int, seconds: float, count: int = 10) -> None:
    import anyio

    from arraycrypto import CryptoClient, CryptoConfig, CryptoError

    config = CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET, max_drift=30)
    done = failed = 0

    async def work(client: CryptoClient) -> None:
        nonlocal done, failed
        await client.authenticate()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            data = b"%d" % i
            i += 1
            try:
                assert client.decrypt(await client.encrypt_message(data)) == data
                done += 1
            except CryptoError:
                failed += 1
            await anyio.sleep(0.1)

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(CryptoClient(config)) for _ in range(count)]
        print("READY", flush=True)
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(work, client)
    print("RESULT " + json.dumps({"round_trips": done, "failures": failed}), flush=True)


async def one_client(port: int, seconds: float) -> None:
    import anyio

    from arraycrypto import CryptoClient, CryptoConfig

    config = CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET, max_drift=30)
    accepted = 0
    async with CryptoClient(config) as client:
        await client.authenticate()
        print("READY", flush=True)
        with anyio.move_on_after(seconds):
            async for _ in client.watch():
                accepted += 1
    print("RESULT " + json.dumps({"snapshots": accepted}), flush=True)


# -- sampling (parent) ------------------------------------------------------------------------


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, value) points: value per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def sample(server: ServeProcess, clients_pid: int | None, objects: bool) -> dict[str, float]:
    port = server.port
    nan = float("nan")
    return {
        "rss_kib": rss_kib(server.pid),
        "fds": fd_count(server.pid),
        "tasks": fetch_metric(port, "arraycrypto_tasks"),
        "connections": fetch_metric(port, "arraycrypto_connections "),
        "live_objects": (
            fetch_metric(port, "arraycrypto_live_connection_objects") if objects else nan
        ),
        "full_gcs": fetch_metric(port, 'arraycrypto_gc_collections_total{generation="2"'),
        "stall_ms": 1000 * fetch_metric(port, "arraycrypto_event_loop_lag_seconds_max"),
        "gc_pause_ms": 1000 * fetch_metric(port, "arraycrypto_gc_pause_seconds_max"),
        "client_rss_kib": _rss_or_nan(clients_pid),
        "accepted": fetch_metric(port, "arraycrypto_connections_total"),
    }


def _rss_or_nan(pid: int | None) -> float:
    try:
        return float(rss_kib(pid)) if pid else float("nan")
    except (OSError, RuntimeError):  # the process just ended
        return float("nan")


def soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    samples: list[tuple[float, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = serve(
            Path(tmp),
            args.gc_policy,
            args.objects,
            tick_interval=0.5,
            ping_interval=5.0,
            ping_timeout=5.0,
            max_connections=20_000,
        )
        server.start()
        load = clients = None
        try:
            time.sleep(1.0)
            baseline = sample(server, None, args.objects)
            load = spawn(MODULE, "_churn", str(server.port), str(args.clients), str(seconds))
            read_tagged(load, "READY", 300)
            clients = spawn(MODULE, "_real", str(server.port), str(seconds + args.every))
            read_tagged(clients, "READY", 60)
            started = time.monotonic()
            # Every sample under load: the churn began a little before `started` and
            # stops `seconds` after it began, so stop sampling a second early.
            while time.monotonic() - started + args.every < seconds - 1.0:
                time.sleep(args.every)
                minute = (time.monotonic() - started) / 60
                samples.append((minute, sample(server, clients.pid, args.objects)))
                if not args.json:
                    print(_row(minute, samples[-1][1]), file=sys.stderr, flush=True)
            read_tagged(load, "STOPPED", 60)
            real = json.loads(read_tagged(clients, "RESULT", 60))
            end(load)
            load = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # every connection ends by itself
                after = sample(server, None, args.objects)
                objects_left = after["live_objects"] if args.objects else 0.0
                # The /metrics request that sampled it is itself an open connection.
                if after["connections"] <= 1 and not objects_left:
                    break
                time.sleep(0.5)
            time.sleep(args.every / 10)
            after = sample(server, None, args.objects)
        finally:
            end(load, clients)
            server.stop()
    warm = [(m, s) for m, s in samples if m >= args.warmup]
    result = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "gc_policy": args.gc_policy,
        "baseline": baseline,
        "after_load": after,
        "slopes_per_minute_after_warmup": {
            key: round(slope([(m, s[key]) for m, s in warm]), 1)
            for key in ("rss_kib", "fds", "tasks", "live_objects", "client_rss_kib")
            if all(s[key] == s[key] for _, s in warm)  # no NaN
        },
        "max_stall_ms": round(max((s["stall_ms"] for _, s in samples), default=0.0), 1),
        "max_gc_pause_ms": round(max((s["gc_pause_ms"] for _, s in samples), default=0.0), 1),
        "real_clients": real,
        "samples": [{"minute": round(m, 2), **s} for m, s in samples],
    }
    problems = _problems(result, args.max_slope)
    result["problems"] = problems
    print(json.dumps(result) if args.json else _report(result))
    return 1 if args.check and problems else 0


def _problems(result: dict[str, Any], max_slope: float) -> list[str]:
    problems = []
    base, after = result["baseline"], result["after_load"]
    if result["slopes_per_minute_after_warmup"]["rss_kib"] > max_slope:
        problems.append(f"server RSS grows more than {max_slope} KiB/min")
    if after["fds"] > base["fds"]:
        problems.append(f"descriptors {base['fds']} -> {after['fds']}")
    if after["tasks"] > base["tasks"]:
        problems.append(f"tasks {base['tasks']} -> {after['tasks']}")
    # Every open connection but the /metrics request itself is a WebSocket one.
    websockets = after["connections"] - 1
    if after["live_objects"] == after["live_objects"] != websockets:  # not NaN
        problems.append(f"{after['live_objects']} connection objects for {websockets}")
    if result["real_clients"]["failures"]:
        problems.append(f"{result['real_clients']['failures']} encrypt/decrypt failures")
    return problems


def _row(minute: float, s: dict[str, float]) -> str:
    return (
        f"{minute:6.2f} min  rss {s['rss_kib']:8.0f} KiB  fds {s['fds']:5.0f}  tasks"
        f" {s['tasks']:5.0f}  conns {s['connections']:5.0f}  objects {s['live_objects']:5.0f}"
        f"  stall {s['stall_ms']:6.1f} ms  gc {s['gc_pause_ms']:6.1f} ms"
        f"  full gcs {s['full_gcs']:3.0f}  client rss {s['client_rss_kib']:7.0f} KiB"
        f"  accepted {s['accepted']:7.0f}"
    )


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"soak: {r['minutes']} min, slopes after {r['warmup_minutes']} min of warm-up,"
        f" gc policy {r['gc_policy']}",
        *(_row(s["minute"], s) for s in r["samples"]),
        "slopes per minute: "
        + ", ".join(f"{k} {v:+}" for k, v in r["slopes_per_minute_after_warmup"].items()),
        f"largest event-loop stall {r['max_stall_ms']} ms, largest GC pause"
        f" {r['max_gc_pause_ms']} ms",
        f"baseline: fds {r['baseline']['fds']:.0f}, tasks {r['baseline']['tasks']:.0f};"
        f" after the load: fds {r['after_load']['fds']:.0f}, tasks"
        f" {r['after_load']['tasks']:.0f}, connection objects"
        f" {r['after_load']['live_objects']:.0f} for"
        f" {r['after_load']['connections'] - 1:.0f} WebSocket connections (besides /metrics)",
        f"real clients: {r['real_clients']['round_trips']} encrypt+decrypt,"
        f" {r['real_clients']['failures']} failures",
        "problems: " + ("; ".join(r["problems"]) or "none"),
    ]
    return "\n".join(lines)


def client_soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        server = serve(Path(tmp), "raised", False, tick_interval=args.tick)
        server.start()
        child = None
        try:
            child = spawn(MODULE, "_one", str(server.port), str(seconds))
            read_tagged(child, "READY", 60)
            started = time.monotonic()
            points = []
            while time.monotonic() - started < seconds - 1:
                points.append(((time.monotonic() - started) / 60, float(rss_kib(child.pid))))
                time.sleep(min(args.every, max(0.1, seconds - 1 - (time.monotonic() - started))))
            result = json.loads(read_tagged(child, "RESULT", 60))
        finally:
            end(child)
            server.stop()
    first, last = points[0][1], points[-1][1]
    report = {
        "minutes": args.minutes,
        "tick": args.tick,
        "snapshots": result["snapshots"],
        "client_rss_kib_first": first,
        "client_rss_kib_last": last,
        "growth_kib": last - first,
        "slope_kib_per_minute": round(slope(points), 1),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        role, nums = argv[0], argv[1:]
        if role == "_churn":
            asyncio.run(churn(int(nums[0]), int(nums[1]), float(nums[2])))
        elif role == "_real":
            import anyio

            anyio.run(real_clients, int(nums[0]), float(nums[1]))
        elif role == "_one":
            import anyio

            anyio.run(one_client, int(nums[0]), float(nums[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["soak", "client-soak"])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=5, help="minutes before slopes")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--tick", type=float, default=0.01, help="client-soak tick (s)")
    parser.add_argument(
        "--gc-policy", default="paced", choices=["default", "raised", "frozen", "paced"]
    )
    parser.add_argument("--max-slope", type=float, default=50.0, help="KiB/min for --check")
    parser.add_argument("--check", action="store_true", help="exit 1 on growth or a leak")
    parser.add_argument(
        "--no-objects",
        dest="objects",
        action="store_false",
        help="skip the live-object count: it scans the heap at every sample, a loop stall"
        " of its own at 10 000 connections (then fds and tasks are checked, not objects)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return soak(args) if args.scenario == "soak" else client_soak(args)


if __name__ == "__main__":
    raise SystemExit(main())
