"""Exceptions raised by arraycrypto.

Every exception of ours derives from :class:`CryptoError`, so ``except CryptoError``
catches them all (the seed's "general encryption error")::

    CryptoError
    ├── ConfigError            a configuration file or value is invalid (caller's fault)
    ├── AuthenticationError    the mutual handshake failed (wrong secret, bad server proof)
    ├── SnapshotError          no usable snapshot: none yet, expired, or a ciphertext out of ttl
    │   └── ExpiredError       an authentic ciphertext is past the expiry its sender set
    ├── DecryptionError        one opaque error for every ciphertext that does not decrypt
    ├── ArmorError             armored text is malformed (says where; nothing secret in it)
    └── ProtocolError          the peer broke the wire protocol (peer's fault)

No message of any of these ever contains a secret, a derived key or a MAC.
"""

from __future__ import annotations

from .isotime import iso8601_utc

__all__ = [
    "ArmorError",
    "AuthenticationError",
    "ConfigError",
    "CryptoError",
    "DecryptionError",
    "ExpiredError",
    "ProtocolError",
    "SnapshotError",
]


class CryptoError(Exception):
    """Raised for any arraycrypto failure; the root of the tree above."""


class ConfigError(CryptoError, ValueError):
    """Raised when a configuration file or value is invalid; the message names the field."""


class AuthenticationError(CryptoError):
    """Raised when the handshake fails: a wrong secret on either side, or a bad proof."""


class SnapshotError(CryptoError):
    """Raised when no valid, fresh snapshot is available, or a ciphertext is out of ttl."""


class ExpiredError(SnapshotError):
    """Raised when an authentic ciphertext is past the expiry (``expires_at``) its sender set.

    Only ever raised after the ciphertext authenticated, so the expiry is the sender's.
    The message says when it expired (ISO 8601, UTC); ``expires_at`` holds it in
    milliseconds since the epoch.
    """

    def __init__(self, expires_at: int) -> None:
        self.expires_at = expires_at
        super().__init__(f"ciphertext expired at {iso8601_utc(expires_at)}")

    def __reduce__(self) -> tuple[type[ExpiredError], tuple[int]]:
        return type(self), (self.expires_at,)


class DecryptionError(CryptoError):
    """Raised when a ciphertext does not decrypt.

    Deliberately opaque: a wrong key, an unknown key id, a bad snapshot signature, a
    truncated or tampered envelope and wrong associated data all raise this same error
    with the same message, so a caller (or an attacker) learns nothing about which check
    failed.
    """

    def __init__(self) -> None:
        super().__init__("decryption failed")


class ArmorError(CryptoError, ValueError):
    """Raised when armored text is malformed; the message says which line and why.

    Armor is public encoding around an envelope, checked before any key is used, so
    saying what is wrong with it reveals nothing.
    """


class ProtocolError(CryptoError):
    """Raised when the peer sends something the protocol does not allow."""
