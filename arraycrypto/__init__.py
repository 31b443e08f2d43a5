"""arraycrypto: zero-round-trip authenticated encryption with server-pushed key epochs.

The pure core (keyring, snapshots, envelopes v1 and v2, streams, key-free inspection,
configuration, wire messages) works with no server at all; the server, the client and
the streaming helpers are thin drivers around it.
"""

from __future__ import annotations

from .client import ConnectionState as ConnectionState
from .client import CryptoClient as CryptoClient
from .client import SyncCryptoClient as SyncCryptoClient
from .core.armor import armor as armor
from .core.armor import dearmor as dearmor
from .core.config import CryptoConfig as CryptoConfig
from .core.config import ServerConfig as ServerConfig
from .core.config import load_client_config as load_client_config
from .core.config import load_server_config as load_server_config
from .core.config import save_config as save_config
from .core.envelope import SnapshotCipher as SnapshotCipher
from .core.envelope2 import NowRequiredError as NowRequiredError
from .core.exceptions import ArmorError as ArmorError
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
from .core.peek import EnvelopeInfo as EnvelopeInfo
from .core.peek import peek as peek
from .core.stream import StreamDecryptor as StreamDecryptor
from .core.stream import StreamEncryptor as StreamEncryptor
from .server import Server as Server
from .server import serve as serve
from .streaming import decrypt_file as decrypt_file
from .streaming import decrypt_stream as decrypt_stream
from .streaming import encrypt_file as encrypt_file
from .streaming import encrypt_stream as encrypt_stream

__version__ = "0.1.0"

__all__ = [
    "ArmorError",
    "AuthenticationError",
    "CloseCode",
    "ConfigError",
    "ConnectionState",
    "CryptoClient",
    "CryptoConfig",
    "CryptoError",
    "DecryptionError",
    "EnvelopeInfo",
    "ExpiredError",
    "Key",
    "Keyring",
    "NowRequiredError",
    "ProtocolError",
    "Server",
    "ServerConfig",
    "Snapshot",
    "SnapshotCipher",
    "SnapshotError",
    "StreamDecryptor",
    "StreamEncryptor",
    "SyncCryptoClient",
    "armor",
    "dearmor",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_file",
    "encrypt_stream",
    "generate_secret",
    "load_client_config",
    "load_server_config",
    "peek",
    "save_config",
    "serve",
]
