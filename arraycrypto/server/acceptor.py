"""The accept loop: every pending connection per wake-up; no error of one ends it."""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import anyio
import anyio.lowlevel

from ..net.logs import RateLimitedLog
from .door import Door
from .metrics import Metrics

__all__ = ["Listening", "accept_loop"]

# accept() errors that mean "out of resources for now": wait a little, then go on.
_ACCEPT_RETRY: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors that mean the listening socket itself is unusable.
_LISTENER_BROKEN: Final = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})
_ACCEPT_BATCH: Final = 256  # connections accepted per wake-up before yielding to others


class Listening(Protocol):
    """A listening socket, as the accept loop uses it."""

    def fileno(self) -> int:
        """Its descriptor, to wait on."""

    def accept(self) -> tuple[socket.socket, Any]:
        """One pending connection (non-blocking)."""


async def accept_loop(
    sock: Listening,
    door: Door,
    metrics: Metrics,
    warnings: RateLimitedLog,
    take: Callable[[socket.socket], None],
) -> None:
    """Accept on a listening socket until cancelled, handing each connection to ``take``.

    Our own loop rather than anyio's ``serve()``: it accepts every pending connection
    per wake-up (a reconnect storm arrives all at once), while ``door`` says there is
    room, and no error of one connection ends it: running out of descriptors (EMFILE)
    slows accepting down, a connection that failed before we got to it (ECONNABORTED,
    EPROTO, a firewall's EPERM...) is skipped, as trio's own accept loop does. Only a
    listener that is itself broken (EBADF, ENOTSOCK, EINVAL) stops it. ``warnings`` are
    rate-limited.
    """
    while True:
        await anyio.wait_readable(sock)
        for _ in range(_ACCEPT_BATCH):
            now = time.monotonic()
            until = door.wait_until(now)
            if until is not None:
                await door.wait_for_room(until - now)
                break  # then look at the socket again
            try:
                client, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break  # none pending
            except OSError as exc:
                if exc.errno in _LISTENER_BROKEN:
                    raise
                metrics.accept_errors_total += 1
                if exc.errno in _ACCEPT_RETRY:
                    warnings.log(
                        logging.WARNING,
                        "resources",
                        "accept failed (%s): retrying in 0.1 s",
                        exc.strerror,
                    )
                    await anyio.sleep(0.1)
                    break
                warnings.log(
                    logging.INFO, "connection", "accept failed (%s): skipped", exc.strerror
                )
                continue
            take(client)
        else:
            await anyio.lowlevel.checkpoint()  # a long batch: let the others run
