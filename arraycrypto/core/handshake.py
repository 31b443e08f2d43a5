"""The connection state machines of the push protocol, without I/O (Sans-I/O).

The drivers (server.py, client.py) own the sockets, the WebSocket framing and the
timers; they hand each received text payload to these objects and send what comes
back. Time is passed in as ``now_ms``; randomness (challenge, nonce) is passed in too.

Server side, one object per connection::

    CHALLENGED --handshake with a valid proof------------> SUBSCRIBED  (send welcome)
    CHALLENGED --bad proof / unknown key id--------------> CLOSED 4001
    CHALLENGED --malformed JSON, wrong or unknown type---> CLOSED 4003
    CHALLENGED --binary frame----------------------------> CLOSED 1003
    SUBSCRIBED --any data frame--------------------------> CLOSED 4003
    (no handshake within handshake_timeout: the driver closes with 4002)

Client side::

    AWAIT_CHALLENGE --challenge--------------------------> AWAIT_WELCOME (send handshake)
    AWAIT_WELCOME   --welcome with a valid server proof--> SUBSCRIBED   (snapshot event)
    AWAIT_WELCOME   --bad server proof-------------------> AuthenticationError
    SUBSCRIBED      --snapshot---------------------------> SUBSCRIBED   (accepted/rejected)
    any             --error message 4001-----------------> AuthenticationError
    any             --anything else out of place---------> ProtocolError
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from . import messages as m
from .envelope import SnapshotCipher
from .exceptions import AuthenticationError, ProtocolError
from .keyring import Keyring
from .keys import CHALLENGE_SIZE, Key, Snapshot, handshake_transcript

__all__ = [
    "Accepted",
    "ClientSession",
    "ClientState",
    "CloseCode",
    "Rejected",
    "ServerSession",
    "ServerState",
    "SnapshotPolicy",
    "Violation",
]


class CloseCode(enum.IntEnum):
    """WebSocket close codes used by arraycrypto (PROTOCOL.md, "Close codes")."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002  # WebSocket framing error (detected by websockets)
    UNSUPPORTED_DATA = 1003  # a binary frame
    MESSAGE_TOO_BIG = 1009  # frame above max_frame_size
    AUTHENTICATION_FAILED = 4001
    HANDSHAKE_TIMEOUT = 4002
    UNEXPECTED_MESSAGE = 4003  # malformed, unknown, or not allowed in this state
    UNSUPPORTED_VERSION = 4004  # a handshake of another protocol version


#: The reason sent with each close code: generic, never any detail about secrets.
REASONS: Final[dict[int, str]] = {
    CloseCode.GOING_AWAY: "server shutting down",
    CloseCode.UNSUPPORTED_DATA: "binary frames are not accepted",
    CloseCode.MESSAGE_TOO_BIG: "frame too large",
    CloseCode.AUTHENTICATION_FAILED: "authentication failed",
    CloseCode.HANDSHAKE_TIMEOUT: "handshake timeout",
    CloseCode.UNEXPECTED_MESSAGE: "unexpected message",
    CloseCode.UNSUPPORTED_VERSION: "unsupported protocol version",
}


class Violation(ProtocolError):
    """Raised by a session when the peer must be disconnected with ``code``."""

    def __init__(self, code: CloseCode) -> None:
        self.code = code
        self.reason = REASONS[code]
        super().__init__(f"{self.reason} ({int(code)})")


class ServerState(enum.IntEnum):
    """Life of one server connection."""

    CHALLENGED = 1
    SUBSCRIBED = 2
    CLOSED = 3


class ServerSession:
    """Server side of one connection: issues the challenge, checks the proof.

    ``tick_interval`` is in seconds (the config's unit); the wire carries milliseconds.
    """

    def __init__(self, key: Key, challenge: bytes, session_id: str, tick_interval: float) -> None:
        if len(challenge) != CHALLENGE_SIZE:
            raise ValueError("challenge must be 32 bytes")
        self.state = ServerState.CHALLENGED
        self.session_id = session_id
        self._key = key
        self._challenge = challenge
        self._interval_ms = round(tick_interval * 1000)

    def challenge_message(self) -> bytes:
        """Return the first frame's payload."""
        return m.encode(
            m.Challenge(
                challenge=self._challenge.hex(),
                key_id=self._key.key_id.hex(),
                tick_interval_ms=self._interval_ms,
            )
        )

    def receive_text(self, payload: bytes, snapshot: Snapshot) -> bytes:
        """Handle a text frame; return the welcome payload, or raise :class:`Violation`."""
        if self.state is not ServerState.CHALLENGED:
            self.state = ServerState.CLOSED
            raise Violation(CloseCode.UNEXPECTED_MESSAGE)
        try:
            message = m.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            message = None
        if not isinstance(message, m.Handshake):
            self.state = ServerState.CLOSED
            raise Violation(CloseCode.UNEXPECTED_MESSAGE)
        if message.version != m.PROTOCOL_VERSION:
            self.state = ServerState.CLOSED
            raise Violation(CloseCode.UNSUPPORTED_VERSION)
        key = self._key
        transcript = handshake_transcript(
            key.key_id, self._interval_ms, self._challenge, bytes.fromhex(message.nonce)
        )
        # Compare the proof first (constant time), the key id after, so both failures
        # cost the same and look the same.
        proof_ok = key.check_client_proof(transcript, bytes.fromhex(message.hash))
        if not proof_ok or message.key_id != key.key_id.hex():
            self.state = ServerState.CLOSED
            raise Violation(CloseCode.AUTHENTICATION_FAILED)
        self.state = ServerState.SUBSCRIBED
        return m.encode(
            m.Welcome(
                proof=key.server_proof(transcript, self.session_id).hex(),
                session=self.session_id,
                snapshot=m.SnapshotMessage.from_snapshot(snapshot),
            )
        )


