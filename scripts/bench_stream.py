"""Benchmark streaming through the CLI against raw AES-GCM and age, side by side.

    python -m scripts.bench_stream                 # 1 GiB, 5 runs (minutes)
    python -m scripts.bench_stream --size 256M --runs 3
    python -m scripts.bench_stream --json

In one run, on the same file, alternating contender by contender within each round:

- ``arraycrypto``: the real CLI (``python -m arraycrypto encrypt|decrypt``) against a
  live ``arraycrypto serve`` on 127.0.0.1 that the script starts and stops;
- ``raw-gcm``: the throughput baseline, a minimal Python process doing the same I/O
  (1 MiB reads) and one AES-256-GCM call per 1 MiB with no format at all;
- ``age``: age from the Debian packages with an X25519 recipient (``age-keygen``).

Two shapes: file to file (``-i``/``-o``; ``-o``/positional for age), and stdin to stdout
through pipes (``cat IN | CMD | cat > OUT``). Each figure is the median over the runs of
the process's wall time and its own peak RSS (GNU ``time``'s ``%M``). ``fixed`` is the same
command on an empty input (start-up, imports, and for our encrypt the server
handshake); ``MB/s marginal`` is ``size / (wall - fixed)``. The machine is shared and
noisy: read the ratios. The files live in ``/dev/shm`` by default (on a disk, the
kernel's dirty-page writeback throttles whichever writer happens to cross its limit), and
outputs are deleted before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from arraycrypto import CryptoConfig, ServerConfig, save_config

HOST = "127.0.0.1"
SHM = "/dev/shm"  # noqa: S108 -- only ever the parent of a private mkdtemp directory
SECRET = bytes(range(32))
RAW_KEY = bytes(range(100, 132)).hex()

# The raw AES-GCM baseline: same reads and writes as a streaming tool, no format.
RAW = r"""
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
mode, key = sys.argv[1], bytes.fromhex(sys.argv[2])
src = open(sys.argv[3], "rb") if len(sys.argv) > 3 else sys.stdin.buffer
dst = open(sys.argv[4], "wb") if len(sys.argv) > 4 else sys.stdout.buffer
aead, n = AESGCM(key), 1 << 20
size_in, size_out = (n, n + 16) if mode == "enc" else (n + 16, n)
inbuf, outbuf = bytearray(size_in), bytearray(size_out)
iv, ov = memoryview(inbuf), memoryview(outbuf)
counter = 0
while True:
    got = 0
    while got < size_in and (r := src.readinto(iv[got:])):
        got += r
    if not got:
        break
    nonce = counter.to_bytes(12, "big")
    counter += 1
    out = ov[: got + 16] if mode == "enc" else ov[: got - 16]
    if mode == "enc":
        aead.encrypt_into(nonce, iv[:got], None, out)
    else:
        aead.decrypt_into(nonce, iv[:got], None, out)
    dst.write(out)
    if got < size_in:
        break
dst.flush()
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


@contextmanager
def server(tmp: Path) -> Iterator[int]:
    """Run ``arraycrypto serve`` on a free port; yield the port."""
    config = tmp / "server_config.json"
    save_config(config, ServerConfig(secret_key=SECRET, host=HOST, port=0))
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"listening on ws://[\d.]+:(\d+)", (tmp / "server.log").read_text())
            if found:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        yield int(found.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


# Peak RSS comes from GNU time (Debian package "time"), not from os.wait4 here: on
# Linux a child's ru_maxrss starts at its parent's RSS at fork (the mm it copied), which
# would charge this 40+ MiB process to every contender.
TIME = "/usr/bin/time"


def timed(cmd: list[str], rss_file: Path) -> list[str]:
    return [TIME, "-q", "-f", "%M", "-o", str(rss_file), *cmd]


# The children run as a user's would: Python caches bytecode (some sandboxes set
# PYTHONDONTWRITEBYTECODE, which recompiles every module of every start-up).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_file(cmd: list[str], rss_file: Path) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in KiB) of that process."""
    t0 = time.perf_counter()
    subprocess.run(
        timed(cmd, rss_file), stdin=subprocess.DEVNULL, check=True, timeout=1800, env=ENV
    )
    wall = time.perf_counter() - t0
    return wall, int(rss_file.read_text().split()[-1])


def run_pipe(cmd: list[str], src: Path, dst: Path, rss_file: Path) -> tuple[float, int]:
    """Run ``cat src | cmd | cat > dst``; return (wall seconds, peak RSS of ``cmd`` in KiB)."""
    t0 = time.perf_counter()
    with dst.open("wb") as out:
        cat_in = subprocess.Popen(["cat", str(src)], stdout=subprocess.PIPE)
        proc = subprocess.Popen(
            timed(cmd, rss_file), stdin=cat_in.stdout, stdout=subprocess.PIPE, env=ENV
        )
        cat_out = subprocess.Popen(["cat"], stdin=proc.stdout, stdout=out)
        assert cat_in.stdout is not None
        assert proc.stdout is not None
        cat_in.stdout.close()
        proc.stdout.close()
        codes = [p.wait(timeout=1800) for p in (cat_in, proc, cat_out)]
    wall = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"{cmd[:4]} failed: exit codes {codes}")
    return wall, int(rss_file.read_text().split()[-1])


