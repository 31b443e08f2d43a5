"""What connecting costs the server, in instructions: a figure the noise here barely moves.

    python -m scripts.connect_cost                        # 1 000 connections
    python -m scripts.connect_cost --before /path/to/an/older/checkout

Each server runs under valgrind's callgrind with instrumentation off: ours
(``bench_fanout``'s in-process arraycrypto server), the baseline (websockets' own server
doing the same handshake, ``bench_fanout``'s) and, with ``--before``, ours again from
another checkout. 200 clients connect to warm it up; then instrumentation is switched on
while N more connect and authenticate one at a time (``bench_fanout``'s epoll clients:
the real handshake), and the instructions the server executed are divided by N. Ticks
and pings an hour apart: connecting only; no server collects cycles (``gc.disable()``).
Needs valgrind (Debian package ``valgrind``). ``--before`` needs a checkout whose
``scripts/fanout_children.py`` reads ``BENCH_FANOUT_PING`` (copy this one in if not);
its bench_fanout must take ``_server arraycrypto-default``.

On this shared 2-core VM, timed runs of the same code spread by 20 %; these counts by
about 3 %. What they leave out: the collector, the kernel's side of each system call,
and timing: the server runs about 50 times slower under callgrind, and one connection
at a time costs more per connection than a crowd (each pays a loop iteration of its
own). Compare code with it; measure time, collectors and crowds with ``bench_fanout``.
Only 127.0.0.1; every process started is ended.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.fanout_children import PING_ENV
from tests.harness.epoll_clients import EpollClients
from tests.harness.light import ROOT, end, raise_fd_limit, read_tagged

WARM_UP = 200
#: The tick interval, and both servers' ping interval: the longest a config allows, so
#: that neither a tick (on the hour: one chance in 60 per minute measured) nor a ping
#: falls in what is counted.
TICK = 3600


def instructions(root: Path, server: str, clients: int) -> int:
    """Instructions the server at ``root`` executed while ``clients`` connected."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        # bench_fanout's server with the cycle collector off before anything runs:
        # whether a collection landed in the measured window moved the counts by several
        # percent. Done here, so that --before works with any checkout.
        argv = ["bench_fanout", "_server", server, str(TICK), "asyncio"]
        code = (
            f"import gc, runpy, sys; gc.disable(); sys.argv = {argv!r}; "
            "runpy.run_module('scripts.bench_fanout', run_name='__main__')"
        )
        command += [f"--callgrind-out-file={out}", sys.executable, "-c", code]
        # The checkout first; a PYTHONPATH given stays after it (another anyio, say).
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, PING_ENV: str(TICK)}
        child = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        warm = measured = None
        try:
            port = int(read_tagged(child, "PORT", 300))
            warm = EpollClients(port)
            warm.connect(WARM_UP, 300)
            control(child.pid, "-i", "on")
            measured = EpollClients(port)
            # One at a time: batches of any size made the counts depend on timing.
            measured.connect(clients, 900, in_flight=1)
            control(child.pid, "-i", "off")
            control(child.pid, "-d")
        finally:
            for group in (measured, warm):
                if group is not None:
                    group.close()
            # SIGTERM first: valgrind then removes its control pipes from /tmp.
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(60)
            end(child)
        total = 0
        for dump in Path(tmp).glob("callgrind.out*"):
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
        return total


def control(pid: int, *args: str) -> None:
    """Tell the callgrind running as ``pid`` to switch instrumentation or dump."""
    done = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"callgrind_control {' '.join(args)}: {done.stderr or done.stdout}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1000, help="connections measured")
    parser.add_argument("--before", type=Path, help="another checkout's server, beside")
    args = parser.parse_args()
    raise_fd_limit()
    # "default": the thresholds untouched and no pacing task (the collector is off).
    rows = [("arraycrypto", ROOT, "arraycrypto-default")]
    if args.before is not None:
        rows.append(("arraycrypto (before)", args.before.resolve(), "arraycrypto-default"))
    rows.append(("baseline", ROOT, "baseline"))
    counts = {
        name: instructions(root, server, args.clients) / args.clients for name, root, server in rows
    }
    base = counts["baseline"]
    print(f"server instructions per connection, {args.clients} connections after {WARM_UP}")
    print(f"{'server':>22} {'k instr/conn':>13} {'vs baseline':>12}")
    for name, per in counts.items():
        print(f"{name:>22} {per / 1000:13.1f} {per / base:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
