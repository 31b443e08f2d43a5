"""The client: a thin anyio driver around websockets' ClientProtocol and the core.

:class:`CryptoClient` keeps **one** connection in a background task: handshake, then
every pushed snapshot is verified by :class:`~arraycrypto._protocol.ClientSession` and
cached. Encryption uses the cached snapshot with no network I/O; decryption never needs
the server. The connection comes back by itself (exponential backoff with full jitter,
failover across ``server_urls``). Runs unchanged under asyncio and trio.

:class:`SyncCryptoClient` is the same client for threaded programs.
"""

from __future__ import annotations

import enum
import logging
import os
import random
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from ._transport import STREAM_ERRORS, WSConnection
from .core.config import CryptoConfig, load_client_config, websocket_url
from .core.envelope import SnapshotCipher
from .core.exceptions import AuthenticationError, CryptoError, ProtocolError, SnapshotError
from .core.handshake import Accepted, ClientSession, ClientState, CloseCode
from .core.keyring import Keyring
from .core.keys import Snapshot

__all__ = ["ConnectionState", "CryptoClient", "SnapshotWatch", "SyncCryptoClient"]

logger = logging.getLogger("arraycrypto.client")
ws_logger = logging.getLogger("arraycrypto.client.websocket")

#: Payloads at least this large are encrypted/decrypted in a worker thread, in 1 MiB
#: steps, so the event loop is not blocked for the milliseconds AES-GCM takes on them.
OFFLOAD_SIZE: Final = 1 << 20
_BACKOFF_BASE: Final = 0.1
_DEAD_AFTER_TICKS: Final = 3  # no push for this many tick intervals: the server is dead
_MAX_SERVER_FRAME: Final = 64 * 1024


class ConnectionState(enum.Enum):
    """Where the background connection is."""

    IDLE = "idle"  # not started (outside ``async with``)
    CONNECTING = "connecting"
    CONNECTED = "connected"  # authenticated, receiving snapshots
    DISCONNECTED = "disconnected"  # waiting to reconnect
    CLOSED = "closed"


def _no_cipher(data: bytes | str, associated_data: bytes) -> bytes:
    raise SnapshotError("no snapshot from the server yet")  # unreachable: _expires is 0


