"""Client benchmark against a live local server: local encryption vs fetch-per-encrypt.

    python -m scripts.bench_client              # a table
    python -m scripts.bench_client --json       # one JSON object, medians and ratios
    python -m scripts.bench_client --backend trio

Starts ``arraycrypto serve`` on 127.0.0.1 (a subprocess, ended at exit), connects one
CryptoClient, and measures in one process, interleaved round by round, medians of µs
per operation at 64 B and 1 KiB:

- ``raw``: ``AESGCM.encrypt`` with a fresh ``os.urandom(12)`` nonce (the floor);
- ``encrypt``: ``client.encrypt`` (synchronous, the cached snapshot);
- ``encrypt_message`` / ``decrypt_message``: the async API;
- ``fetch_then_encrypt``: the seed's design, "GET /snapshot over HTTP, then encrypt",
  against the same server (a loopback HTTP request per message, then the envelope).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from arraycrypto import CryptoClient, CryptoConfig, Keyring, ServerConfig, save_config
from arraycrypto.core import messages as m
from tests.harness.constants import HOST
from tests.harness.servers import ServeProcess

SECRET = os.urandom(32)

SIZES = {"64 B": 64, "1 KiB": 1024}


def start_server(tmp: Path) -> ServeProcess:
    """``arraycrypto serve`` on 127.0.0.1 with a fresh secret, started."""
    config = tmp / "server_config.json"
    save_config(config, ServerConfig(secret_key=SECRET, host=HOST, port=0))
    server = ServeProcess("--config", str(config), log=tmp / "server.log")
    server.start()
    return server


async def fetch_snapshot(port: int) -> bytes:
    async with await anyio.connect_tcp(HOST, port) as stream:
        await stream.send(b"GET /snapshot HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return data.partition(b"\r\n\r\n")[2]


def per_op_sync(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def per_op_async(fn: Callable[[], Awaitable[object]], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - t0) / n * 1e6


Contender = tuple[bool, Callable[[], object]]  # (is it async, the call)


def contenders(client: CryptoClient, port: int, size: int) -> dict[str, Contender]:
    data = os.urandom(size)
    aead = AESGCM(os.urandom(32))
    token = client.encrypt(data)
    keyring = Keyring(SECRET)  # the fetch-per-encrypt client's own keyring

    async def fetch_then_encrypt() -> bytes:
        msg = m.decode(await fetch_snapshot(port))
        assert isinstance(msg, m.SnapshotMessage)
        return keyring.cipher(msg.to_snapshot()).encrypt(data)

    # Synchronous calls are timed in a plain loop, async ones in an awaiting loop, so
    # the sync ratios carry no coroutine overhead.
    return {
        "raw": (False, lambda: aead.encrypt(os.urandom(12), data, None)),
        "encrypt": (False, lambda: client.encrypt(data)),
        "encrypt_message": (True, lambda: client.encrypt_message(data)),
        "decrypt_message": (True, lambda: client.decrypt_message(token)),
        "fetch_then_encrypt": (True, fetch_then_encrypt),
    }


async def measure(kind: Contender, n: int) -> float:
    is_async, fn = kind
    if is_async:
        return await per_op_async(fn, n)  # type: ignore[arg-type]
    return per_op_sync(fn, n)


async def bench(port: int, rounds: int, budget: float) -> dict[str, dict[str, float]]:
    config = CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET)
    result: dict[str, dict[str, float]] = {}
    async with CryptoClient(config) as client:
        await client.authenticate()
        for label, size in SIZES.items():
            calls = contenders(client, port, size)
            counts = {}
            for name, kind in calls.items():
                one = max(await measure(kind, 3), 0.05)
                counts[name] = max(3, int(budget * 1e6 / one))
            samples: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(rounds):
                for name, kind in calls.items():
                    samples[name].append(await measure(kind, counts[name]))
            med = {name: statistics.median(s) for name, s in samples.items()}
            med["encrypt_vs_raw"] = med["encrypt"] / med["raw"]
            med["encrypt_message_vs_raw"] = med["encrypt_message"] / med["raw"]
            med["decrypt_message_vs_raw"] = med["decrypt_message"] / med["raw"]
            med["fetch_vs_encrypt_message"] = med["fetch_then_encrypt"] / med["encrypt_message"]
            result[label] = med
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            result = anyio.run(bench, server.port, args.rounds, args.budget, backend=args.backend)
        finally:
            server.stop()
    if args.json:
        print(
            json.dumps(
                {
                    "unit": "microseconds per operation (median)",
                    "backend": args.backend,
                    "sizes": result,
                }
            )
        )
        return 0
    print(
        f"µs per operation, medians ({args.backend}); ratios against raw AES-GCM with a fresh nonce"
    )
    head = (
        f"{'size':>6} | {'raw':>6} {'encrypt':>8} {'ratio':>6} | {'enc_msg':>8} {'ratio':>6}"
        f" | {'dec_msg':>8} | {'fetch+enc':>9} {'fetch/enc_msg':>13}"
    )
    print(head)
    print("-" * len(head))
    for label, r in result.items():
        print(
            f"{label:>6} | {r['raw']:6.2f} {r['encrypt']:8.2f} {r['encrypt_vs_raw']:6.2f} |"
            f" {r['encrypt_message']:8.2f} {r['encrypt_message_vs_raw']:6.2f} |"
            f" {r['decrypt_message']:8.2f} | {r['fetch_then_encrypt']:9.1f}"
            f" {r['fetch_vs_encrypt_message']:12.0f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
