"""Wire messages: every WebSocket frame is one of these, as a JSON text frame.

A tagged union on the ``"type"`` field, decoded by one :data:`decoder` built once.
Binary values travel as lowercase hex. Unknown fields are ignored so that a newer peer
can add fields (with defaults) without breaking an older one. PROTOCOL.md is the spec.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .keys import (
    CHALLENGE_SIZE,
    KEY_ID_SIZE,
    MAX_SIGNATURE_SIZE,
    MAX_TICK_INTERVAL_MS,
    MIN_SIGNATURE_SIZE,
    MIN_TICK_INTERVAL_MS,
    PROOF_SIZE,
    PROTOCOL_VERSION,
    SEED_SIZE,
    Snapshot,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Challenge",
    "ErrorMessage",
    "Handshake",
    "Message",
    "SnapshotMessage",
    "Welcome",
    "decode",
    "decoder",
    "encode",
]


def _hex(n: int) -> msgspec.Meta:
    return msgspec.Meta(pattern=f"^[0-9a-f]{{{2 * n}}}$")


KeyIdHex = Annotated[str, _hex(KEY_ID_SIZE)]
SeedHex = Annotated[str, _hex(SEED_SIZE)]
ChallengeHex = Annotated[str, _hex(CHALLENGE_SIZE)]
ProofHex = Annotated[str, _hex(PROOF_SIZE)]
SignatureHex = Annotated[
    str,
    msgspec.Meta(pattern=f"^([0-9a-f]{{2}}){{{MIN_SIGNATURE_SIZE},{MAX_SIGNATURE_SIZE}}}$"),
]
# JSON integers stay within 2**53 - 1 so every JSON library reads them exactly.
U53 = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
IntervalMs = Annotated[int, msgspec.Meta(ge=MIN_TICK_INTERVAL_MS, le=MAX_TICK_INTERVAL_MS)]
#: Session ids go to logs: a plain alphabet, no newline or escape code can hide in one.
SessionId = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]


class _Base(msgspec.Struct, tag_field="type", frozen=True):
    pass


class Challenge(_Base, tag="challenge", frozen=True):
    """Server → client, first frame: prove you hold the secret named by ``key_id``.

    ``tick_interval_ms`` has a default only so that a version 1 challenge (which has
    ``tick_interval`` in seconds instead) decodes far enough to be refused by version.
    """

    challenge: ChallengeHex
    key_id: KeyIdHex
    version: int = PROTOCOL_VERSION
    tick_interval_ms: IntervalMs = 0


class Handshake(_Base, tag="handshake", frozen=True):
    """Client → server, the only frame a client sends: its proof (the seed's ``hash``).

    ``key_id`` repeats the challenge's: the secret the proof is made with. A version 1
    handshake has no ``version`` field: it decodes as 1 and is refused (4004).
    """

    hash: ProofHex
    nonce: ChallengeHex
    key_id: KeyIdHex
    version: int = 1


class SnapshotMessage(_Base, tag="snapshot", frozen=True):
    """Server → client, every tick: a signed snapshot. Also the body of GET /snapshot."""

    tick: U53
    seed: SeedHex
    timestamp: U53
    key_id: KeyIdHex
    signature: SignatureHex

    @classmethod
    def from_snapshot(cls, s: Snapshot) -> SnapshotMessage:
        """Return the wire form of a core snapshot."""
        return cls(s.tick, s.seed.hex(), s.timestamp, s.key_id.hex(), s.signature.hex())

    def to_snapshot(self) -> Snapshot:
        """Return the core snapshot (hex already validated by the decoder)."""
        return Snapshot(
            self.tick,
            bytes.fromhex(self.seed),
            self.timestamp,
            bytes.fromhex(self.key_id),
            bytes.fromhex(self.signature),
        )


class Welcome(_Base, tag="welcome", frozen=True):
    """Server → client after a valid handshake: the server's proof and the snapshot."""

    proof: ProofHex
    session: SessionId
    snapshot: SnapshotMessage


class ErrorMessage(_Base, tag="error", frozen=True):
    """Server → client just before a close: a stable code and a generic reason."""

    code: int
    reason: str


Message = Challenge | Handshake | SnapshotMessage | Welcome | ErrorMessage

#: The one decoder for every frame; raises msgspec.ValidationError / DecodeError.
decoder: Final[msgspec.json.Decoder[Message]] = msgspec.json.Decoder(Message)
_encoder: Final = msgspec.json.Encoder()


def encode(message: Message) -> bytes:
    """Return the JSON bytes of one message (the payload of a text frame)."""
    return _encoder.encode(message)


def decode(data: bytes | str) -> Message:
    """Decode one frame payload; raise msgspec.ValidationError or DecodeError if bad."""
    return decoder.decode(data)