def commands(tmp: Path, client: Path, pub: str, key: Path) -> dict[str, dict[str, list[str]]]:
    """Per contender: encrypt and decrypt argv; files are appended per shape."""
    py = sys.executable
    return {
        "arraycrypto": {
            "encrypt": [py, "-m", "arraycrypto", "encrypt", "--config", str(client)],
            "decrypt": [py, "-m", "arraycrypto", "decrypt", "--config", str(client)],
        },
        "raw-gcm": {
            "encrypt": [py, "-c", RAW, "enc", RAW_KEY],
            "decrypt": [py, "-c", RAW, "dec", RAW_KEY],
        },
        "age": {
            "encrypt": ["age", "-r", pub],
            "decrypt": ["age", "-d", "-i", str(key)],
        },
    }


def file_args(name: str, src: Path, dst: Path) -> list[str]:
    if name == "arraycrypto":
        return ["-i", str(src), "-o", str(dst)]
    if name == "raw-gcm":
        return [str(src), str(dst)]
    return ["-o", str(dst), str(src)]


def in_memory_gcm(path: Path, limit: int) -> float:
    """Return raw AES-GCM GB/s in this process over the file's first ``limit`` bytes."""
    aead = AESGCM(bytes(32))
    with path.open("rb") as f:
        chunks = [f.read(1 << 20) for _ in range(max(1, limit >> 20))]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i, chunk in enumerate(chunks):
            aead.encrypt(i.to_bytes(12, "big"), chunk, None)
        best = min(best, time.perf_counter() - t0)
    return sum(map(len, chunks)) / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="plaintext size, e.g. 256M or 1G")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--dir",
        default=SHM if os.path.isdir(SHM) else None,
        help="where the files go (default /dev/shm: RAM, so the disk's writeback does not"
        " time the run)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        print("needs age and age-keygen: apt-get install age", file=sys.stderr)
        return 2
    if not os.access(TIME, os.X_OK):
        print(f"needs {TIME} (GNU time): apt-get install time", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(dir=args.dir) as tmpdir:
        tmp = Path(tmpdir)
        plain = tmp / "plain"
        with plain.open("wb") as f:  # incompressible, made in 1 MiB steps
            left = size
            while left:
                f.write(os.urandom(min(left, 1 << 20)))
                left -= min(left, 1 << 20)
        empty = tmp / "empty"
        empty.write_bytes(b"")
        key = tmp / "age.key"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        pub = re.search(r"public key: (age1\w+)", key.read_text())
        assert pub is not None
        gcm_gbps = in_memory_gcm(plain, min(size, 256 << 20))

        with server(tmp) as port:
            client = tmp / "client_config.json"
            save_config(
                client,
                CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET),
            )
            cmds = commands(tmp, client, pub.group(1), key)
            names = list(cmds)
            samples: dict[tuple[str, str, str], list[tuple[float, int]]] = {}
            fixed: dict[tuple[str, str], list[float]] = {}

            def sealed(name: str) -> Path:
                return tmp / f"sealed.{name}"

            def sealed_empty(name: str) -> Path:
                return tmp / f"sealed-empty.{name}"

            rss_file = tmp / "rss"
            for name in names:  # the inputs of decryption, and a warm-up of each command
                run_file(cmds[name]["encrypt"] + file_args(name, plain, sealed(name)), rss_file)
                run_file(
                    cmds[name]["encrypt"] + file_args(name, empty, sealed_empty(name)), rss_file
                )
                warm = tmp / "warm"
                run_file(cmds[name]["decrypt"] + file_args(name, sealed(name), warm), rss_file)
                warm.unlink()

            for round_no in range(args.runs):
                shift = round_no % len(names)
                order = names[shift:] + names[:shift]
                for op in ("encrypt", "decrypt"):
                    for shape in ("file", "pipe"):
                        for name in order:
                            src = plain if op == "encrypt" else sealed(name)
                            dst = tmp / f"out.{name}"
                            dst.unlink(missing_ok=True)
                            cmd = cmds[name][op]
                            if shape == "file":
                                got = run_file(cmd + file_args(name, src, dst), rss_file)
                            else:
                                got = run_pipe(cmd, src, dst, rss_file)
                            samples.setdefault((name, op, shape), []).append(got)
                            dst.unlink(missing_ok=True)
                for name in order:  # start-up cost: the same commands on an empty input
                    for op in ("encrypt", "decrypt"):
                        src = empty if op == "encrypt" else sealed_empty(name)
                        dst = tmp / f"out-empty.{name}"
                        wall, _ = run_file(cmds[name][op] + file_args(name, src, dst), rss_file)
                        fixed.setdefault((name, op), []).append(wall)

    rows: list[dict[str, Any]] = []
    for (name, op, shape), values in samples.items():
        wall = statistics.median(v[0] for v in values)
        peak = statistics.median(v[1] for v in values)
        start = statistics.median(fixed[(name, op)])
        rows.append(
            {
                "contender": name,
                "op": op,
                "shape": shape,
                "wall_s": wall,
                "peak_rss_mib": peak / 1024,
                "fixed_s": start,
                "mb_s": size / wall / 1e6,
                "mb_s_marginal": size / max(wall - start, 1e-9) / 1e6,
                "walls": [v[0] for v in values],
            }
        )
    by = {(row["contender"], row["op"], row["shape"]): row for row in rows}
    ratios: list[dict[str, Any]] = []
    for op in ("encrypt", "decrypt"):
        for shape in ("file", "pipe"):
            ours, raw, age = (by[(n, op, shape)] for n in ("arraycrypto", "raw-gcm", "age"))
            ratios.append(
                {
                    "op": op,
                    "shape": shape,
                    "throughput_vs_raw": raw["wall_s"] / ours["wall_s"],
                    "marginal_vs_raw": ours["mb_s_marginal"] / raw["mb_s_marginal"],
                    "wall_vs_age": ours["wall_s"] / age["wall_s"],
                    "rss_vs_age": ours["peak_rss_mib"] / age["peak_rss_mib"],
                }
            )
    if args.json:
        print(json.dumps({"size": size, "runs": args.runs, "rows": rows, "ratios": ratios}))
        return 0
    print(
        f"{size / (1 << 20):.0f} MiB, medians of {args.runs} runs, contenders alternating;"
        f" raw AES-GCM in memory in this process: {gcm_gbps:.2f} GB/s"
    )
    head = (
        f"{'op':>7} {'shape':>5} {'contender':>11} | {'wall s':>7} {'MB/s':>6}"
        f" {'fixed s':>7} {'MB/s marg':>9} | {'peak RSS MiB':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (r["op"] != "encrypt", r["shape"], r["contender"])):
        print(
            f"{r['op']:>7} {r['shape']:>5} {r['contender']:>11} | {r['wall_s']:7.2f}"
            f" {r['mb_s']:6.0f} {r['fixed_s']:7.2f} {r['mb_s_marginal']:9.0f} |"
            f" {r['peak_rss_mib']:12.1f}"
        )
    print()
    print("wall s of each run, in order (the spread is the machine's):")
    for r in sorted(rows, key=lambda r: (r["op"] != "encrypt", r["shape"], r["contender"])):
        walls = ", ".join(f"{w:.2f}" for w in r["walls"])
        print(f"{r['op']:>7} {r['shape']:>5} {r['contender']:>11} | {walls}")
    print()
    print("ratios (arraycrypto against each):")
    for q in ratios:
        print(
            f"{q['op']:>7} {q['shape']:>5}: throughput {q['throughput_vs_raw']:.2f}x raw-gcm"
            f" (marginal {q['marginal_vs_raw']:.2f}x); wall {q['wall_vs_age']:.2f}x age;"
            f" peak RSS {q['rss_vs_age']:.2f}x age"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
