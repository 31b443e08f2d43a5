"""Fixed values every test and script shares: the loopback host and test secrets."""

from __future__ import annotations

from typing import Final

__all__ = ["HOST", "OTHER", "SECRET", "T0"]

HOST: Final = "127.0.0.1"
SECRET: Final = bytes(range(32))
OTHER: Final = bytes(range(1, 33))
#: A fixed wall-clock instant (ms) for tests of the pure core.
T0: Final = 1_700_000_000_000
