"""The fan-out: the ticker makes each snapshot, every subscriber gets it, pings find the dead.

Each tick's frame is serialised **once** (server frames are unmasked and no extension is
negotiated, so the bytes are the same for every client). For each subscriber whose
stream is idle the frame goes out in one non-blocking ``send`` (over TLS, encrypted
first): no task switch, no per-client work beyond the syscall. Only a subscriber whose
kernel buffer is full gets a writer task, started on demand, with a one-slot mailbox: a
newer frame replaces an unsent older one, so what is queued for a slow client is
bounded and it never delays the ticker or anyone else. A writer blocked past
``write_timeout`` drops its client; one task pings every client and drops those that
stop answering.

Every frame comes from the connection object (``conn.push``, ``conn.ping``), which
hands out bytes only while the connection is open and subscribed: nothing is ever
written after a Close frame.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio
import anyio.abc
from websockets.frames import Frame, Opcode

from ..core import messages as m
from ..core.config import ServerConfig
from ..core.keyring import Keyring
from ..core.keys import Snapshot
from ..core.server_connection import PingVerdict, ServerConnection
from ..core.ticks import TickSchedule
from ..net.logs import RateLimitedLog
from ..net.sockets import STREAM_ERRORS, DirectStream
from .metrics import Metrics

__all__ = ["Fanout", "Subscriber", "Ticker", "sleep_noting_lag"]

logger = logging.getLogger("arraycrypto.server")

_CLOSE_STEP: Final = 0.1  # seconds between two batches of a drain's closes
#: The pinger's rounds per interval, each for one slot of the clients (pings spread out).
_PING_SLOTS: Final = 10


async def sleep_noting_lag(seconds: float, metrics: Metrics) -> None:
    """Sleep ``seconds``, then record how much later than asked the loop woke (loop lag).

    On the monotonic clock: a step of the wall clock is no stall.
    """
    asked = time.monotonic() + seconds
    await anyio.sleep(seconds)
    woke = time.monotonic()
    metrics.loop_lag.record(max(0.0, woke - asked), woke)


class Ticker:
    """Makes the signed snapshot of every tick, aligned to the wall clock.

    Each tick's snapshot is derived from the secret and the tick
    (:meth:`~arraycrypto.core.keys.Key.tick_snapshot`): every worker and every replica
    holding the same secret and ``tick_interval`` publishes the same bytes for a tick.
    """

    def __init__(
        self,
        config: ServerConfig,
        keyring: Keyring,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self.json = b""  # the /snapshot body
        self.frame = b""  # the push frame, the same bytes for every client
        self.reload(config, keyring)

    def reload(self, config: ServerConfig, keyring: Keyring) -> None:
        """Take a new config and keyring: the current tick's snapshot is made again.

        Clients meet the new key at once (the same tick under a new key is a new
        snapshot, dated the same); a new interval takes effect at the next boundary.
        """
        self._keyring = keyring
        self._hash_size = config.hash_size
        self.schedule = TickSchedule(round(config.tick_interval * 1000))
        self.snapshot: Snapshot = self._make(self.schedule.tick_at(self.now_ms()))
        self._encode()

    def now_ms(self) -> int:
        """The wall clock in milliseconds, the unit of snapshot timestamps."""
        return int(self._clock() * 1000)

    def _make(self, tick: int) -> Snapshot:
        return self._keyring.tick_snapshot(tick, self.schedule.interval_ms, self._hash_size)

    def _encode(self) -> None:
        # Encoded once per tick: the /snapshot body and the push frame every client gets.
        self.json = m.encode(m.SnapshotMessage.from_snapshot(self.snapshot))
        self.frame = Frame(Opcode.TEXT, self.json).serialize(mask=False)

    def seconds_left(self) -> int:
        """Whole seconds the current snapshot stays current (for HTTP caching)."""
        return int(self.schedule.delay(self.now_ms()))

    def advance(self) -> bytes | None:
        """Make the snapshot of the tick due now, and return its frame; None if none is due."""
        due = self.schedule.due(self.now_ms(), self.snapshot.tick)
        if due is None:
            return None  # woke a hair early: the boundary has not passed yet
        tick, skipped = due  # after a stall: skip to now, never a burst of stale ticks
        self._metrics.ticks_skipped_total += skipped
        self.snapshot = self._make(tick)
        self._encode()
        self._metrics.ticks_total += 1
        return self.frame

    async def run(self, on_tick: Callable[[bytes], None]) -> None:
        """Tick forever, calling ``on_tick(frame)`` with each new snapshot's frame.

        How late the ticker wakes for each boundary is recorded as loop lag: a stalled
        loop wakes it late, and it wakes anyway, so the gauge costs no wake-up of its own.
        """
        while True:
            await sleep_noting_lag(self.schedule.delay(self.now_ms()), self._metrics)
            frame = self.advance()
            if frame is not None:
                on_tick(frame)


class Subscriber:
    """One subscribed client in the fan-out: its connection, stream and one-slot mailbox."""

    __slots__ = (
        "conn",
        "pending",
        "ping_due",
        "ping_slot",
        "stream",
        "wake",
        "write_started",
        "writing",
    )

    def __init__(self, conn: ServerConnection, stream: DirectStream, ping_slot: int) -> None:
        self.conn = conn
        self.stream = stream
        self.ping_slot = ping_slot  # which of the pinger's rounds looks at this client
        self.pending: bytes | None = None  # the newest unsent push (replaceable)
        self.ping_due = False  # a ping waits for the writer
        self.writing = False  # a writer task is running
        self.write_started: float | None = None  # when the current awaited write began
        #: Set while the connection waits with no task of its own (parked in the room):
        #: gives it one. Its task is what reads a Close and ends the connection.
        self.wake: Callable[[], None] | None = None

    @property
    def session_id(self) -> str:
        """The connection's session id, for logs."""
        return self.conn.session_id


