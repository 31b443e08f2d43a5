"""The client for threaded programs: the event loop in a background thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import anyio.from_thread

from ..core.config import CryptoConfig
from ..core.exceptions import CryptoError, SnapshotError
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
