"""The client: one background connection, local encryption, offline decryption.

- ``client``: :class:`CryptoClient`, the public async API and the hot path
- ``status``: what the client knows of its connection (state, errors, waiters, watchers)
- ``connector``: the background connection (driver loop, reconnect, failover)
- ``sync``: :class:`SyncCryptoClient`, the same for threaded programs
"""

from .client import CryptoClient as CryptoClient
from .status import ConnectionState as ConnectionState
from .status import SnapshotWatch as SnapshotWatch
from .sync import SyncCryptoClient as SyncCryptoClient

__all__ = ["ConnectionState", "CryptoClient", "SnapshotWatch", "SyncCryptoClient"]
