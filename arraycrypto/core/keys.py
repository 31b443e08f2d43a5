"""Secrets, the key schedule, and signed snapshots (PROTOCOL.md, sections 1 and 2).

Pure: no I/O, no clock. Time is passed in (``now_ms``); randomness is drawn from
``os.urandom`` unless a test or the vector generator passes it in. Built only from
vetted primitives in pyca/cryptography: HKDF-SHA256 and HMAC-SHA256.

Every byte layout here is specified in PROTOCOL.md; change both together.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Final, NoReturn

import msgspec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CHALLENGE_SIZE",
    "ENVELOPE_V2",
    "ENVELOPE_VERSION",
    "KEY_ID_SIZE",
    "MAX_SIGNATURE_SIZE",
    "MIN_SECRET_SIZE",
    "MIN_SIGNATURE_SIZE",
    "NONCE_SIZE",
    "PROOF_SIZE",
    "PROTOCOL_VERSION",
    "SEED_SIZE",
    "SNAPSHOT_BODY_SIZE",
    "TAG_SIZE",
    "Key",
    "Snapshot",
    "generate_secret",
    "handshake_transcript",
    "payload_key",
    "unpack_snapshot_body",
]

ENVELOPE_VERSION: Final = 1
#: The first byte of every envelope v2 (single or stream, PROTOCOL.md section 3a).
ENVELOPE_V2: Final = 2
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
#: The key that makes each tick's seed (section 2): every server of a fleet, the same.
LABEL_SNAPSHOT_SEED: Final = b"arraycrypto/v2 snapshot-seed"
# Envelope v2 (section 3a): its own labels, so no v2 key can equal a v1 key.
LABEL_SINGLE_KEY_V2: Final = b"arraycrypto/v2 single-key"
LABEL_STREAM_KEY_V2: Final = b"arraycrypto/v2 stream-key"
LABEL_PAYLOAD_KEY_V2: Final = b"arraycrypto/v2 payload-key"

#: The version of the WebSocket session (PROTOCOL.md, section 5); 2 proves every field.
PROTOCOL_VERSION: Final = 2
#: Domain separation of the handshake transcript (not an HKDF label: no key is derived).
LABEL_HANDSHAKE: Final = b"arraycrypto/v2 handshake"
MIN_TICK_INTERVAL_MS: Final = 10
MAX_TICK_INTERVAL_MS: Final = 3_600_000
_TICK = struct.Struct(">QI")
_TRANSCRIPT = struct.Struct(f">{len(LABEL_HANDSHAKE)}sB{KEY_ID_SIZE}sI{CHALLENGE_SIZE}s32s")

# version | key_id | tick | timestamp_ms | seed  -- the bytes a snapshot signature covers,
# and also the first bytes of every envelope.
_SNAPSHOT = struct.Struct(f">B{KEY_ID_SIZE}sQQ{SEED_SIZE}s")
SNAPSHOT_BODY_SIZE: Final = _SNAPSHOT.size  # 41
assert SNAPSHOT_BODY_SIZE == 41  # spelled as a literal in Keyring.decrypt, the hot path
_U64_MAX: Final = 2**64 - 1


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

    __slots__ = (
        "_client_proof",
        "_secret",
        "_seed_key",
        "_server_proof",
        "_snapshot_mac",
        "key_id",
    )

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
        self._seed_key = _hkdf(secret, None, LABEL_SNAPSHOT_SEED)

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

    def tick_snapshot(self, tick: int, interval_ms: int, signature_size: int = 16) -> Snapshot:
        """The snapshot of ``tick``: the same bytes from every server holding this secret.

        ``seed = HMAC-SHA256(K_seed, u64(tick) || u32(interval_ms))[:16]`` and
        ``timestamp = tick * interval_ms`` (PROTOCOL.md, section 2), so the workers and
        replicas of a fleet publish one truth per tick, with no coordination.
        """
        seed = hmac.digest(self._seed_key, _TICK.pack(tick, interval_ms), "sha256")[:SEED_SIZE]
        return self.sign_snapshot(tick, seed, tick * interval_ms, signature_size)

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

    def single_key(self, snapshot: Snapshot) -> bytes:
        """Return the AES-256 key of single-shot envelopes v2 under ``snapshot`` (unverified)."""
        info = LABEL_SINGLE_KEY_V2 + snapshot.key_id + snapshot.tick.to_bytes(8, "big")
        return _hkdf(self._secret, snapshot.seed, info)

    def stream_key(self, snapshot: Snapshot) -> bytes:
        """Return the key that derives ``snapshot``'s per-stream payload keys (unverified).

        It is only ever HKDF input (see :func:`payload_key`), never an AES key.
        """
        info = LABEL_STREAM_KEY_V2 + snapshot.key_id + snapshot.tick.to_bytes(8, "big")
        return _hkdf(self._secret, snapshot.seed, info)

    # -- handshake proofs ----------------------------------------------------------------

    def client_proof(self, transcript: bytes) -> bytes:
        """Return the client's proof over a :func:`handshake_transcript`."""
        return hmac.digest(self._client_proof, transcript, "sha256")

    def server_proof(self, transcript: bytes, session: str) -> bytes:
        """Return the server's proof over the transcript and the session id it names."""
        data = transcript + bytes([len(session)]) + session.encode("ascii")
        return hmac.digest(self._server_proof, data, "sha256")

    def check_client_proof(self, transcript: bytes, proof: bytes) -> bool:
        """Return whether ``proof`` is the client proof for this transcript (constant time)."""
        return hmac.compare_digest(self.client_proof(transcript), proof)

    def check_server_proof(self, transcript: bytes, session: str, proof: bytes) -> bool:
        """Return whether ``proof`` is the server proof for this exchange (constant time)."""
        return hmac.compare_digest(self.server_proof(transcript, session), proof)


def handshake_transcript(
    key_id: bytes, tick_interval_ms: int, challenge: bytes, nonce: bytes
) -> bytes:
    """The bytes both handshake proofs cover (PROTOCOL.md, section 5): every field.

    A relay that changes any field of the challenge (or a client's nonce) makes the
    proofs fail, so nothing in the handshake is unauthenticated.
    """
    if not MIN_TICK_INTERVAL_MS <= tick_interval_ms <= MAX_TICK_INTERVAL_MS:
        raise ValueError("tick_interval_ms out of range")
    if len(key_id) != KEY_ID_SIZE or len(challenge) != CHALLENGE_SIZE or len(nonce) != 32:
        raise ValueError("key_id, challenge or nonce has the wrong length")
    return _TRANSCRIPT.pack(
        LABEL_HANDSHAKE, PROTOCOL_VERSION, key_id, tick_interval_ms, challenge, nonce
    )


def payload_key(stream_key: bytes, salt: bytes) -> bytes:
    """Return the AES-256 key of one stream: HKDF(stream_key, salt, "…payload-key")."""
    return _hkdf(stream_key, salt, LABEL_PAYLOAD_KEY_V2)


def unpack_snapshot_body(body: bytes) -> tuple[int, bytes, int, int, bytes]:
    """Return (version, key_id, tick, timestamp, seed) from 41 signed bytes."""
    version, key_id, tick, timestamp, seed = _SNAPSHOT.unpack_from(body)
    return version, key_id, tick, timestamp, seed
