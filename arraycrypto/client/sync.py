"""The client for threaded programs: the event loop in a background thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any, Self

import anyio.from_thread

from ..core.config import CryptoConfig
from ..core.exceptions import CryptoError, SnapshotError
from ..streaming import BinaryReader, BinaryWriter, decrypt_file, encrypt_file
from .client import CryptoClient

__all__ = ["SyncCryptoClient"]


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

    def encrypt_message(
        self,
        data: bytes | str,
        associated_data: bytes = b"",
        *,
        expires_in: float | None = None,
    ) -> bytes:
        """Encrypt in the calling thread; waits (bounded) for a snapshot if none yet."""
        try:
            return self._client.encrypt(data, associated_data, expires_in=expires_in)
        except SnapshotError:
            result: bytes = self._call(
                partial(self._client.encrypt_message, expires_in=expires_in),
                data,
                associated_data,
            )
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

    def encrypt_file(
        self,
        src: BinaryReader,
        dst: BinaryWriter,
        associated_data: bytes = b"",
        *,
        expires_in: float | None = None,
    ) -> int:
        """Encrypt a binary file into another, in constant memory (an envelope v2 stream).

        Runs in the calling thread once a snapshot is cached; returns the plaintext size.
        """
        client = self._client
        cipher = client._fresh()
        if cipher is None:  # wait, bounded, as encrypt_message does
            cipher = self._call(partial(client._wait_cipher, across_attempts=False))
        return encrypt_file(
            cipher, src, dst, associated_data, expires_in=expires_in, clock=client._clock
        )

    def decrypt_file(
        self,
        src: BinaryReader,
        dst: BinaryWriter,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
    ) -> int:
        """Decrypt any envelope from a binary file into another, in constant memory."""
        client = self._client
        return decrypt_file(
            client.keyring,
            src,
            dst,
            associated_data,
            ttl=ttl,
            max_drift=client.config.max_drift,
            clock=client._clock,
        )
