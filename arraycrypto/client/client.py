"""The client: encrypt and decrypt locally under server-pushed, verified snapshots.

:class:`CryptoClient` keeps **one** connection in a background task
(:class:`~arraycrypto.client.connector.Connector`); every pushed snapshot is checked by
the core's :class:`~arraycrypto.core.handshake.SnapshotPolicy` and cached. Encryption
uses the cached snapshot with no network I/O; decryption never needs the server. What
the client knows of its connection (state, errors, waiters, watchers) is
:class:`~arraycrypto.client.status.ClientStatus`. Runs unchanged under asyncio and trio.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

import anyio
import anyio.abc
import anyio.to_thread

from ..core.client_connection import SnapshotAccepted
from ..core.config import CryptoConfig
from ..core.envelope import SnapshotCipher
from ..core.exceptions import CryptoError, SnapshotError
from ..core.handshake import SnapshotPolicy
from ..core.keyring import Keyring
from ..core.keys import Snapshot
from ..core.loading import load_client_config
from ..streaming import decrypt_stream, encrypt_stream, expires_at_ms
from .connector import Connector
from .status import ClientStatus, ConnectionState, SnapshotWatch

__all__ = ["CryptoClient"]

logger = logging.getLogger("arraycrypto.client")

#: Payloads at least this large are encrypted/decrypted in a worker thread, in 1 MiB
#: steps, so the event loop is not blocked for the milliseconds AES-GCM takes on them.
OFFLOAD_SIZE: Final = 1 << 20


def _load(config: CryptoConfig | str | os.PathLike[str]) -> CryptoConfig:
    """A config as given, or from its file with the environment over it (as the CLI)."""
    if isinstance(config, CryptoConfig):
        return config
    return load_client_config(config, env=os.environ)


def _no_cipher(data: bytes | str, associated_data: bytes) -> bytes:
    raise SnapshotError("no snapshot from the server yet")  # unreachable: _expires is 0


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
        self.config = _load(config)
        self.keyring = Keyring(
            self.config.secret_key,
            old=self.config.old_secret_keys,
            next=self.config.next_secret_keys,
            cache_size=self.config.decrypt_cache_size,
        )
        self._clock = clock
        self._policy = SnapshotPolicy(
            self.keyring, max_drift=self.config.max_drift, min_signature_size=self.config.hash_size
        )
        # The hot path reads only these two: the cached snapshot's bound encrypt, and
        # the wall-clock second after which it may no longer encrypt (0: no snapshot),
        # both from the policy when the snapshot was accepted.
        self._encrypt: Callable[[bytes | str, bytes], bytes] = _no_cipher
        self._expires = 0.0
        self._status = ClientStatus(self._install)
        self._connector = Connector(self.config, self._policy, self._status, clock)
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        cipher = self._status.cipher
        tick = cipher.snapshot.tick if cipher else None
        return f"CryptoClient(state={self.state.value}, server={self.server_url}, tick={tick})"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not ConnectionState.IDLE:
            raise CryptoError("a CryptoClient can be entered only once")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._status.set_state(ConnectionState.CONNECTING)
        self._tg.start_soon(self._connector.run, name="arraycrypto client connection")
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
        if self.closed:
            return
        self._status.close()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The state of the background connection."""
        return self._status.state

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._status.closed

    @property
    def last_error(self) -> str | None:
        """Why the last connection attempt failed or the last snapshot was refused.

        None once a snapshot has been accepted since.
        """
        return self._status.last_error

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest verified snapshot, or None before the first one."""
        cipher = self._status.cipher
        return cipher.snapshot if cipher else None

    @property
    def server_url(self) -> str | None:
        """The URL currently connected to, if any."""
        return self._status.server_url

    @property
    def session_id(self) -> str | None:
        """The current (or last) connection's session id, from its handshake."""
        return self._status.session_id

    def reload(self, config: CryptoConfig | str | os.PathLike[str]) -> None:
        """Use a new configuration from now on, without a restart.

        For rotation (a new ``secret_key``, ``next_secret_keys``, ``old_secret_keys``) and
        any other field. The connection stays up and the cached snapshot keeps serving,
        unless the new config no longer trusts the key that signed it: then the cached
        snapshot is dropped and the client reconnects, to a server it trusts. What the
        client accepted before (the newest key, the last timestamp) still counts.
        """
        new = _load(config)
        keyring = Keyring(
            new.secret_key,
            old=new.old_secret_keys,
            next=new.next_secret_keys,
            cache_size=new.decrypt_cache_size,
        )
        self._policy.reconfigure(keyring, max_drift=new.max_drift, min_signature_size=new.hash_size)
        self.config = new
        self.keyring = keyring
        self._connector.reload(new)
        cipher = self._status.cipher
        if cipher is not None and keyring.trust_rank(cipher.snapshot.key_id) is None:
            logger.warning(
                "reloaded: key id %s is no longer trusted to sign; reconnecting",
                cipher.snapshot.key_id.hex(),
            )
            self._status.cipher = None
            self._encrypt = _no_cipher
            self._expires = 0.0
            self._connector.restart()
        elif cipher is not None:
            self._expires = self._policy.expires_at(cipher.snapshot)
        self._status.notify()

    # -- the public API ------------------------------------------------------------------

    async def authenticate(self) -> None:
        """Wait until the handshake succeeded and a verified snapshot is cached.

        Raises AuthenticationError if the server rejects our secret or fails to prove
        its own, SnapshotError if no snapshot arrives within ``snapshot_timeout``.
        """
        await self._wait_cipher(across_attempts=True)

    def encrypt(
        self,
        data: bytes | str,
        associated_data: bytes = b"",
        *,
        expires_in: float | None = None,
    ) -> bytes:
        """Encrypt now under the cached snapshot: no await, no I/O (the hot path).

        ``expires_in`` (seconds) fixes an expiry in the ciphertext that every decrypter
        enforces (envelope v2); without it the envelope is v1. Raises SnapshotError if
        there is no snapshot yet or it may no longer encrypt.
        """
        if self._clock() > self._expires:
            raise self._no_snapshot()
        if expires_in is None:
            return self._encrypt(data, associated_data)
        assert self._status.cipher is not None
        return self._status.cipher.encrypt(
            data, associated_data, expires_at=self._expiry(expires_in)
        )

    def _expiry(self, expires_in: float) -> int | None:
        return expires_at_ms(expires_in, clock=self._clock)

    def decrypt(
        self,
        data: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
        chunked: bool = False,
    ) -> bytes:
        """Decrypt with the keyring alone: never needs the server.

        Raises the opaque DecryptionError for anything that does not decrypt, and a
        SnapshotError if the ciphertext is dated beyond ``max_drift`` in the future, is
        older than ``ttl`` (seconds, if given), or is past the expiry its sender set
        (:class:`~arraycrypto.ExpiredError`).
        """
        # decrypt_message() has this call inline: keep the two alike.
        return self.keyring.decrypt(
            data,
            associated_data,
            ttl=ttl,
            now_ms=int(self._clock() * 1000),
            max_drift=self.config.max_drift,
            chunked=chunked,
        )

    async def encrypt_message(
        self,
        data: bytes | str,
        associated_data: bytes = b"",
        *,
        expires_in: float | None = None,
    ) -> bytes:
        """Encrypt ``str`` (as UTF-8) or ``bytes`` under the cached snapshot.

        Without a fresh snapshot it waits (at most ``snapshot_timeout``) only while a
        connection attempt or handshake is in progress, for the snapshot it brings; with
        no attempt in progress (the server is down, the client waits to retry) it raises
        SnapshotError at once, saying why. ``expires_in``: see :meth:`encrypt`.
        """
        # The hot path first, as lean as the sync encrypt: a fresh snapshot, no expiry.
        if expires_in is None and self._clock() <= self._expires and len(data) < OFFLOAD_SIZE:
            return self._encrypt(data, associated_data)
        cipher = self._fresh() or await self._wait_cipher(across_attempts=False)
        expires_at = None if expires_in is None else self._expiry(expires_in)
        if len(data) >= OFFLOAD_SIZE:
            # partial, not a lambda: a lambda's captured variables would be cells made
            # on every call, the hot path above included (tests/test_exports.py).
            chunked = functools.partial(cipher.encrypt_chunked, expires_at=expires_at)
            return await anyio.to_thread.run_sync(chunked, data, associated_data)
        return cipher.encrypt(data, associated_data, expires_at=expires_at)

    async def current_cipher(self) -> SnapshotCipher:
        """The cipher of the current verified snapshot, waiting as :meth:`encrypt_message` does.

        For callers that encrypt many payloads or into their own buffers
        (:meth:`SnapshotCipher.encrypt_into`); it may encrypt until the snapshot expires
        (see :attr:`snapshot` and ``max_drift``).
        """
        return self._fresh() or await self._wait_cipher(across_attempts=False)

    async def encrypt_stream(
        self,
        source: anyio.abc.ByteReceiveStream,
        sink: anyio.abc.ByteSendStream,
        associated_data: bytes = b"",
        *,
        expires_in: float | None = None,
    ) -> int:
        """Encrypt everything ``source`` sends, in constant memory, into ``sink``.

        An envelope v2 stream under the cached snapshot (waiting for one as
        :meth:`encrypt_message` does); returns the plaintext size. ``sink`` stays open.
        """
        cipher = self._fresh() or await self._wait_cipher(across_attempts=False)
        return await encrypt_stream(
            cipher, source, sink, associated_data, expires_in=expires_in, clock=self._clock
        )

    async def decrypt_stream(
        self,
        source: anyio.abc.ByteReceiveStream,
        sink: anyio.abc.ByteSendStream,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
    ) -> int:
        """Decrypt any envelope ``source`` sends into ``sink``, a verified segment at a time.

        Returns the plaintext size. On a DecryptionError, what ``sink`` received is a
        true prefix but not the whole: discard it.
        """
        return await decrypt_stream(
            self.keyring,
            source,
            sink,
            associated_data,
            ttl=ttl,
            max_drift=self.config.max_drift,
            clock=self._clock,
        )

    async def decrypt_message(
        self,
        data: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
    ) -> bytes:
        """Decrypt ``data`` and return ``bytes``; see :meth:`decrypt`."""
        if len(data) >= OFFLOAD_SIZE:
            chunked = functools.partial(self.decrypt, ttl=ttl, chunked=True)  # no cells
            return await anyio.to_thread.run_sync(chunked, data, associated_data)
        # What decrypt() does, inline: one call layer less on the hot path (keep the two
        # alike).
        now_ms = int(self._clock() * 1000)
        max_drift = self.config.max_drift
        return self.keyring.decrypt(
            data, associated_data, ttl=ttl, now_ms=now_ms, max_drift=max_drift
        )

    def watch(self) -> SnapshotWatch:
        """Return an async iterator over verified snapshots as they arrive.

        ``async for snapshot in client.watch(): ...`` ends when the client closes. A
        watcher more than 16 snapshots behind loses the oldest ones, never slows the
        client down.
        """
        return self._status.watch()

    # -- waiting -------------------------------------------------------------------------

    def _no_snapshot(self) -> CryptoError:
        return self._status.explain(self._clock(), self.config.max_drift)

    def _fresh(self) -> SnapshotCipher | None:
        """The cached cipher if it may still encrypt (the policy's expiry), else None."""
        cipher = self._status.cipher
        return cipher if cipher is not None and self._clock() <= self._expires else None

    async def _wait_cipher(self, *, across_attempts: bool) -> SnapshotCipher:
        """Wait (at most ``snapshot_timeout``) for a fresh snapshot; see ClientStatus.wait."""
        cipher = await self._status.wait(
            self._fresh, self.config.snapshot_timeout, across_attempts=across_attempts
        )
        if cipher is None:
            raise self._no_snapshot()
        return cipher

    def _install(self, event: SnapshotAccepted) -> None:
        """A snapshot was accepted: its cipher serves the hot path from now on."""
        self._encrypt = event.cipher.v1_encryptor()
        self._expires = event.expires_at