class ClientState(enum.IntEnum):
    """Life of one client connection."""

    AWAIT_CHALLENGE = 1
    AWAIT_WELCOME = 2
    SUBSCRIBED = 3
    CLOSED = 4


class Accepted(msgspec.Struct, frozen=True):
    """A snapshot that passed every check: the client may encrypt under its cipher."""

    cipher: SnapshotCipher

    @property
    def snapshot(self) -> Snapshot:
        """The accepted snapshot."""
        return self.cipher.snapshot


class Rejected(msgspec.Struct, frozen=True):
    """A snapshot that failed a check; it must be dropped and never used."""

    reason: str


class SnapshotPolicy:
    """Which snapshots a client accepts, and until when: decided here and nowhere else.

    A snapshot is accepted only if

    - it is signed by a key the keyring trusts to sign (the primary or a ``next``
      secret; retired ``old`` secrets only decrypt) with a signature of at least
      ``min_signature_size`` bytes,
    - that key is not older than the newest trusted key already accepted: once a client
      has seen a snapshot under a newer key, it never goes back,
    - its timestamp is after the last accepted one (the same snapshot again is fine),
      and within ``max_drift`` seconds of the local clock.

    Ordering by the signed timestamp rather than the tick number means no signed value
    can lock a client out for longer than ``max_drift`` (a snapshot dated that far ahead
    is the worst case), and a server whose ``tick_interval`` changes locks no one out.
    An accepted snapshot stays fresh (usable to encrypt) until :meth:`expires_at`. One
    policy lives as long as its client: what it accepted survives reconnections.
    """

    __slots__ = (
        "_last",
        "_max_drift_ms",
        "_min_sig",
        "keyring",
        "last_timestamp",
        "max_drift",
        "newest_rank",
    )

    def __init__(
        self, keyring: Keyring, *, max_drift: float = 60.0, min_signature_size: int = 16
    ) -> None:
        self.keyring = keyring
        self.max_drift = max_drift
        self._max_drift_ms = max_drift * 1000
        self._min_sig = min_signature_size
        self.last_timestamp = -1
        self.newest_rank = 0  # the rank of the newest trusted key accepted so far
        self._last: Snapshot | None = None

    def reconfigure(self, keyring: Keyring, *, max_drift: float, min_signature_size: int) -> None:
        """Apply a new configuration in place: what was accepted before still counts.

        The last timestamp stays. The newest key accepted keeps its place if the new
        keyring still trusts it to sign (at its new rank); if it does not, the client
        starts over from the new primary (the operator retired that key).
        """
        newest = self._last.key_id if self._last is not None else None
        rank = keyring.trust_rank(newest) if newest is not None else None
        self.keyring = keyring
        self.max_drift = max_drift
        self._max_drift_ms = max_drift * 1000
        self._min_sig = min_signature_size
        self.newest_rank = rank or 0

    def signer(self, key_id: bytes) -> Key:
        """The key a server naming ``key_id`` must prove; raise if it may not sign.

        AuthenticationError: not a key this client trusts to sign. ProtocolError: a
        trusted key, but older than one this client has already moved to.
        """
        rank = self.keyring.trust_rank(key_id)
        if rank is None:
            raise AuthenticationError(
                f"server uses key id {key_id.hex()}, which this client does not trust to"
                " sign (not its secret_key or next_secret_keys)"
            )
        if rank < self.newest_rank:
            raise ProtocolError(
                f"server uses key id {key_id.hex()}, older than key id"
                f" {self._newest_id()} this client has already moved to"
            )
        key = self.keyring.key(key_id)
        assert key is not None
        return key

    def _newest_id(self) -> str:
        return self._last.key_id.hex() if self._last is not None else "?"

    def check(self, snapshot: Snapshot, now_ms: int) -> Accepted | Rejected:
        """Accept ``snapshot`` at ``now_ms`` (its cipher, verified once) or say why not."""
        rank = self.keyring.trust_rank(snapshot.key_id)
        if rank is None:
            return Rejected(
                f"signed by key id {snapshot.key_id.hex()}, which this client does not"
                " trust to sign"
            )
        if rank < self.newest_rank:
            return Rejected(
                f"signed by key id {snapshot.key_id.hex()}, older than key id"
                f" {self._newest_id()} this client has already moved to"
            )
        if len(snapshot.signature) < self._min_sig:
            return Rejected("signature shorter than hash_size")
        key = self.keyring.verify(snapshot)
        if key is None:
            return Rejected("bad signature")
        if snapshot.timestamp <= self.last_timestamp and snapshot != self._last:
            return Rejected("not newer than the last accepted snapshot")
        if abs(snapshot.timestamp - now_ms) > self._max_drift_ms:
            return Rejected("timestamp outside max_drift of the local clock")
        self.last_timestamp = snapshot.timestamp
        self.newest_rank = rank
        self._last = snapshot
        return Accepted(self.keyring.admit(snapshot, key))

    def expires_at(self, snapshot: Snapshot) -> float:
        """The wall-clock second after which an accepted ``snapshot`` may no longer encrypt."""
        return snapshot.timestamp / 1000 + self.max_drift