def _backoff(attempt: int, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^attempt)] on every delay."""
    return random.uniform(0, min(cap, _BACKOFF_BASE * 2 ** min(attempt, 30)))  # noqa: S311 - jitter, not crypto


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


class CryptoClient:
    """Encrypts and decrypts locally under server-pushed, verified snapshots.

    ``config`` is a :class:`CryptoConfig` or the path of a JSON config file. Use it as an
    async context manager; the connection runs in the background while inside::

        async with CryptoClient("client_config.json") as client:
            await client.authenticate()
            token = await client.encrypt_message("secret")
            assert await client.decrypt_message(token) == b"secret"
    """

    def __init__(
        self,
        config: CryptoConfig | str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if isinstance(config, CryptoConfig) else load_client_config(config)
        self.keyring = Keyring(self.config.secret_key, old=self.config.old_secret_keys)
        self._clock = clock
        self._urls = [self.config.server_url, *self.config.server_urls]
        self._cipher: SnapshotCipher | None = None
        # The hot path reads only these two: the cached snapshot's bound encrypt, and
        # the wall-clock second after which it is older than max_drift (0: no snapshot).
        self._encrypt: Callable[[bytes | str, bytes], bytes] = _no_cipher
        self._expires = 0.0
        self._last_tick = -1
        self._state = ConnectionState.IDLE
        self._changed = anyio.Event()
        self._auth_error: AuthenticationError | None = None
        self._lost_at: float | None = None  # monotonic time the connection was lost
        self._failure: str | None = None  # why the last connection attempt ended
        self._rejected: str | None = None  # why the last rejected snapshot was rejected
        # Weak: an abandoned iterator (a `break` out of `async for`) just goes away.
        self._watchers: weakref.WeakSet[SnapshotWatch] = weakref.WeakSet()
        self._tg: anyio.abc.TaskGroup | None = None
        self._ssl: ssl.SSLContext | None = None
        self.server_url: str | None = None  # the URL currently connected to
        self.session_id: str | None = None

    def __repr__(self) -> str:
        tick = self._cipher.snapshot.tick if self._cipher else None
        return f"CryptoClient(state={self._state.value}, server={self.server_url}, tick={tick})"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not ConnectionState.IDLE:
            raise CryptoError("a CryptoClient can be entered only once")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._set_state(ConnectionState.CONNECTING)
        self._tg.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.close()
        assert self._tg is not None
        # Not passing the body's exception on: anyio would wrap it in an ExceptionGroup,
        # and `except AuthenticationError:` around the `async with` must keep working.
        await self._tg.__aexit__(None, None, None)
        return None

    async def close(self) -> None:
        """Stop the background connection (politely, close code 1000). Idempotent."""
        if self._state is ConnectionState.CLOSED:
            return
        self._set_state(ConnectionState.CLOSED)
        for watch in list(self._watchers):
            watch._close()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The state of the background connection."""
        return self._state

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state is ConnectionState.CLOSED

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest verified snapshot, or None before the first one."""
        return self._cipher.snapshot if self._cipher else None

    def _set_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED:
            self._lost_at = None
        elif self._lost_at is None and self._state is ConnectionState.CONNECTED:
            self._lost_at = time.monotonic()
        self._state = state
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- the public API ------------------------------------------------------------------

    async def authenticate(self) -> None:
        """Wait until the handshake succeeded and a verified snapshot is cached.

        Raises AuthenticationError if the server rejects our secret or fails to prove
        its own, SnapshotError if no snapshot arrives within ``snapshot_timeout``.
        """
        await self._wait_cipher()

    def encrypt(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Encrypt now under the cached snapshot: no await, no I/O (the hot path).

        Raises SnapshotError if there is no snapshot yet or it is older than max_drift.
        """
        if self._clock() > self._expires:
            raise self._no_snapshot()
        return self._encrypt(data, associated_data)

    def decrypt(
        self,
        data: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
        chunked: bool = False,
    ) -> bytes:
        """Decrypt with the keyring alone: never needs the server.

        Raises the opaque DecryptionError for anything that does not decrypt, and
        SnapshotError if ``ttl`` (seconds) is given and the ciphertext is older, or it is
        dated beyond ``max_drift`` in the future.
        """
        now_ms = int(self._clock() * 1000) if ttl is not None else None
        return self.keyring.decrypt(
            data,
            associated_data,
            ttl=ttl,
            now_ms=now_ms,
            max_drift=self.config.max_drift,
            chunked=chunked,
        )

    async def encrypt_message(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Encrypt ``str`` (as UTF-8) or ``bytes``; waits (bounded) for the first snapshot."""
        cipher = self._cipher
        if cipher is None or self._clock() > self._expires:
            cipher = await self._wait_cipher()
        if len(data) >= OFFLOAD_SIZE:
            return await anyio.to_thread.run_sync(cipher.encrypt_chunked, data, associated_data)
        return cipher.encrypt(data, associated_data)

    async def decrypt_message(
        self,
        data: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
    ) -> bytes:
        """Decrypt ``data`` and return ``bytes``; see :meth:`decrypt`."""
        if len(data) >= OFFLOAD_SIZE:
            return await anyio.to_thread.run_sync(
                lambda: self.decrypt(data, associated_data, ttl=ttl, chunked=True)
            )
        return self.decrypt(data, associated_data, ttl=ttl)

    def watch(self) -> SnapshotWatch:
        """Return an async iterator over verified snapshots as they arrive.

        ``async for snapshot in client.watch(): ...`` ends when the client closes. A
        watcher more than 16 snapshots behind loses the oldest ones, never slows the
        client down.
        """
        watch = SnapshotWatch(closed=self.closed)
        self._watchers.add(watch)
        return watch

    # -- waiting -------------------------------------------------------------------------

    def _no_snapshot(self) -> CryptoError:
        if self._state is ConnectionState.IDLE:
            return CryptoError("use `async with CryptoClient(...)` to connect first")
        if self._auth_error is not None and self._cipher is None:
            return AuthenticationError(str(self._auth_error))  # fresh: no traceback pile-up
        # Say why, so an operator can tell a dead server from a clock or config problem.
        why = []
        if self._rejected is not None:
            why.append(f"last snapshot rejected: {self._rejected}")
        if self._failure is not None and self._state is not ConnectionState.CONNECTED:
            why.append(f"last connection error: {self._failure}")
        detail = f" ({'; '.join(why)})" if why else ""
        if self._cipher is None:
            return SnapshotError(f"no snapshot from the server yet{detail}")
        age = (self._clock() * 1000 - self._cipher.snapshot.timestamp) / 1000
        if self._lost_at is None:
            down = "connected, but no fresh snapshot accepted"
        else:
            down = f"server unreachable for {time.monotonic() - self._lost_at:.1f} s"
        return SnapshotError(
            f"expired snapshot: {age:.1f} s old (max_drift {self.config.max_drift} s);"
            f" {down}{detail}"
        )

    async def _wait_cipher(self) -> SnapshotCipher:
        with anyio.move_on_after(self.config.snapshot_timeout):
            while True:
                cipher = self._cipher
                if cipher is not None and self._clock() <= self._expires:
                    return cipher
                if self._state in (ConnectionState.IDLE, ConnectionState.CLOSED):
                    break
                if self._auth_error is not None and cipher is None:
                    raise AuthenticationError(str(self._auth_error))
                await self._changed.wait()
        raise self._no_snapshot()

    # -- the background connection -------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self.config.ca_file)
        return self._ssl

    async def _run(self) -> None:
        attempt = 0
        index = 0
        while self._state is not ConnectionState.CLOSED:
            url = self._urls[index % len(self._urls)]
            subscribed = False
            try:
                subscribed = await self._connect_once(url)
            except AuthenticationError as exc:
                # Surfaces to the caller; retried only at the slowest pace.
                logger.error("%s: %s", url, exc)
                self._auth_error = exc
                attempt = 64
            except (*STREAM_ERRORS, ProtocolError, TimeoutError, ssl.SSLError) as exc:
                self._failure = f"{url}: {exc or type(exc).__name__}"
                logger.info("%s: connection failed: %s", url, exc or type(exc).__name__)
            self.server_url = None
            if self.closed:  # close() ran while we were connected
                return
            self._set_state(ConnectionState.DISCONNECTED)
            if subscribed:
                attempt = 0  # reset after a success; reconnect at once to the same URL
                continue
            index += 1
            if index % len(self._urls) == 0 or self._auth_error is not None:
                # A whole round of URLs failed: back off before the next round.
                await anyio.sleep(_backoff(attempt, self.config.reconnect_max_delay))
                attempt += 1
            self._set_state(ConnectionState.CONNECTING)

    async def _connect_once(self, url: str) -> bool:
        """Connect, authenticate and receive until the connection ends.

        Returns whether the handshake succeeded (so the caller resets its backoff).
        """
        uri = parse_uri(websocket_url(url))
        with anyio.fail_after(self.config.connect_timeout):
            if uri.secure:
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    uri.host,
                    uri.port,
                    ssl_context=self._ssl_context(),
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(uri.host, uri.port)
        protocol = ClientProtocol(uri, max_size=_MAX_SERVER_FRAME, logger=ws_logger)
        conn = WSConnection(stream, protocol)
        try:
            return await self._session(conn, url)
        finally:
            with anyio.CancelScope(shield=True):
                if protocol.state is State.OPEN:
                    await conn.close(CloseCode.NORMAL_CLOSURE, "", 1.0)
                else:
                    await conn.aclose()

    async def _session(self, conn: WSConnection, url: str) -> bool:
        protocol = conn.protocol
        assert isinstance(protocol, ClientProtocol)
        session = ClientSession(
            self.keyring,
            os.urandom(32),
            min_signature_size=self.config.hash_size,
            max_drift=self.config.max_drift,
            last_tick=self._last_tick,
        )
        subscribed = False
        # Until subscribed, the whole exchange is bounded by connect_timeout; after
        # that, by "a snapshot at least every few ticks" (pings do not count: a server
        # that answers pings but pushes nothing is no use).
        deadline = anyio.current_time() + self.config.connect_timeout
        protocol.send_request(protocol.connect())
        await conn.flush()
        while True:
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope:
                alive = await conn.receive()
            if scope.cancelled_caught:
                raise TimeoutError(
                    "server pushed nothing for several ticks"
                    if subscribed
                    else "handshake timed out"
                )
            for event in protocol.events_received():
                if isinstance(event, Response):
                    if protocol.handshake_exc is not None:
                        raise ProtocolError(f"WebSocket upgrade refused: {protocol.handshake_exc}")
                    continue
                if not isinstance(event, Frame) or event.opcode is not Opcode.TEXT:
                    continue
                result = session.receive_text(bytes(event.data), int(self._clock() * 1000))
                if session.state is ClientState.SUBSCRIBED:
                    assert session.tick_interval is not None
                    silence = _DEAD_AFTER_TICKS * session.tick_interval + 1.0
                    deadline = anyio.current_time() + silence
                if not subscribed and session.state is ClientState.SUBSCRIBED:
                    # Welcomed: the server proved it holds the secret.
                    subscribed = True
                    self._auth_error = None
                    self.server_url = url
                    self.session_id = session.session_id
                    logger.info("%s: authenticated (session %s)", url, session.session_id)
                    self._set_state(ConnectionState.CONNECTED)
                if isinstance(result, bytes):
                    protocol.send_text(result)
                    await conn.flush()
                elif isinstance(result, Accepted):
                    self._install(result.snapshot)
                else:
                    self._rejected = result.reason
                    logger.warning("%s: dropped a snapshot: %s", url, result.reason)
            if protocol.handshake_exc is not None:
                raise ProtocolError(f"WebSocket upgrade failed: {protocol.handshake_exc}")
            if not alive or protocol.state is not State.OPEN:
                close = protocol.close_rcvd
                if close is not None and close.code == CloseCode.AUTHENTICATION_FAILED:
                    raise AuthenticationError("server rejected our proof: is the secret right?")
                logger.info("%s: connection closed (%s)", url, close)
                return subscribed

    def _install(self, snapshot: Snapshot) -> None:
        cipher = self.keyring.cipher(snapshot)  # verified by the session; cached here
        self._cipher = cipher
        self._encrypt = cipher.encrypt
        self._expires = snapshot.timestamp / 1000 + self.config.max_drift
        self._last_tick = snapshot.tick
        self._rejected = None
        self._failure = None
        self._notify()
        for watch in list(self._watchers):
            watch._push(snapshot)


class SyncCryptoClient:
    """:class:`CryptoClient` for threaded programs, safe to call from many threads.

    The connection runs in an anyio event loop in a background thread (a blocking
    portal). Encryption and decryption run in the calling thread when a snapshot is
    cached, with no hop to the loop::

        with SyncCryptoClient("client_config.json") as client:
            token = client.encrypt_message(b"data")
    """

    def __init__(
        self, config: CryptoConfig | str | os.PathLike[str], *, backend: str = "asyncio"
    ) -> None:
        self._client = CryptoClient(config)
        self._backend = backend
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._client_cm: Any = None

    def __repr__(self) -> str:
        return f"Sync{self._client!r}"

    @property
    def client(self) -> CryptoClient:
        """The underlying async client (its properties are safe to read)."""
        return self._client

    def __enter__(self) -> Self:
        self._portal_cm = anyio.from_thread.start_blocking_portal(self._backend)
        self._portal = self._portal_cm.__enter__()
        self._client_cm = self._portal.wrap_async_context_manager(self._client)
        self._client_cm.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the background thread. Idempotent."""
        if self._client_cm is not None:
            cm, self._client_cm = self._client_cm, None
            cm.__exit__(None, None, None)
        if self._portal_cm is not None:
            cm, self._portal_cm = self._portal_cm, None
            cm.__exit__(None, None, None)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._portal is None or self._client_cm is None:
            raise CryptoError("use `with SyncCryptoClient(...)` to connect first")
        return self._portal.call(fn, *args)

    def authenticate(self) -> None:
        """Block until authenticated with a snapshot cached; see CryptoClient."""
        self._call(self._client.authenticate)

    def encrypt_message(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Encrypt in the calling thread; waits (bounded) for a snapshot if none yet."""
        try:
            return self._client.encrypt(data, associated_data)
        except SnapshotError:
            result: bytes = self._call(self._client.encrypt_message, data, associated_data)
            return result

    def decrypt_message(
        self,
        data: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
    ) -> bytes:
        """Decrypt in the calling thread with the keyring alone."""
        return self._client.decrypt(data, associated_data, ttl=ttl)

    encrypt = encrypt_message
    decrypt = decrypt_message
