"""When ticks fall due: the server's schedule, aligned to the wall clock (pure).

Tick ``n`` covers the wall-clock interval ``[n·i, (n+1)·i)`` milliseconds, ``i`` being
``tick_interval``: every server with the same interval agrees on the tick number at any
instant, across restarts. After a stall the schedule jumps to the current tick: the
ticks it missed are counted, never sent late in a burst.
"""

from __future__ import annotations

__all__ = ["TickSchedule"]


class TickSchedule:
    """The tick schedule of one ``interval_ms``; the caller passes the time in."""

    __slots__ = ("interval_ms",)

    def __init__(self, interval_ms: int) -> None:
        if interval_ms <= 0:
            raise ValueError("interval_ms must be positive")
        self.interval_ms = interval_ms

    def tick_at(self, now_ms: int) -> int:
        """The tick current at ``now_ms``."""
        return now_ms // self.interval_ms

    def delay(self, now_ms: int) -> float:
        """Seconds from ``now_ms`` to the next tick boundary (never 0)."""
        return (self.interval_ms - now_ms % self.interval_ms) / 1000

    def due(self, now_ms: int, last_tick: int) -> tuple[int, int] | None:
        """The tick to make now after ``last_tick``, and how many were skipped; None if early.

        None means the boundary has not passed yet (a timer that fired a hair early).
        """
        tick = self.tick_at(now_ms)
        if tick <= last_tick:
            return None
        return tick, tick - last_tick - 1
