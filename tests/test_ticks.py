"""The tick schedule, pure: aligned to the wall clock, skipping after a stall."""

from __future__ import annotations

import pytest

from arraycrypto.core.ticks import TickSchedule

T = 1_700_000_000_000  # a tick boundary for 100 ms and 1 s intervals


def test_ticks_follow_the_wall_clock() -> None:
    schedule = TickSchedule(100)
    assert schedule.tick_at(T) == T // 100
    assert schedule.tick_at(T + 99) == T // 100
    assert schedule.tick_at(T + 100) == T // 100 + 1
    assert schedule.delay(T) == 0.1  # a boundary: the whole next interval
    assert schedule.delay(T + 30) == pytest.approx(0.07)


def test_one_tick_per_interval() -> None:
    schedule = TickSchedule(100)
    last = schedule.tick_at(T)
    assert schedule.due(T + 50, last) is None  # a timer that fired early: nothing yet
    assert schedule.due(T + 100, last) == (last + 1, 0)


def test_a_stall_skips_to_now_instead_of_bursting() -> None:
    # The loop was blocked for 4.5 intervals: one snapshot, for the current tick, and
    # three counted as skipped; the next is due one interval later, not at once.
    schedule = TickSchedule(100)
    last = schedule.tick_at(T)
    assert schedule.due(T + 450, last) == (last + 4, 3)
    assert schedule.due(T + 450, last + 4) is None
    assert schedule.delay(T + 450) == pytest.approx(0.05)
    assert schedule.due(T + 500, last + 4) == (last + 5, 0)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TickSchedule(0)
