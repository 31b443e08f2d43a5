"""Time helpers for tests: wall-clock milliseconds, and bounded polling."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

__all__ = ["current_ms", "wait_for"]


def current_ms() -> int:
    """Wall-clock milliseconds, the unit of snapshot timestamps."""
    return int(time.time() * 1000)


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until true, bounded by ``timeout`` (state owned by other tasks)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