class Fanout:
    """The set of subscribers, the per-tick push, the writers and the pinger."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self.subscribers: set[Subscriber] = set()
        #: Writer tasks started (the slow path); an idle client never needs one.
        self.writers_started = 0
        self._errors = RateLimitedLog(logger)
        self._tg: anyio.abc.TaskGroup | None = None
        self._next_slot = 0
        metrics.gauges["subscribed_clients"] = lambda: len(self.subscribers)

    def __len__(self) -> int:
        return len(self.subscribers)

    async def run(self, ticker: Ticker) -> None:
        """Run the ticker and the pinger; writers run in the same task group."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._pinger)
            # Looked up per tick, not bound once: a test can stop the pushes.
            await ticker.run(lambda frame: self.push(frame))

    def reload(self, config: ServerConfig) -> None:
        """Take a new config (write and ping timeouts apply from their next use)."""
        self._config = config

    async def close_all(self, window: float) -> None:
        """Close every subscriber with 1001, spread evenly over ``window`` seconds.

        The subscribers are shuffled and closed in batches at most every 0.1 s, so the
        last goes near the end of the window however few there are: their reconnects
        arrive elsewhere at a steady rate, not as a storm.
        """
        subs = list(self.subscribers)
        if not subs:
            return
        random.shuffle(subs)  # no order of arrival to replay on the others
        steps = max(1, min(len(subs), int(window / _CLOSE_STEP)))
        for step in range(steps):
            begin, end = step * len(subs) // steps, (step + 1) * len(subs) // steps
            for sub in subs[begin:end]:
                self._goodbye(sub)
            await anyio.sleep(window / steps)

    def _goodbye(self, sub: Subscriber) -> None:
        """Start a subscriber's closing handshake (1001); its own task reads the echo.

        From this moment its connection hands out no push or ping, so nothing follows
        the Close frame, even from a writer still running.
        """
        if sub not in self.subscribers:
            return
        try:
            sub.conn.going_away(time.monotonic())
            if sub.wake is not None:
                sub.wake()  # its task reads the client's Close (or times out)
            data = b"".join(sub.conn.data_to_send())
            if not data:
                return
            if not sub.stream.write_now(data):
                self._spawn(self._send_goodbye(sub, data))
            elif sub.stream.backlogged:
                self._spawn(self._send_goodbye(sub, b""))
        except Exception:
            self._failed(sub, "drain")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._tg is not None
        self._tg.start_soon(lambda: coro, name="arraycrypto goodbye")

    async def _send_goodbye(self, sub: Subscriber, data: bytes) -> None:
        """Send (or finish sending) a Close frame the kernel did not take at once."""
        with anyio.move_on_after(self._config.write_timeout):
            try:
                await (sub.stream.send(data) if data else sub.stream.flush())
            except STREAM_ERRORS:
                self._drop(sub, "slow", "goodbye not delivered")

    def add(self, conn: ServerConnection, stream: DirectStream) -> Subscriber:
        """Add a subscribed connection; remove it with :meth:`discard` when it ends."""
        subscriber = Subscriber(conn, stream, self._next_slot)
        self._next_slot = (self._next_slot + 1) % _PING_SLOTS
        self.subscribers.add(subscriber)
        return subscriber

    def discard(self, subscriber: Subscriber) -> None:
        """Forget a subscriber whose connection ended."""
        self.subscribers.discard(subscriber)

    def push(self, frame: bytes) -> None:
        """Hand ``frame`` to every subscriber: written now if its stream is idle."""
        started = time.perf_counter()
        now = time.monotonic()
        write_timeout = self._config.write_timeout
        for sub in list(self.subscribers):
            # No exception of one client's may reach the ticker (and stop everyone's).
            try:
                data = sub.conn.push(frame)
                if data is None:
                    continue  # closing: its reader removes it
                if sub.writing:
                    # Its writer is still busy: replace any unsent older frame, never queue.
                    sub.pending = data
                    if sub.write_started is not None and now - sub.write_started > write_timeout:
                        self._drop(sub, "slow", "writes blocked")
                    continue
                stream = sub.stream
                if not stream.write_now(data):
                    sub.pending = data  # full, or a send is in progress: a writer sends it
                    self._start_writer(sub)
                elif stream.backlogged:
                    self._start_writer(sub)  # partly written: the writer sends the rest
            except Exception:
                self._failed(sub, "fan-out")
        self._metrics.pushes_total += len(self.subscribers)
        elapsed = time.perf_counter() - started
        self._metrics.push_duration_seconds_last = elapsed
        self._metrics.push_duration_seconds_sum += elapsed

    async def _pinger(self) -> None:
        """Dead-peer detection for every client from one task, not a timer per connection.

        In rounds: each looks at one slot of clients out of ``_PING_SLOTS``, so pings go
        out, and pongs come back, spread over the interval. Pinging everyone at once
        brought 10 000 pongs back in one burst, which stalled the loop for seconds.
        """
        slot = 0
        while True:
            interval = self._config.ping_interval  # read each round: a reload applies
            timeout = self._config.ping_timeout
            await anyio.sleep(min(interval, timeout) / _PING_SLOTS)
            self._ping_round(slot, time.monotonic(), interval, timeout)
            slot = (slot + 1) % _PING_SLOTS

    def _ping_round(self, slot: int, now: float, interval: float, timeout: float) -> None:
        # A method of its own, not inline in the loop above: a loop variable outlives its
        # loop, and in the pinger's frame it kept the last client looked at (connection,
        # streams) alive for a whole round after that client had gone.
        for sub in list(self.subscribers):
            if sub.ping_slot != slot:
                continue
            try:
                self._ping(sub, now, interval, timeout)
            except Exception:
                self._failed(sub, "pinger")

    def _ping(self, sub: Subscriber, now: float, interval: float, timeout: float) -> None:
        verdict = sub.conn.ping_verdict(now, interval, timeout)
        if verdict is PingVerdict.DEAD:
            self._drop(sub, "ping", "no pong")
        elif verdict is PingVerdict.SEND:
            if sub.writing:
                sub.ping_due = True  # its writer sends it, when the state allows
                return
            ping = sub.conn.ping(now)
            if ping is None:
                return
            if not sub.stream.write_now(ping):
                sub.ping_due = True
                self._start_writer(sub)
            elif sub.stream.backlogged:
                self._start_writer(sub)

    def _failed(self, sub: Subscriber, where: str) -> None:
        """A bug in one client's path: log it (rate-limited), drop that client only."""
        self._errors.log(
            logging.ERROR, where, "session %s: %s failed", sub.session_id, where, exc_info=True
        )
        self._drop(sub, "error", f"{where} failed")

    def _start_writer(self, sub: Subscriber) -> None:
        # Writers are rare (only for a full socket buffer) and short-lived: they run in
        # the fan-out's task group rather than costing every connection a task.
        assert self._tg is not None
        sub.writing = True
        self.writers_started += 1
        self._tg.start_soon(self._writer, sub, name="arraycrypto writer")

    def _drop(self, sub: Subscriber, reason: str, why: str) -> None:
        """Disconnect a subscriber without a closing handshake (it is not reading)."""
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        self._metrics.count("dropped_clients_total", reason)
        logger.info("session %s: %s, dropping", sub.session_id, why)
        sub.conn.abort()
        if sub.wake is not None:
            sub.wake()  # parked: a task to end it, which the close below wakes
        # Closing the socket wakes its reader (which ends the connection) and any writer.
        sub.stream.close()

    async def _writer(self, sub: Subscriber) -> None:
        """Send what is queued, the newest push and a due ping, awaiting.

        The connection is asked for each frame at the moment it is written, so a frame
        that waited here never follows a Close frame onto the wire.
        """
        stream, conn = sub.stream, sub.conn
        try:
            while True:
                data: bytes | None = None
                if sub.pending is not None:
                    data, sub.pending = conn.push(sub.pending), None
                elif sub.ping_due:
                    sub.ping_due = False
                    data = conn.ping(time.monotonic())
                elif not stream.backlogged:
                    return
                sub.write_started = time.monotonic()
                if data is None:
                    await stream.flush()  # what write_now left queued goes first
                else:
                    await stream.send(data)
                sub.write_started = None
        except STREAM_ERRORS:
            self._drop(sub, "slow", "write failed")
        except Exception:
            # Never let one client's failure reach the server's task group.
            self._failed(sub, "writer")
        finally:
            sub.writing = False
            sub.write_started = None
