"""The cryptographic core: key schedule, signed snapshots, envelope v1, keyring.

Pure: no I/O, no clock. Time is passed in (``now_ms``); randomness is drawn from
``os.urandom`` unless a test or the vector generator passes it in. Built only from
vetted primitives in pyca/cryptography: HKDF-SHA256, HMAC-SHA256, AES-256-GCM.

Every byte layout here is specified in PROTOCOL.md; change both together.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import struct
from typing import Final, NoReturn

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .exceptions import DecryptionError, SnapshotError

__all__ = [
    "ENVELOPE_VERSION",
    "KEY_ID_SIZE",
    "MAX_SIGNATURE_SIZE",
    "MIN_SECRET_SIZE",
    "MIN_SIGNATURE_SIZE",
    "NONCE_SIZE",
    "SEED_SIZE",
    "Key",
    "Keyring",
    "Snapshot",
    "SnapshotCipher",
    "generate_secret",
]

ENVELOPE_VERSION: Final = 1
KEY_ID_SIZE: Final = 8
SEED_SIZE: Final = 16
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
PROOF_SIZE: Final = 32
CHALLENGE_SIZE: Final = 32
MIN_SECRET_SIZE: Final = 16
MAX_SECRET_SIZE: Final = 1024
MIN_SIGNATURE_SIZE: Final = 16  # never below 128 bits
MAX_SIGNATURE_SIZE: Final = 32

# One label per purpose: no key is ever used for two things.
LABEL_KEY_ID: Final = b"arraycrypto/v1 key-id"
LABEL_SNAPSHOT_MAC: Final = b"arraycrypto/v1 snapshot-mac"
LABEL_CLIENT_PROOF: Final = b"arraycrypto/v1 client-proof"
LABEL_SERVER_PROOF: Final = b"arraycrypto/v1 server-proof"
LABEL_DATA_KEY: Final = b"arraycrypto/v1 data-key"

# version | key_id | tick | timestamp_ms | seed  -- the bytes a snapshot signature covers,
# and also the first bytes of every envelope.
_SNAPSHOT = struct.Struct(f">B{KEY_ID_SIZE}sQQ{SEED_SIZE}s")
SNAPSHOT_BODY_SIZE: Final = _SNAPSHOT.size  # 41
_SIG_LEN_OFFSET: Final = SNAPSHOT_BODY_SIZE
assert _SIG_LEN_OFFSET == 41  # spelled as a literal in Keyring.decrypt, the hot path
_U64_MAX: Final = 2**64 - 1

_urandom = os.urandom  # bound once: the encrypt hot path skips an attribute lookup

_STEP = 1 << 20  # chunked AES-GCM step: about 0.1 ms of work holding the GIL

# Decrypt remembers this many verified snapshot headers (one per server tick seen).
_CACHE_SIZE: Final = 4096


def generate_secret() -> bytes:
    """Return a fresh random 32-byte secret suitable for ``secret_key``."""
    return os.urandom(32)


def _hkdf(secret: bytes, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=info).derive(secret)


class Snapshot(msgspec.Struct, frozen=True, gc=False):
    """One server tick: the public inputs of a key epoch, and their signature.

    ``timestamp`` is integer milliseconds since the Unix epoch (UTC). ``seed`` is
    :data:`SEED_SIZE` random bytes, ``key_id`` names the secret that signed it, and
    ``signature`` is HMAC-SHA256 over :meth:`signed_bytes`, truncated to 16..32 bytes.
    """

    tick: int
    seed: bytes
    timestamp: int
    key_id: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """Return the canonical encoding the signature covers (PROTOCOL.md, "Snapshot")."""
        if not (0 <= self.tick <= _U64_MAX and 0 <= self.timestamp <= _U64_MAX):
            raise ValueError("tick and timestamp must fit in 64 unsigned bits")
        if len(self.seed) != SEED_SIZE or len(self.key_id) != KEY_ID_SIZE:
            raise ValueError("seed or key_id has the wrong length")
        return _SNAPSHOT.pack(ENVELOPE_VERSION, self.key_id, self.tick, self.timestamp, self.seed)

    def header(self) -> bytes:
        """Return the envelope header prefix for this snapshot (everything before the nonce)."""
        return self.signed_bytes() + bytes([len(self.signature)]) + self.signature


class Key:
    """One secret and the static keys derived from it.

    Holds secrets: its repr shows only the key id, and it refuses to be pickled.
    """

    __slots__ = ("_client_proof", "_secret", "_server_proof", "_snapshot_mac", "key_id")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes):
            raise TypeError("secret must be bytes")
        if not MIN_SECRET_SIZE <= len(secret) <= MAX_SECRET_SIZE:
            raise ValueError(f"secret must be {MIN_SECRET_SIZE} to {MAX_SECRET_SIZE} bytes long")
        self._secret = secret
        #: Public 8-byte fingerprint of the secret, carried in snapshots and envelopes.
        self.key_id: bytes = _hkdf(secret, None, LABEL_KEY_ID, KEY_ID_SIZE)
        self._snapshot_mac = _hkdf(secret, None, LABEL_SNAPSHOT_MAC)
        self._client_proof = _hkdf(secret, None, LABEL_CLIENT_PROOF)
        self._server_proof = _hkdf(secret, None, LABEL_SERVER_PROOF)

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id.hex()})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Key holds a secret and cannot be pickled")

    # -- snapshots ---------------------------------------------------------------------

    def sign_snapshot(
        self, tick: int, seed: bytes, timestamp: int, signature_size: int = 16
    ) -> Snapshot:
        """Return a snapshot for ``tick`` signed with this key."""
        if not MIN_SIGNATURE_SIZE <= signature_size <= MAX_SIGNATURE_SIZE:
            raise ValueError("signature_size must be 16 to 32")
        unsigned = Snapshot(tick, seed, timestamp, self.key_id, b"")
        mac = hmac.digest(self._snapshot_mac, unsigned.signed_bytes(), "sha256")
        return Snapshot(tick, seed, timestamp, self.key_id, mac[:signature_size])

    def verify_snapshot(self, snapshot: Snapshot) -> bool:
        """Return whether ``snapshot`` carries a valid signature under this key."""
        sig = snapshot.signature
        if snapshot.key_id != self.key_id:
            return False
        if not MIN_SIGNATURE_SIZE <= len(sig) <= MAX_SIGNATURE_SIZE:
            return False
        try:
            body = snapshot.signed_bytes()
        except ValueError:
            return False
        mac = hmac.digest(self._snapshot_mac, body, "sha256")
        return hmac.compare_digest(mac[: len(sig)], sig)

    def data_key(self, snapshot: Snapshot) -> bytes:
        """Return the AES-256 key of ``snapshot``'s epoch (unverified: call verify first)."""
        info = LABEL_DATA_KEY + snapshot.key_id + snapshot.tick.to_bytes(8, "big")
        return _hkdf(self._secret, snapshot.seed, info)

    # -- handshake proofs ----------------------------------------------------------------

    def client_proof(self, challenge: bytes, nonce: bytes) -> bytes:
        """Return the client's proof of the secret for this challenge and client nonce."""
        return hmac.digest(self._client_proof, challenge + nonce, "sha256")

    def server_proof(self, challenge: bytes, nonce: bytes) -> bytes:
        """Return the server's proof of the secret for this challenge and client nonce."""
        return hmac.digest(self._server_proof, challenge + nonce, "sha256")

    def check_client_proof(self, challenge: bytes, nonce: bytes, proof: bytes) -> bool:
        """Return whether ``proof`` is the client proof for this exchange (constant time)."""
        return hmac.compare_digest(self.client_proof(challenge, nonce), proof)

    def check_server_proof(self, challenge: bytes, nonce: bytes, proof: bytes) -> bool:
        """Return whether ``proof`` is the server proof for this exchange (constant time)."""
        return hmac.compare_digest(self.server_proof(challenge, nonce), proof)


