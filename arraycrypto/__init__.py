"""arraycrypto: zero-round-trip authenticated encryption with server-pushed key epochs.

The pure core (keyring, snapshots, envelopes v1 and v2, streams, key-free inspection,
configuration, wire messages) works with no server at all; the server, the client and
the streaming helpers are thin drivers around it.
"""

from __future__ import annotations

import importlib
import typing

from .core import __version__ as __version__
from .core.armor import armor as armor
from .core.armor import dearmor as dearmor
from .core.config import CryptoConfig as CryptoConfig
from .core.config import ServerConfig as ServerConfig
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
from .core.loading import load_client_config as load_client_config
from .core.loading import load_server_config as load_server_config
from .core.loading import save_config as save_config
from .core.peek import EnvelopeInfo as EnvelopeInfo
from .core.peek import peek as peek
from .core.stream import StreamDecryptor as StreamDecryptor
from .core.stream import StreamEncryptor as StreamEncryptor

if typing.TYPE_CHECKING:
    from .client import ConnectionState as ConnectionState
    from .client import CryptoClient as CryptoClient
    from .client import SyncCryptoClient as SyncCryptoClient
    from .server import Server as Server
    from .server import serve as serve
    from .streaming import decrypt_file as decrypt_file
    from .streaming import decrypt_stream as decrypt_stream
    from .streaming import encrypt_file as encrypt_file
    from .streaming import encrypt_stream as encrypt_stream

#: Names whose modules load on first use (PEP 562): the client and the server bring
#: websockets, asyncio's streams and ssl, about 0.2 s that ``arraycrypto decrypt``,
#: ``inspect`` and a program that only decrypts never need.
_LAZY = {
    "ConnectionState": ".client",
    "CryptoClient": ".client",
    "SyncCryptoClient": ".client",
    "Server": ".server",
    "serve": ".server",
    "decrypt_file": ".streaming",
    "decrypt_stream": ".streaming",
    "encrypt_file": ".streaming",
    "encrypt_stream": ".streaming",
}


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
