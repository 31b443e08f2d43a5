"""``arraycrypto watch``: print each verified snapshot as a JSON line.

SIGHUP re-reads the client config (rotation) without reconnecting; SIGINT/SIGTERM stop.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import anyio

from ..core import messages as m
from ..core.config import CryptoConfig
from ..core.exceptions import CryptoError
from ..core.loading import load_client_config

__all__ = ["run_watch"]

logger = logging.getLogger("arraycrypto")


def run_watch(args: argparse.Namespace, config: CryptoConfig) -> int:
    from ..client import CryptoClient

    reader_gone = False

    async def main() -> None:
        nonlocal reader_gone
        received = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with anyio.open_signal_receiver(*received) as signals:
            async with anyio.create_task_group() as tg, CryptoClient(config) as client:

                async def stop() -> None:
                    async for signum in signals:
                        if signum == signal.SIGHUP:  # re-read the config, keep watching
                            try:
                                client.reload(load_client_config(args.config, env=os.environ))
                            except CryptoError as exc:
                                logger.error("reload failed, keeping the config: %s", exc)
                            else:
                                logger.warning("reloaded %s", args.config)
                            continue
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop)
                async for snapshot in client.watch():
                    line = m.encode(m.SnapshotMessage.from_snapshot(snapshot))
                    try:
                        sys.stdout.buffer.write(line + b"\n")
                        sys.stdout.buffer.flush()
                    except BrokenPipeError:  # the reader left (`| head`): we are done
                        reader_gone = True
                        tg.cancel_scope.cancel()
                        return

    anyio.run(main, backend=args.backend)
    if reader_gone:  # outside the task group: main() makes it a quiet exit
        raise BrokenPipeError
    return 0
