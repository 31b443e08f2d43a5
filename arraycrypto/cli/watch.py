"""``arraycrypto watch``: print each verified snapshot as a JSON line."""

from __future__ import annotations

import argparse
import signal
import sys

import anyio

from ..core import messages as m
from ..core.config import CryptoConfig

__all__ = ["run_watch"]


def run_watch(args: argparse.Namespace, config: CryptoConfig) -> int:
    from ..client import CryptoClient

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg, CryptoClient(config) as client:

                async def stop() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop)
                async for snapshot in client.watch():
                    line = m.encode(m.SnapshotMessage.from_snapshot(snapshot))
                    sys.stdout.buffer.write(line + b"\n")
                    sys.stdout.buffer.flush()

    anyio.run(main, backend=args.backend)
    return 0
