"""Benchmark arraycrypto's envelope against raw AES-GCM and Fernet, side by side.

    python -m scripts.bench_crypto            # a table
    python -m scripts.bench_crypto --json     # one JSON object with medians and ratios

Everything runs in one process, interleaved round by round, so machine noise hits every
contender alike; the figures are medians over rounds of per-operation times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from arraycrypto import Keyring

SIZES = {"64 B": 64, "1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}


def per_op(fn: Callable[[], object], n: int) -> float:
    """Return microseconds per call of ``fn`` over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def bench_size(size: int, rounds: int, budget: float) -> dict[str, float]:
    data = os.urandom(size)
    key = AESGCM.generate_key(256)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    raw_ct = aead.encrypt(nonce, data, None)
    fernet = Fernet(Fernet.generate_key())
    fernet_token = fernet.encrypt(data)
    keyring = Keyring(os.urandom(32))
    snapshot = keyring.new_snapshot(1, os.urandom(16), 1_700_000_000_000)
    cipher = keyring.cipher(snapshot)
    envelope = cipher.encrypt(data)
    buffer = bytearray(cipher.envelope_size(size))
    assert keyring.decrypt(envelope) == data
    now = snapshot.timestamp + 1000
    expiry = now + 3_600_000
    fresh = itertools.count(expiry)  # a new expires_at every call, as now + ttl would be
    expiring = cipher.encrypt(data, expires_at=expiry)
    assert keyring.decrypt(expiring, now_ms=now) == data

    contenders: dict[str, Callable[[], object]] = {
        "raw_encrypt": lambda: aead.encrypt(os.urandom(12), data, None),
        "raw_decrypt": lambda: aead.decrypt(nonce, raw_ct, None),
        "fernet_encrypt": lambda: fernet.encrypt(data),
        "fernet_decrypt": lambda: fernet.decrypt(fernet_token),
        "arraycrypto_encrypt": lambda: cipher.encrypt(data),
        "arraycrypto_decrypt": lambda: keyring.decrypt(envelope),
        "arraycrypto_encrypt_into": lambda: cipher.encrypt_into(data, buffer),
        "expiry_encrypt_same": lambda: cipher.encrypt(data, expires_at=expiry),
        "expiry_encrypt_fresh": lambda: cipher.encrypt(data, expires_at=next(fresh)),
        "v1_decrypt_now": lambda: keyring.decrypt(envelope, now_ms=now),
        "expiry_decrypt": lambda: keyring.decrypt(expiring, now_ms=now),
    }
    # Calibrate n so one measurement takes about `budget` seconds.
    counts = {}
    for name, fn in contenders.items():
        one = max(per_op(fn, 3), 0.05)
        counts[name] = max(1, int(budget * 1e6 / one))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(per_op(fn, counts[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per sample")
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help=f"comma-separated subset of {list(SIZES)}"
    )
    args = parser.parse_args()

    result: dict[str, dict[str, float]] = {}
    for label, size in SIZES.items():
        if label not in args.sizes.split(","):
            continue
        med = bench_size(size, args.rounds, args.budget)
        med["encrypt_vs_raw"] = med["arraycrypto_encrypt"] / med["raw_encrypt"]
        med["decrypt_vs_raw"] = med["arraycrypto_decrypt"] / med["raw_decrypt"]
        med["fernet_encrypt_vs_ours"] = med["fernet_encrypt"] / med["arraycrypto_encrypt"]
        med["fernet_decrypt_vs_ours"] = med["fernet_decrypt"] / med["arraycrypto_decrypt"]
        med["encrypt_throughput_vs_raw"] = 1 / med["encrypt_vs_raw"]
        med["encrypt_into_vs_raw"] = med["arraycrypto_encrypt_into"] / med["raw_encrypt"]
        med["encrypt_into_throughput_vs_raw"] = 1 / med["encrypt_into_vs_raw"]
        med["decrypt_throughput_vs_raw"] = 1 / med["decrypt_vs_raw"]
        result[label] = med

    if args.json:
        json.dump({"unit": "microseconds per operation (median)", "sizes": result}, sys.stdout)
        print()
        return 0
    head = (
        f"{'size':>7} | {'raw enc':>9} {'ours enc':>9} {'ratio':>6} {'fernet':>9} {'x':>5} |"
        f" {'raw dec':>9} {'ours dec':>9} {'ratio':>6} {'fernet':>9} {'x':>5}"
    )
    print("µs per operation, medians; ratio = ours / raw AES-GCM; x = Fernet / ours")
    print("raw enc draws a fresh os.urandom(12) nonce, as ours does")
    print(head)
    print("-" * len(head))
    for label, r in result.items():
        print(
            f"{label:>7} | {r['raw_encrypt']:9.2f} {r['arraycrypto_encrypt']:9.2f}"
            f" {r['encrypt_vs_raw']:6.2f} {r['fernet_encrypt']:9.2f}"
            f" {r['fernet_encrypt_vs_ours']:5.1f} |"
            f" {r['raw_decrypt']:9.2f} {r['arraycrypto_decrypt']:9.2f}"
            f" {r['decrypt_vs_raw']:6.2f} {r['fernet_decrypt']:9.2f}"
            f" {r['fernet_decrypt_vs_ours']:5.1f}"
        )
    print()
    print("expiry (envelope v2 single) against v1, µs; decrypt both with now_ms (time checks):")
    print(
        f"{'size':>7} | {'v1 enc':>7} {'exp same':>8} {'delta':>6} {'exp new':>8} {'delta':>6} |"
        f" {'v1 dec':>7} {'exp dec':>8} {'delta':>6}"
    )
    for label, r in result.items():
        print(
            f"{label:>7} | {r['arraycrypto_encrypt']:7.2f} {r['expiry_encrypt_same']:8.2f}"
            f" {r['expiry_encrypt_same'] - r['arraycrypto_encrypt']:+6.2f}"
            f" {r['expiry_encrypt_fresh']:8.2f}"
            f" {r['expiry_encrypt_fresh'] - r['arraycrypto_encrypt']:+6.2f} |"
            f" {r['v1_decrypt_now']:7.2f} {r['expiry_decrypt']:8.2f}"
            f" {r['expiry_decrypt'] - r['v1_decrypt_now']:+6.2f}"
        )
    print()
    print("encrypt_into (caller's buffer, no copy), µs and throughput vs raw AES-GCM:")
    for label, r in result.items():
        print(
            f"{label:>7} | {r['arraycrypto_encrypt_into']:9.2f}"
            f"  throughput {r['encrypt_into_throughput_vs_raw']:.2f}x"
            f"  (encrypt: {r['encrypt_throughput_vs_raw']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
