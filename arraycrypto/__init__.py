"""arraycrypto: zero-round-trip authenticated encryption with server-pushed key epochs.

The pure core (keyring, snapshots, envelope, configuration, wire messages) works with
no server at all; the server and client are thin anyio drivers around it.
"""

from __future__ import annotations

from .client import ConnectionState as ConnectionState
from .client import CryptoClient as CryptoClient
from .client import SyncCryptoClient as SyncCryptoClient
from .core.config import CryptoConfig as CryptoConfig
from .core.config import ServerConfig as ServerConfig
from .core.config import load_client_config as load_client_config
from .core.config import load_server_config as load_server_config
from .core.config import save_config as save_config
from .core.envelope import SnapshotCipher as SnapshotCipher
from .core.exceptions import AuthenticationError as AuthenticationError
from .core.exceptions import ConfigError as ConfigError
from .core.exceptions import CryptoError as CryptoError
from .core.exceptions import DecryptionError as DecryptionError
from .core.exceptions import ExpiredError as ExpiredError
from .core.exceptions import ProtocolError as ProtocolError
from .core.exceptions import SnapshotError as SnapshotError
from .core.handshake import CloseCode as CloseCode
from .core.keyring import Keyring as Keyring
from .core.keys import Key as Key
from .core.keys import Snapshot as Snapshot
from .core.keys import generate_secret as generate_secret
from .server import Server as Server
from .server import serve as serve

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CloseCode",
    "ConfigError",
    "ConnectionState",
    "CryptoClient",
    "CryptoConfig",
    "CryptoError",
    "DecryptionError",
    "ExpiredError",
    "Key",
    "Keyring",
    "ProtocolError",
    "Server",
    "ServerConfig",
    "Snapshot",
    "SnapshotCipher",
    "SnapshotError",
    "SyncCryptoClient",
    "generate_secret",
    "load_client_config",
    "load_server_config",
    "save_config",
    "serve",
]
