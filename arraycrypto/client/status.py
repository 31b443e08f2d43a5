"""What a client knows of its connection: its state, why it failed, who waits and who watches.

:class:`ClientStatus` is what the :class:`~arraycrypto.client.connector.Connector`
reports to (its sink): attempts, handshakes, accepted and refused snapshots, ends. It
keeps the latest verified snapshot's cipher, tells the state changes in the log once
each (connected, lost, reconnected; the attempts in between are the connector's debug
lines), wakes whoever waits for a snapshot, and explains, in a
:class:`~arraycrypto.SnapshotError`, why there is none. The hot path does not come here:
:class:`~arraycrypto.CryptoClient` keeps its own two attributes for that.
"""

from __future__ import annotations

import enum
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Self

import anyio

from ..core.client_connection import SnapshotAccepted
from ..core.envelope import SnapshotCipher
from ..core.exceptions import AuthenticationError, CryptoError, SnapshotError
from ..core.keys import Snapshot
from ..net.logs import RateLimitedLog

__all__ = ["ClientStatus", "ConnectionState", "SnapshotWatch"]

logger = logging.getLogger("arraycrypto.client")


class ConnectionState(enum.Enum):
    """Where the background connection is."""

    IDLE = "idle"  # not started (outside ``async with``)
    CONNECTING = "connecting"
    CONNECTED = "connected"  # authenticated, receiving snapshots
    DISCONNECTED = "disconnected"  # waiting to reconnect
    CLOSED = "closed"


class SnapshotWatch:
    """Async iterator over the snapshots a client accepts; see :meth:`CryptoClient.watch`."""

    def __init__(self, *, closed: bool = False, size: int = 16) -> None:
        self._queue: deque[Snapshot] = deque(maxlen=size)
        self._event = anyio.Event()
        self._closed = closed

    def _push(self, snapshot: Snapshot) -> None:
        self._queue.append(snapshot)  # maxlen: the oldest falls out
        self._event.set()

    def _close(self) -> None:
        self._closed = True
        self._event.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Snapshot:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            await self._event.wait()
            self._event = anyio.Event()
        return self._queue.popleft()


