"""Process-wide settings for a server of many connections: opt-in, never done by a library call.

``arraycrypto serve`` calls :func:`tune_process`; an application that embeds
:func:`~arraycrypto.serve` decides for itself whether to (the server works either way,
only with more GC pauses or fewer connections). Both changes belong to the process, not
to a library: a host application's own GC thresholds and file limit are its business.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import resource
import time
from typing import Final

from .metrics import Metrics, WindowMax

__all__ = [
    "GC_POLICIES",
    "GC_THRESHOLDS",
    "PACED_YOUNG",
    "GcWatch",
    "PacedPeriod",
    "keep_frozen",
    "pace_gc",
    "raise_fd_limit",
    "tune_gc",
    "tune_process",
    "watch_gc",
]

logger = logging.getLogger("arraycrypto.server")

#: Young collections every 10 000 net allocations instead of 700, full collections ten
#: times rarer: see :func:`tune_gc`.
GC_THRESHOLDS: Final = (10_000, 10, 100)
#: A collection at least this long is logged (DEBUG) with its generation.
_LONG_PAUSE: Final = 0.05
#: Descriptors a server needs beyond one per connection (listener, logs, the loop's own).
FD_HEADROOM: Final = 64


def tune_gc() -> None:
    """Fit the cyclic garbage collector to a heap of long-lived connections.

    The server's heap is mostly connection state that lives as long as its client and is
    freed by reference counting when the connection ends. Python's default thresholds
    still run full collections that scan all of it: seven while 10 000 clients connect,
    each stalling the event loop for up to half a second (docs/benchmarks.md). Raised
    thresholds keep young collections frequent enough for short-lived cycles and make
    full collections rare. Thresholds are only ever raised, so an application's own,
    larger settings win; a disabled collector stays disabled.
    """
    current = gc.get_threshold()
    if current[0] == 0:
        return  # automatic collection switched off by the application: leave it so
    gc.set_threshold(*(max(have, want) for have, want in zip(current, GC_THRESHOLDS, strict=True)))


def raise_fd_limit(max_connections: int) -> int:
    """Raise the soft open-file limit toward what ``max_connections`` needs; return it.

    Never above the hard limit; logs once what is missing when that is not enough.
    """
    want = max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < want:
        logger.warning(
            "open file limit %d is below the %d that max_connections %d needs: raise it"
            " (ulimit -n %d, or LimitNOFILE= in a systemd unit) or lower max_connections",
            soft,
            want,
            max_connections,
            want,
        )
    return soft


class GcWatch:
    """Times every collection (``gc.callbacks``, process-wide): pauses and counts.

    Registered by :func:`watch_gc`; a server's metrics read it at render time.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = 0.0
        self.pauses = WindowMax()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        pause = now - self._started
        self.pauses.record(pause, time.monotonic())
        generation = str(info.get("generation", "?"))
        self._metrics.count("gc_collections_total", generation)
        if pause >= _LONG_PAUSE:
            logger.debug(
                "a collection of generation %s took %.0f ms (%d collected)",
                generation,
                pause * 1000,
                info.get("collected", 0),
            )


def watch_gc(metrics: Metrics) -> GcWatch:
    """Time the collector's pauses into ``metrics`` (``gc_pause_seconds_max``)."""
    watch = GcWatch(metrics)
    gc.callbacks.append(watch)
    metrics.gauges["gc_pause_seconds_max"] = lambda: watch.pauses.value(time.monotonic())
    return watch


#: The collector policies ``arraycrypto serve --gc-policy`` can apply (for measuring).
GC_POLICIES: Final = ("default", "raised", "frozen", "paced")
#: The "paced" policy: a young and middle collection this often...
YOUNG_EVERY: Final = 0.1
#: ... or, on a quiet server, up to this far apart (each wake-up costs CPU too).
YOUNG_EVERY_MAX: Final = 0.5
#: A collection under this many seconds is a quiet one; any other puts the period back
#: to ``YOUNG_EVERY`` at once...
QUIET_PAUSE: Final = 0.002
#: ... and only after this many seconds of nothing but quiet ones does it double.
QUIET_FOR: Final = 2.0
#: The old generation's threshold under the "paced" policy: out of reach of its
#: ten middle collections a second (a day and more).
NO_FULL_COLLECTIONS: Final = 1_000_000
#: The young generation's threshold under the "paced" policy. Between two of its
#: collections (0.1 s) 10 000 connecting clients allocate about 30 000 objects: with
#: the automatic threshold at 10 000, young collections ran in between, and what they
#: moved to the middle generation was scanned again by the paced one. Not higher: a
#: burst that outruns the clock still gets a young collection before it grows long.
PACED_YOUNG: Final = 50_000
#: Seconds between two freezes of the long-lived heap under the "frozen" policy.
FREEZE_EVERY: Final = 60.0


