"""Hostile input at volume: 100 000+ generated cases against a live server, and offline.

    python -m scripts.fuzz                    # 110 000 network cases + offline cases
    python -m scripts.fuzz --cases 21000 --seed 7 --json
    python -m scripts.fuzz --tls --cases 21000          # the same cases over wss/https

Network: ``arraycrypto serve`` runs as a subprocess on 127.0.0.1 with short timeouts;
cases from tests/harness/hostile.py (22 classes: garbage around the request line, huge and
malformed headers, bad opcodes, reserved bits, unmasked frames, oversize lengths,
malformed control frames, fragments never finished, malformed JSON, wrong types,
unknown tags, wrong and replayed proofs, other protocol versions, binary frames, silent
connections) each get a fresh connection; the outcome (HTTP status or close code) must be
one the protocol documents. Meanwhile a witness client must receive every tick. Before
and after, the server's open file descriptors and event-loop tasks are counted.

With ``--tls`` the server has a certificate from a throwaway trustme CA and every case
(and the witness) runs over TLS, through the server's own TLS layer.

Offline: mutated envelopes (bit flips, truncations, splices, random bytes) must all raise
the one DecryptionError; mutated config files must all raise ConfigError.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import ssl
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec

from arraycrypto import (
    ConfigError,
    CryptoClient,
    CryptoConfig,
    DecryptionError,
    Keyring,
    load_client_config,
)
from tests.harness.constants import HOST, SECRET
from tests.harness.hostile import Runner, generate
from tests.harness.proc import fd_count
from tests.harness.servers import ServeProcess, fetch_metric, serve_process


async def network(
    server: ServeProcess, ca_file: str | None, count: int, seed: int, concurrency: int
) -> dict[str, Any]:
    pid, port = server.pid, server.port
    cases = generate(random.Random(seed), count)
    context = None
    if ca_file:
        context = ssl.create_default_context(cafile=ca_file)
    runner = Runner(port, timeout=10, ssl_context=context)
    outcomes: Counter[str] = Counter()
    by_class: dict[str, Counter[str]] = {}
    wrong: list[tuple[str, str]] = []
    ticks: list[int] = []
    await anyio.sleep(0.5)
    fds_before = fd_count(pid)
    tasks_before = fetch_metric(port, "arraycrypto_tasks", ca_file)
    config = CryptoConfig(
        server_url=f"{'https' if context else 'http'}://{HOST}:{port}",
        secret_key=SECRET,
        max_drift=30,
        ca_file=ca_file,
    )
    started = time.monotonic()
    async with CryptoClient(config) as witness, anyio.create_task_group() as tg:
        await witness.authenticate()

        async def watch() -> None:
            async for snapshot in witness.watch():
                ticks.append(snapshot.tick)

        tg.start_soon(watch)
        limit = anyio.Semaphore(concurrency)
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            case = cases[i]
            try:
                outcome = await runner.run(case)
            except Exception as exc:  # a case the runner itself could not drive
                outcome = f"runner-error:{type(exc).__name__}"
            finally:
                limit.release()
            outcomes[outcome] += 1
            by_class.setdefault(case.kind, Counter())[outcome] += 1
            if outcome not in case.expect:
                wrong.append((case.kind, outcome))
            done += 1

        async with anyio.create_task_group() as runs:
            for i in range(len(cases)):
                await limit.acquire()
                runs.start_soon(one, i)
        elapsed = time.monotonic() - started
        tg.cancel_scope.cancel()
    await anyio.sleep(1.0)  # let the server finish closing the last connections
    fds_after = fd_count(pid)
    tasks_after = fetch_metric(port, "arraycrypto_tasks", ca_file)
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(ticks))
    return {
        "cases": len(cases),
        "seconds": round(elapsed, 1),
        "mismatches": len(wrong),
        "mismatch_examples": wrong[:10],
        "outcomes": dict(outcomes.most_common()),
        "classes": {k: dict(v) for k, v in sorted(by_class.items())},
        "server_alive": server.returncode is None,
        "witness_ticks": len(ticks),
        "witness_missed_ticks": gaps,
        "server_fds_before": fds_before,
        "server_fds_after": fds_after,
        "server_tasks_before": tasks_before,
        "server_tasks_after": tasks_after,
        "connections_after": fetch_metric(port, "arraycrypto_connections ", ca_file),
    }


def offline(count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    ring = Keyring(SECRET, old=[bytes(range(1, 33))])
    snapshot = ring.new_snapshot(1, bytes(16), 1_700_000_000_000, 16)
    valid = [ring.encrypt(snapshot, os.urandom(rng.randint(0, 300)), b"ad") for _ in range(50)]
    other_errors: Counter[str] = Counter()
    envelope_cases = 0
    for _ in range(count):
        base = bytearray(rng.choice(valid))
        kind = rng.randint(0, 4)
        if kind == 0:
            i = rng.randrange(len(base) * 8)
            base[i // 8] ^= 1 << (i % 8)
        elif kind == 1:
            base = base[: rng.randrange(len(base))]
        elif kind == 2:  # splice another envelope's body onto this header
            other = rng.choice(valid)
            cut = rng.randint(1, min(len(base), len(other)) - 1)
            base = base[:cut] + other[cut:]
            if bytes(base) in valid:
                continue
        elif kind == 3:
            base = bytearray(os.urandom(rng.randint(0, 200)))
        else:
            base[rng.randrange(len(base))] = rng.getrandbits(8)
            if bytes(base) in valid:
                continue
        envelope_cases += 1
        try:
            ring.decrypt(bytes(base), b"ad")
            other_errors["decrypted a mutated envelope"] += 1
        except DecryptionError as exc:
            if str(exc) != "decryption failed":
                other_errors["non-opaque message"] += 1
        except Exception as exc:
            other_errors[type(exc).__name__] += 1

    fields = [
        "server_url",
        "secret_key",
        "max_drift",
        "handshake_points",
        "hash_size",
        "server_urls",
        "old_secret_keys",
        "ca_file",
        "connect_timeout",
        "bogus",
    ]
    values: list[Any] = [
        None,
        True,
        -1,
        0,
        1e308,
        "",
        "x",
        "AAAA",
        "http://",
        [],
        {},
        [1],
        "ftp://h",
        2**70,
        "ws://h:1",
        "A" * 5000,
    ]
    config_cases = 0
    config_ok = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.json"
        path.touch(mode=0o600)  # holds a secret: 0600, as the loader expects (no warning)
        for _ in range(count // 5):
            data: dict[str, Any] = {"secret_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}
            for _ in range(rng.randint(1, 3)):
                data[rng.choice(fields)] = rng.choice(values)
            raw = msgspec.json.encode(data)
            if rng.random() < 0.2:
                raw = raw[: rng.randrange(len(raw))]
            path.write_bytes(raw)
            config_cases += 1
            try:
                load_client_config(path)
                config_ok += 1  # a mutation that happens to be valid
            except ConfigError as exc:
                if "AAECAwQF" in str(exc):
                    other_errors["secret in a config error"] += 1
            except Exception as exc:
                other_errors[f"config:{type(exc).__name__}"] += 1
    return {
        "envelope_cases": envelope_cases,
        "config_cases": config_cases,
        "configs_valid_by_chance": config_ok,
        "unexpected": dict(other_errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=110_000)
    parser.add_argument("--offline-cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tls", action="store_true", help="every case over TLS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tls: dict[str, Any] = {}
        ca_file: str | None = None
        if args.tls:
            import trustme

            ca = trustme.CA()
            pem, ca_path = Path(tmp) / "server.pem", Path(tmp) / "ca.pem"
            ca.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(pem)
            ca.cert_pem.write_to_path(ca_path)
            tls = {"tls_certfile": str(pem), "tls_keyfile": str(pem)}
            ca_file = str(ca_path)
        server = serve_process(
            Path(tmp),
            tick_interval=0.5,
            handshake_timeout=0.5,
            http_read_timeout=0.5,
            max_frame_size=4096,
            max_connections=20_000,
            **tls,
        )
        server.start()
        try:
            net = anyio.run(network, server, ca_file, args.cases, args.seed, args.concurrency)
        finally:
            server.kill()
    off = offline(args.offline_cases, args.seed)
    result = {"tls": args.tls, "network": net, "offline": off}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    ok = (
        net["mismatches"] == 0
        and net["server_alive"]
        and net["witness_missed_ticks"] == 0
        and net["server_fds_after"] <= net["server_fds_before"]
        and net["server_tasks_after"] <= net["server_tasks_before"]
        and not off["unexpected"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
