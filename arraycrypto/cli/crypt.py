"""``arraycrypto encrypt`` and ``decrypt``: stdin to stdout."""

from __future__ import annotations

import argparse
import sys
import time

import anyio

from ..core.config import CryptoConfig
from ..core.keyring import Keyring

__all__ = ["run_decrypt", "run_encrypt"]


def run_encrypt(args: argparse.Namespace, config: CryptoConfig) -> int:
    from ..client import CryptoClient

    data = sys.stdin.buffer.read()

    async def main() -> bytes:
        async with CryptoClient(config) as client:
            return await client.encrypt_message(data, args.associated_data.encode())

    sys.stdout.buffer.write(anyio.run(main))
    return 0


def run_decrypt(args: argparse.Namespace, config: CryptoConfig) -> int:
    # Offline: the keyring alone decrypts; no server is contacted. The clock is always
    # passed in: a ciphertext dated beyond max_drift in the future is refused, --ttl or not.
    keyring = Keyring(config.secret_key, old=config.old_secret_keys, next=config.next_secret_keys)
    now_ms = int(time.time() * 1000)
    plaintext = keyring.decrypt(
        sys.stdin.buffer.read(),
        args.associated_data.encode(),
        ttl=args.ttl,
        now_ms=now_ms,
        max_drift=config.max_drift,
    )
    sys.stdout.buffer.write(plaintext)
    return 0
