"""arraycrypto: zero-round-trip authenticated encryption with server-pushed key epochs.

The pure core (keyring, snapshots, envelope, configuration, wire messages) works with
no server at all; the server and client are thin anyio drivers around it.
"""

from __future__ import annotations

from ._crypto import Key as Key
from ._crypto import Keyring as Keyring
from ._crypto import Snapshot as Snapshot
from ._crypto import SnapshotCipher as SnapshotCipher
from ._crypto import generate_secret as generate_secret
from ._protocol import CloseCode as CloseCode
from .client import ConnectionState as ConnectionState
from .client import CryptoClient as CryptoClient
from .client import SyncCryptoClient as SyncCryptoClient
from .config import CryptoConfig as CryptoConfig
from .config import ServerConfig as ServerConfig
from .config import load_client_config as load_client_config
from .config import load_server_config as load_server_config
from .config import save_config as save_config
from .exceptions import AuthenticationError as AuthenticationError
from .exceptions import ConfigError as ConfigError
from .exceptions import CryptoError as CryptoError
from .exceptions import DecryptionError as DecryptionError
from .exceptions import ProtocolError as ProtocolError
from .exceptions import SnapshotError as SnapshotError
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