class ClientSession:
    """Client side of one connection: answers the challenge, checks every snapshot.

    ``policy`` decides which snapshots are accepted (:class:`SnapshotPolicy`).
    """

    def __init__(self, policy: SnapshotPolicy, nonce: bytes) -> None:
        if len(nonce) != CHALLENGE_SIZE:
            raise ValueError("nonce must be 32 bytes")
        self.state = ClientState.AWAIT_CHALLENGE
        self.session_id: str | None = None
        self.tick_interval: float | None = None
        self.policy = policy
        self._nonce = nonce
        self._transcript = b""
        self._key: Key | None = None

    def receive_text(self, payload: bytes, now_ms: int) -> bytes | Accepted | Rejected:
        """Handle a text frame from the server.

        Returns the handshake payload to send (after the challenge) or the verdict on
        a snapshot. Raises AuthenticationError or ProtocolError, after which the
        connection must be closed.
        """
        try:
            message = m.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.state = ClientState.CLOSED
            raise ProtocolError("server sent a malformed frame") from None
        match (self.state, message):
            case (_, m.ErrorMessage(code=code)):
                self.state = ClientState.CLOSED
                if code == CloseCode.AUTHENTICATION_FAILED:
                    raise AuthenticationError("server rejected our proof: is the secret right?")
                raise ProtocolError(f"server closed the session with code {code}")
            case (ClientState.AWAIT_CHALLENGE, m.Challenge() as c):
                return self._answer(c)
            case (ClientState.AWAIT_WELCOME, m.Welcome() as w):
                assert self._key is not None
                if not self._key.check_server_proof(
                    self._transcript, w.session, bytes.fromhex(w.proof)
                ):
                    self.state = ClientState.CLOSED
                    raise AuthenticationError(
                        "server failed to prove it holds the secret (or the handshake"
                        " was altered on its way)"
                    )
                self.state = ClientState.SUBSCRIBED
                self.session_id = w.session
                return self.policy.check(w.snapshot.to_snapshot(), now_ms)
            case (ClientState.SUBSCRIBED, m.SnapshotMessage() as s):
                return self.policy.check(s.to_snapshot(), now_ms)
        self.state = ClientState.CLOSED
        raise ProtocolError(f"unexpected {type(message).__name__} frame")

    def _answer(self, c: m.Challenge) -> bytes:
        if c.version != m.PROTOCOL_VERSION:
            self.state = ClientState.CLOSED
            raise ProtocolError(
                f"server speaks protocol version {c.version}, not {m.PROTOCOL_VERSION}"
            )
        if not c.tick_interval_ms:  # range-checked by the decoder when present
            self.state = ClientState.CLOSED
            raise ProtocolError("server sent no tick_interval_ms")
        try:
            key = self.policy.signer(bytes.fromhex(c.key_id))
        except (AuthenticationError, ProtocolError):
            self.state = ClientState.CLOSED
            raise
        self._key = key
        # Every field of the challenge goes into the transcript both proofs cover: the
        # tick interval is trusted only once the welcome's proof checked it.
        self._transcript = handshake_transcript(
            key.key_id, c.tick_interval_ms, bytes.fromhex(c.challenge), self._nonce
        )
        self.tick_interval = c.tick_interval_ms / 1000
        self.state = ClientState.AWAIT_WELCOME
        return m.encode(
            m.Handshake(
                hash=key.client_proof(self._transcript).hex(),
                nonce=self._nonce.hex(),
                key_id=c.key_id,
                version=m.PROTOCOL_VERSION,
            )
        )