class SnapshotCipher:
    """Encrypts under one verified snapshot's data key; built once per snapshot.

    Obtain one from :meth:`Keyring.cipher`. The AES-GCM object and the envelope header
    are prepared once, so each :meth:`encrypt` is one AEAD call and a concatenation.
    """

    __slots__ = ("_aead", "_header", "_key", "snapshot")

    def __init__(self, snapshot: Snapshot, data_key: bytes) -> None:
        self.snapshot = snapshot
        self._header = snapshot.header()
        self._key = data_key
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return f"SnapshotCipher(key_id={self.snapshot.key_id.hex()}, tick={self.snapshot.tick})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SnapshotCipher holds a key and cannot be pickled")

    def encrypt(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Return the envelope v1 of ``data`` (``str`` is encoded as UTF-8)."""
        # Inlined rather than calling _encrypt: this is the hot path (~1 us budget).
        if isinstance(data, str):
            data = data.encode()
        nonce = _urandom(NONCE_SIZE)
        header = self._header
        aad = header + associated_data if associated_data else header
        return header + nonce + self._aead.encrypt(nonce, data, aad)

    def encrypt_chunked(self, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Like :meth:`encrypt` (same envelope), for very large payloads in a thread.

        pyca's one-shot AES-GCM holds the GIL for the whole call (55 ms for 64 MiB), which
        would stall an event loop even from a worker thread. This runs the same GCM in
        1 MiB steps, so other threads get the GIL between steps.
        """
        if isinstance(data, str):
            data = data.encode()
        nonce = _urandom(NONCE_SIZE)
        header = self._header
        aad = header + associated_data if associated_data else header
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        view = memoryview(data)
        parts = [header, nonce]
        parts.extend(encryptor.update(view[i : i + _STEP]) for i in range(0, len(view), _STEP))
        parts.append(encryptor.finalize())
        parts.append(encryptor.tag)
        return b"".join(parts)

    def _decrypt_chunked(self, nonce: memoryview, body: memoryview, aad: bytes) -> bytes:
        if len(body) < TAG_SIZE:
            raise InvalidTag
        decryptor = Cipher(
            algorithms.AES(self._key), modes.GCM(bytes(nonce), bytes(body[-TAG_SIZE:]))
        ).decryptor()
        decryptor.authenticate_additional_data(aad)
        ciphertext = body[:-TAG_SIZE]
        parts = [
            decryptor.update(ciphertext[i : i + _STEP]) for i in range(0, len(ciphertext), _STEP)
        ]
        decryptor.finalize()  # checks the tag: nothing is returned unless it matches
        return b"".join(parts)

    def envelope_size(self, plaintext_size: int) -> int:
        """Return the size of the envelope of a ``plaintext_size``-byte message."""
        return len(self._header) + NONCE_SIZE + plaintext_size + TAG_SIZE

    def encrypt_into(
        self, data: bytes, buffer: bytearray | memoryview, associated_data: bytes = b""
    ) -> int:
        """Write the envelope of ``data`` into ``buffer``; return the bytes written.

        For large payloads: :meth:`encrypt` must copy the ciphertext once to prepend the
        header to an immutable ``bytes``, this writes it in place (as pyca's own
        ``encrypt_into``). ``buffer`` must hold :meth:`envelope_size` bytes.
        """
        header = self._header
        hl = len(header)
        size = hl + NONCE_SIZE + len(data) + TAG_SIZE
        if len(buffer) < size:
            raise ValueError(f"buffer must hold at least {size} bytes")
        nonce = os.urandom(NONCE_SIZE)
        view = memoryview(buffer)
        view[:hl] = header
        view[hl : hl + NONCE_SIZE] = nonce
        aad = header + associated_data if associated_data else header
        self._aead.encrypt_into(nonce, data, aad, view[hl + NONCE_SIZE : size])
        return size

    def _encrypt(self, data: bytes | str, associated_data: bytes, nonce: bytes) -> bytes:
        # Private: tests and the vector generator inject the nonce here.
        if isinstance(data, str):
            data = data.encode()
        header = self._header
        aad = header + associated_data if associated_data else header
        return header + nonce + self._aead.encrypt(nonce, data, aad)


class Keyring:
    """A primary secret plus older decrypt-only secrets, selected by key id.

    Rotating the secret loses nothing: keep the old secret in ``old`` and every
    ciphertext made under it still decrypts. Decryption needs no server and no history:
    everything else needed is inside the envelope.
    """

    __slots__ = ("_by_id", "_ciphers", "primary")

    def __init__(self, primary: bytes, old: tuple[bytes, ...] | list[bytes] = ()) -> None:
        self.primary = Key(primary)
        self._by_id: dict[bytes, Key] = {self.primary.key_id: self.primary}
        for secret in old:
            key = Key(secret)
            if key.key_id in self._by_id and self._by_id[key.key_id]._secret != secret:
                raise ValueError("two secrets in the keyring share a key id")
            self._by_id.setdefault(key.key_id, key)
        # verified envelope header prefix -> cipher; bounded, oldest evicted first
        self._ciphers: dict[bytes, SnapshotCipher] = {}

    def __repr__(self) -> str:
        ids = ", ".join(k.hex() for k in self._by_id)
        return f"Keyring(primary={self.primary.key_id.hex()}, key_ids=[{ids}])"

    def __reduce__(self) -> NoReturn:
        raise TypeError("Keyring holds secrets and cannot be pickled")

    def key(self, key_id: bytes) -> Key | None:
        """Return the key named by ``key_id``, or ``None`` if this keyring lacks it."""
        return self._by_id.get(key_id)

    def new_snapshot(
        self, tick: int, seed: bytes, timestamp: int, signature_size: int = 16
    ) -> Snapshot:
        """Return a snapshot signed with the primary key."""
        return self.primary.sign_snapshot(tick, seed, timestamp, signature_size)

    def verify_snapshot(self, snapshot: Snapshot) -> bool:
        """Return whether ``snapshot`` is signed by any key of this keyring."""
        key = self._by_id.get(snapshot.key_id)
        return key is not None and key.verify_snapshot(snapshot)

    def cipher(self, snapshot: Snapshot) -> SnapshotCipher:
        """Return the cipher for a snapshot, verifying its signature the first time.

        Raises :class:`SnapshotError` if no key of this keyring signed it.
        """
        header = snapshot.header()
        cipher = self._ciphers.get(header)
        if cipher is None:
            cipher = self._admit(header, snapshot)
            if cipher is None:
                raise SnapshotError("snapshot signature is not valid under any known key")
        return cipher

    def _admit(self, header: bytes, snapshot: Snapshot) -> SnapshotCipher | None:
        key = self._by_id.get(snapshot.key_id)
        if key is None or not key.verify_snapshot(snapshot):
            return None
        cipher = SnapshotCipher(snapshot, key.data_key(snapshot))
        if len(self._ciphers) >= _CACHE_SIZE:
            # Threads (SyncCryptoClient) may evict at the same moment: losing that race
            # only means the cache holds an entry or two more for a while.
            with contextlib.suppress(RuntimeError, KeyError, StopIteration):
                del self._ciphers[next(iter(self._ciphers))]
        self._ciphers[header] = cipher
        return cipher

    def encrypt(self, snapshot: Snapshot, data: bytes | str, associated_data: bytes = b"") -> bytes:
        """Encrypt ``data`` under ``snapshot`` (verified once, then cached)."""
        return self.cipher(snapshot).encrypt(data, associated_data)

    def decrypt(
        self,
        token: bytes | bytearray | memoryview,
        associated_data: bytes = b"",
        *,
        ttl: float | None = None,
        now_ms: int | None = None,
        max_drift: float = 60.0,
        chunked: bool = False,
    ) -> bytes:
        """Decrypt an envelope v1 and return the plaintext.

        Any failure to authenticate raises the one opaque :class:`DecryptionError`.
        When ``now_ms`` (milliseconds since the epoch) is given, an authentic ciphertext
        whose snapshot is older than ``ttl`` seconds, or dated more than ``max_drift``
        seconds in the future, raises :class:`SnapshotError`. ``ttl`` needs ``now_ms``:
        this module never reads the clock. ``chunked`` decrypts a large envelope in
        1 MiB steps (see :meth:`SnapshotCipher.encrypt_chunked`), for worker threads.
        """
        if ttl is not None and now_ms is None:
            raise TypeError("ttl needs now_ms: pass the current time in milliseconds")
        # Hot path (~1.3 us budget): one dict lookup for a header seen before, one AEAD
        # call. Only verified headers enter the cache, so a cache hit needs no checks.
        try:
            data = token if type(token) is bytes else bytes(token)
            end = data[41] + 42  # signature length byte at offset 41, then the signature
            header = data[:end]
            cipher = self._ciphers.get(header)
            if cipher is None:
                cipher = self._admit_header(header)
            aad = header + associated_data if associated_data else header
            if len(data) > 4096:
                # Large payloads: memoryview slices avoid copying the ciphertext.
                view = memoryview(data)
                if chunked:
                    plaintext = cipher._decrypt_chunked(view[end : end + 12], view[end + 12 :], aad)
                else:
                    plaintext = cipher._aead.decrypt(view[end : end + 12], view[end + 12 :], aad)
            else:
                plaintext = cipher._aead.decrypt(data[end : end + 12], data[end + 12 :], aad)
        except (IndexError, TypeError, ValueError, InvalidTag, DecryptionError):
            # AES-GCM rejects a short body or a bad tag before returning anything.
            raise DecryptionError from None
        if now_ms is not None:
            stamp = cipher.snapshot.timestamp
            if stamp - now_ms > max_drift * 1000:
                raise SnapshotError("ciphertext is dated in the future beyond max_drift")
            if ttl is not None and now_ms - stamp > ttl * 1000:
                raise SnapshotError("ciphertext is older than its ttl")
        return plaintext

    def _admit_header(self, header: bytes) -> SnapshotCipher:
        sig_len = len(header) - SNAPSHOT_BODY_SIZE - 1
        if not MIN_SIGNATURE_SIZE <= sig_len <= MAX_SIGNATURE_SIZE:
            raise DecryptionError
        if header[_SIG_LEN_OFFSET] != sig_len:  # the token was cut short inside the header
            raise DecryptionError
        version, key_id, tick, timestamp, seed = _SNAPSHOT.unpack_from(header)
        if version != ENVELOPE_VERSION:
            raise DecryptionError
        snapshot = Snapshot(tick, seed, timestamp, key_id, header[SNAPSHOT_BODY_SIZE + 1 :])
        cipher = self._admit(header, snapshot)
        if cipher is None:
            raise DecryptionError
        return cipher