class ClientStatus:
    """The connection as one client sees it; the connector's sink.

    ``on_accepted`` is called with every accepted snapshot, after :attr:`cipher` is set.
    """

    def __init__(self, on_accepted: Callable[[SnapshotAccepted], None]) -> None:
        self._on_accepted = on_accepted
        self.state = ConnectionState.IDLE
        #: The latest verified snapshot's cipher (it may have expired since).
        self.cipher: SnapshotCipher | None = None
        self.server_url: str | None = None  # the URL currently connected to
        self.session_id: str | None = None
        self.auth_error: AuthenticationError | None = None
        self._changed = anyio.Event()
        self._lost_at: float | None = None  # monotonic time the connection was lost
        self._outage_told = False  # the current outage was logged (once is enough)
        self._failure: str | None = None  # why the last connection attempt ended
        self._rejected: str | None = None  # why the last rejected snapshot was rejected
        # Weak: an abandoned iterator (a `break` out of `async for`) just goes away.
        self._watchers: weakref.WeakSet[SnapshotWatch] = weakref.WeakSet()
        # One refused frame after another (a replay, a server's clock far off) would
        # otherwise write a warning per frame.
        self._warnings = RateLimitedLog(logger)

    @property
    def closed(self) -> bool:
        """Whether the client was closed."""
        return self.state is ConnectionState.CLOSED

    @property
    def last_error(self) -> str | None:
        """See :attr:`CryptoClient.last_error`."""
        if self._rejected is not None:
            return f"snapshot rejected: {self._rejected}"
        if self.auth_error is not None:
            return str(self.auth_error)
        return self._failure

    def set_state(self, state: ConnectionState) -> None:
        """Move to ``state`` and wake every waiter."""
        if state is ConnectionState.CONNECTED:
            self._lost_at = None
        elif self._lost_at is None and self.state is ConnectionState.CONNECTED:
            self._lost_at = time.monotonic()
        self.state = state
        self.notify()

    def notify(self) -> None:
        """Wake every waiter (something they wait on may have changed)."""
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        """The client closed: every watcher ends."""
        self.set_state(ConnectionState.CLOSED)
        for watch in list(self._watchers):
            watch._close()

    def watch(self) -> SnapshotWatch:
        """A new watcher of accepted snapshots (closed already if the client is)."""
        watch = SnapshotWatch(closed=self.closed)
        self._watchers.add(watch)
        return watch

    # -- waiting -------------------------------------------------------------------------

    def explain(self, now: float, max_drift: float) -> CryptoError:
        """The error for "no snapshot to encrypt under", saying why (wall clock ``now``).

        So an operator can tell a dead server from a clock or config problem.
        """
        if self.state is ConnectionState.IDLE:
            return CryptoError("use `async with CryptoClient(...)` to connect first")
        if self.auth_error is not None and self.cipher is None:
            return AuthenticationError(str(self.auth_error))  # fresh: no traceback pile-up
        why = []
        if self._rejected is not None:
            why.append(f"last snapshot rejected: {self._rejected}")
        if self._failure is not None and self.state is not ConnectionState.CONNECTED:
            why.append(f"last connection error: {self._failure}")
        detail = f" ({'; '.join(why)})" if why else ""
        if self.cipher is None:
            return SnapshotError(f"no snapshot from the server yet{detail}")
        age = (now * 1000 - self.cipher.snapshot.timestamp) / 1000
        if self._lost_at is None:
            down = "connected, but no fresh snapshot accepted"
        else:
            down = f"server unreachable for {time.monotonic() - self._lost_at:.1f} s"
        return SnapshotError(
            f"expired snapshot: {age:.1f} s old (max_drift {max_drift} s); {down}{detail}"
        )

    async def wait(
        self,
        fresh: Callable[[], SnapshotCipher | None],
        timeout: float,
        *,
        across_attempts: bool,
    ) -> SnapshotCipher | None:
        """Wait (at most ``timeout``) until ``fresh()`` returns a cipher; None if none comes.

        ``across_attempts``: go on waiting through failed attempts and backoff (what
        :meth:`CryptoClient.authenticate` promises); otherwise stop as soon as no
        attempt is in progress, since nothing will bring a snapshot before the next one.
        An authentication failure with no snapshot yet is raised at once.
        """
        with anyio.move_on_after(timeout):
            while True:
                cipher = fresh()
                if cipher is not None:
                    return cipher
                if self.state in (ConnectionState.IDLE, ConnectionState.CLOSED):
                    break
                if self.auth_error is not None and self.cipher is None:
                    raise AuthenticationError(str(self.auth_error))
                if not across_attempts and self.state is ConnectionState.DISCONNECTED:
                    break
                await self._changed.wait()
        return None

    # -- what the connection reports (connector.Sink) ---------------------------------

    def connecting(self) -> None:
        """Sink: an attempt starts."""
        if not self.closed:
            self.set_state(ConnectionState.CONNECTING)

    def connected(self, url: str, session_id: str) -> None:
        """Sink: the server at ``url`` proved it holds the secret."""
        if self._lost_at is not None:
            logger.info("reconnected to %s after %.1f s", url, time.monotonic() - self._lost_at)
        else:
            logger.info("connected to %s", url)
        self._outage_told = False
        self.auth_error = None
        self.server_url = url
        self.session_id = session_id
        self.set_state(ConnectionState.CONNECTED)

    def accepted(self, event: SnapshotAccepted) -> None:
        """Sink: a snapshot passed every check; the client installs it for the hot path."""
        self.cipher = event.cipher
        self._on_accepted(event)
        self._rejected = None
        self._failure = None
        self.notify()
        for watch in list(self._watchers):
            watch._push(event.cipher.snapshot)

    def rejected(self, reason: str) -> None:
        """Sink: a snapshot was dropped (warned about at most once per 10 s per reason)."""
        self._rejected = reason
        self._warnings.log(
            logging.WARNING, reason, "%s: refused a snapshot: %s", self.server_url, reason
        )

    def disconnected(self, url: str, error: BaseException | None) -> None:
        """Sink: the attempt at ``url`` ended."""
        self.server_url = None
        if isinstance(error, AuthenticationError):
            self.auth_error = error  # the connector logs it, as an error
        elif error is not None:
            self._failure = f"{url}: {error or type(error).__name__}"
        if self.closed:
            return
        reason = str(error) if error is not None else "closed by the server"
        if self.state is ConnectionState.CONNECTED:
            logger.warning("lost connection to %s: %s; reconnecting", url, reason)
            self._outage_told = True
        elif not self._outage_told and not isinstance(error, AuthenticationError):
            # Once per outage: the retries that follow say nothing until one succeeds.
            logger.warning("cannot connect to %s: %s; retrying", url, reason)
            self._outage_told = True
        self.set_state(ConnectionState.DISCONNECTED)
