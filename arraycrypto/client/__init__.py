"""The client: one background connection, local encryption, offline decryption.

- ``client``: :class:`CryptoClient`, the public async API and the snapshot cache
- ``connector``: the background connection (driver loop, reconnect, failover)
- ``sync``: :class:`SyncCryptoClient`, the same for threaded programs
"""

from .client import ConnectionState as ConnectionState
from .client import CryptoClient as CryptoClient
from .client import SnapshotWatch as SnapshotWatch
from .sync import SyncCryptoClient as SyncCryptoClient

__all__ = ["ConnectionState", "CryptoClient", "SnapshotWatch", "SyncCryptoClient"]