async def keep_frozen(every: float = FREEZE_EVERY) -> None:
    """The "frozen" policy: move what survived to the permanent generation, repeatedly.

    Long-lived connection state is freed by reference counting when a connection ends
    (tests/test_memory.py), so it need not be scanned by every full collection: frozen,
    a full collection scans only what is new. A young collection first, so short-lived
    cycles are collected rather than frozen.
    """
    import anyio

    while True:
        await anyio.sleep(every)
        gc.collect(1)
        gc.freeze()


class PacedPeriod:
    """How long :func:`pace_gc` waits before its next collection (pure: times passed in).

    A collection's pause grows with what survived since the last one: with the period
    under a steady load, and not at all for a burst (a round of pongs, a reconnect
    storm), whose survivors are there whenever the collection comes. So the period
    doubles only after ``QUIET_FOR`` seconds of nothing but quick collections (a load
    that at ``YOUNG_EVERY`` costs under ``QUIET_PAUSE`` per collection costs at most
    five times that at ``YOUNG_EVERY_MAX``), and comes back to ``YOUNG_EVERY`` at once
    after any collection that is not quick. A busy server (10 000 connections and
    their pings) never stays quiet that long and keeps ``YOUNG_EVERY``; a quiet one
    wakes five times less.
    """

    __slots__ = ("_quiet_since", "period")

    def __init__(self) -> None:
        self.period = YOUNG_EVERY
        self._quiet_since: float | None = None

    def after(self, pause: float, now: float) -> float:
        """The next period, after a collection that took ``pause`` seconds, at ``now``."""
        if pause >= QUIET_PAUSE:
            self.period = YOUNG_EVERY
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= QUIET_FOR:
            self.period = min(YOUNG_EVERY_MAX, self.period * 2)
            self._quiet_since = now  # another QUIET_FOR before the next step
        return self.period


async def pace_gc(freeze_every: float = FREEZE_EVERY) -> None:
    """The "paced" policy: young and middle collections by the clock, then freeze.

    Every wake-up of a waiting connection (a pong, a read) replaces a few dozen
    long-lived objects (the task's future, the selector's key, the coroutine chain).
    The dying ones are old, and their deaths count against the young generation's
    allocation counter, so an automatic young collection comes late and finds 100 000
    to 200 000 objects at 10 000 connections: 60-150 ms each (docs/benchmarks.md). So
    every 0.1 s the young and middle generations are collected together: what
    survived 0.1 s moves to the old generation after one scan, a few thousand objects
    (a few milliseconds); middle collections once a second instead held a second's
    survivors and took 50-160 ms. A server that is small or quiet has few survivors:
    there the period stretches up to 0.5 s (:class:`PacedPeriod`), since every
    wake-up costs CPU too. Every ``freeze_every`` seconds the old generation is
    frozen, so no full collection scans the long-lived state of every connection.

    Ten middle collections a second would also run the old generation's counter up
    to its threshold every ten seconds, and the next automatic collection would be a
    full one (280-470 ms at 10 000 connections, measured): pacing raises that
    threshold out of reach, and the young one to :data:`PACED_YOUNG`, a backstop for
    an allocation burst. Full collections then never run by themselves; what
    survives is either freed by reference counting when its connection ends (ended
    connections leave no cycles: tests/test_memory.py) or frozen, and the soak's RSS
    slope is the check that nothing piles up (docs/reliability.md).
    """
    import anyio

    found = gc.get_threshold()
    young, middle, old = found
    paced = (max(young, PACED_YOUNG), middle, max(old, NO_FULL_COLLECTIONS))
    if young:  # automatic collection switched off by the application: leave it so
        gc.set_threshold(*paced)
    try:
        frozen_at = time.monotonic()
        pacing = PacedPeriod()
        while True:
            await anyio.sleep(pacing.period)
            started = time.perf_counter()
            gc.collect(1)
            now = time.monotonic()
            pacing.after(time.perf_counter() - started, now)
            if now - frozen_at >= freeze_every:
                gc.freeze()
                frozen_at = now
    finally:
        # Stopped (the server stopped, or an embedding application cancelled it): the
        # thresholds it found, unless someone set others meanwhile. What was frozen
        # stays frozen: unfreezing would also thaw an application's own freeze.
        if young and gc.get_threshold() == paced:
            gc.set_threshold(*found)


def tune_process(max_connections: int, gc_policy: str = "paced") -> None:
    """What ``arraycrypto serve`` does before it serves: the fd limit, the collector.

    Process-wide, so never done by :func:`~arraycrypto.server.serve` itself. The default
    "paced" policy also needs :func:`pace_gc` running beside the server (the CLI starts
    it); without it the raised thresholds alone are the "raised" policy.
    """
    raise_fd_limit(max_connections)
    if gc_policy != "default":
        tune_gc()
