"""Hostile-input cases for the server: generated from a seed, each with its expected outcome.

Used by tests/test_hostile.py (a few hundred cases, in CI) and scripts/fuzz.py (100 000+).
A case is the bytes a peer sends on one fresh TCP connection, optionally after a valid
WebSocket upgrade (and handshake); its outcome is what the server answered: an HTTP
status, a WebSocket close code, or a plain close. Every outcome must be one of the
documented ones listed in the case (PROTOCOL.md, sections 5 and 6).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import ssl
import struct
from dataclasses import dataclass, field

import anyio
import anyio.abc

from arraycrypto import Keyring
from arraycrypto.core import messages as m

from . import frames
from .constants import HOST, SECRET
from .pure import answer

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@dataclass
class Case:
    """One hostile connection and the outcomes the protocol allows for it."""

    kind: str
    payload: bytes
    expect: frozenset[str]
    upgrade: bool = False  # do a valid WebSocket upgrade first
    handshake: bool = False  # and a valid handshake (then the payload is post-handshake)
    replay_from: str | None = None  # "previous": replay a proof recorded on another connection
    notes: list[str] = field(default_factory=list)


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A client WebSocket frame, with every field under the caller's control."""
    return frames.encode(opcode, payload, fin=fin, mask=mask, rsv=rsv, length=length)


PROTOCOL_CLOSE = frozenset({"close:1002"})
TOO_BIG = frozenset({"close:1009"})
UNEXPECTED = frozenset({"close:4003"})
AUTH = frozenset({"close:4001"})
BAD_REQUEST = frozenset({"http:400"})


def generate(
    rng: random.Random, count: int, *, max_frame_size: int = 4096, http_max: int = 8192
) -> list[Case]:
    """Return ``count`` cases drawn evenly from every class, reproducibly from ``rng``."""
    makers = [
        _garbage_before,
        _garbage_after,
        _huge_headers,
        _many_headers,
        _bad_header_line,
        _non_ascii_head,
        _bad_opcode,
        _reserved_bits,
        _unmasked,
        _oversize_frame,
        _bad_control_frame,
        _unfinished_fragment,
        _bad_json,
        _wrong_types,
        _unknown_tag,
        _wrong_proof,
        _old_version,
        _replayed_proof,
        _post_handshake_frame,
        _binary_frame,
        _silent_after_upgrade,
        _silent_tcp,
    ]
    cases = []
    for i in range(count):
        maker = makers[i % len(makers)]
        cases.append(maker(rng, max_frame_size, http_max))
    return cases


def _bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def _garbage_before(rng: random.Random, _fs: int, _hm: int) -> Case:
    garbage = _bytes(rng, rng.randint(1, 64)).replace(b"G", b"g")
    # Token characters only would make a valid method ("xyzGET"): 405, also documented.
    return Case(
        "garbage before the request line",
        garbage + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        BAD_REQUEST | {"http:405"},
    )


def _garbage_after(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "garbage after a complete request",
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + _bytes(rng, rng.randint(1, 2048)),
        frozenset({"http:200"}),
    )


def _huge_headers(rng: random.Random, _fs: int, http_max: int) -> Case:
    size = rng.randint(http_max + 1, http_max * 4)
    return Case(
        "request head larger than http_max_request_size",
        b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n",
        BAD_REQUEST,
    )


def _many_headers(rng: random.Random, _fs: int, _hm: int) -> Case:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(rng.randint(101, 200)))
    return Case("more than 100 headers", b"GET /health HTTP/1.1\r\n" + lines + b"\r\n", BAD_REQUEST)


def _bad_header_line(rng: random.Random, _fs: int, _hm: int) -> Case:
    bad = rng.choice([b"NoColonHere", b"Bad Name: v", b": empty name", b"(x): y"])
    return Case(
        "malformed header line", b"GET /health HTTP/1.1\r\n" + bad + b"\r\n\r\n", BAD_REQUEST
    )


def _non_ascii_head(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "non-ASCII request head",
        b"GET /health HTTP/1.1\r\nX: " + bytes([rng.randint(128, 255)]) + b"\r\n\r\n",
        BAD_REQUEST,
    )


def _bad_opcode(rng: random.Random, _fs: int, _hm: int) -> Case:
    op = rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    return Case("reserved opcode", frame(op, _bytes(rng, 8)), PROTOCOL_CLOSE, upgrade=True)


def _reserved_bits(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "reserved bits set (no extension negotiated)",
        frame(1, b"{}", rsv=rng.randint(1, 7)),
        PROTOCOL_CLOSE,
        upgrade=True,
    )


def _unmasked(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "unmasked client frame", frame(1, b'{"type":"x"}', mask=False), PROTOCOL_CLOSE, upgrade=True
    )


def _oversize_frame(rng: random.Random, max_frame_size: int, _hm: int) -> Case:
    n = rng.randint(max_frame_size + 1, max_frame_size * 64)
    # Only the header is sent: the length alone must be refused.
    return Case(
        "frame longer than max_frame_size", frame(1, b"", length=n)[:14], TOO_BIG, upgrade=True
    )


def _bad_control_frame(rng: random.Random, _fs: int, _hm: int) -> Case:
    choice = rng.randint(0, 2)
    if choice == 0:
        data = frame(9, _bytes(rng, rng.randint(126, 400)))  # ping longer than 125
    elif choice == 1:
        data = frame(9, b"x", fin=False)  # fragmented control frame
    else:
        data = frame(8, struct.pack(">H", rng.choice([0, 999, 1004, 1005, 1006, 5000])))
    return Case("malformed control frame", data, PROTOCOL_CLOSE, upgrade=True)


def _unfinished_fragment(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "fragment never finished", frame(1, b'{"type":', fin=False), UNEXPECTED, upgrade=True
    )


def _bad_json(rng: random.Random, _fs: int, _hm: int) -> Case:
    body = rng.choice(
        [b"{", b"[1,2", b"nul", b'{"type":"handshake",}', b"\xff\xfe", _bytes(rng, 20)]
    )
    # Non-UTF-8 text is a WebSocket protocol error (1007) before it reaches our JSON.
    return Case("malformed JSON", frame(1, body), UNEXPECTED | {"close:1007"}, upgrade=True)


def _wrong_types(rng: random.Random, _fs: int, _hm: int) -> Case:
    body = rng.choice(
        [
            b'{"type":"handshake","hash":1,"nonce":"00","key_id":"00"}',
            b'{"type":"handshake","hash":"zz","nonce":[],"key_id":null}',
            b'{"type":"handshake","hash":"'
            + b"0" * 63
            + b'","nonce":"'
            + b"0" * 64
            + b'","key_id":"0011223344556677"}',
            b'{"type":1}',
            b"[]",
            b"42",
        ]
    )
    return Case("handshake with wrong types or lengths", frame(1, body), UNEXPECTED, upgrade=True)


def _unknown_tag(rng: random.Random, _fs: int, _hm: int) -> Case:
    tag = rng.choice([b"hello", b"snapshot", b"welcome", b"challenge", b"error", b""])
    return Case(
        "unknown or out-of-place message type",
        frame(1, b'{"type":"' + tag + b'"}'),
        UNEXPECTED,
        upgrade=True,
    )


def _wrong_proof(rng: random.Random, _fs: int, _hm: int) -> Case:
    key_id = Keyring(SECRET).primary.key_id.hex()
    msg = m.Handshake(
        hash=_bytes(rng, 32).hex(),
        nonce=_bytes(rng, 32).hex(),
        key_id=key_id,
        version=m.PROTOCOL_VERSION,
    )
    return Case("wrong proof", frame(1, m.encode(msg)), AUTH, upgrade=True)


def _old_version(rng: random.Random, _fs: int, _hm: int) -> Case:
    key_id = Keyring(SECRET).primary.key_id.hex()
    # A version 1 handshake has no version field at all; others name one we do not speak.
    version = rng.choice([None, 1, 3, 2**31])
    msg = m.Handshake(
        hash=_bytes(rng, 32).hex(),
        nonce=_bytes(rng, 32).hex(),
        key_id=key_id,
        version=1 if version is None else version,
    )
    data = m.encode(msg)
    if version is None:
        data = data.replace(b',"version":1', b"")
    return Case(
        "handshake of another protocol version",
        frame(1, data),
        frozenset({"close:4004"}),
        upgrade=True,
    )


def _replayed_proof(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "proof replayed from an earlier connection", b"", AUTH, upgrade=True, replay_from="previous"
    )


def _post_handshake_frame(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case(
        "data frame after the handshake",
        frame(1, b'{"type":"handshake"}'),
        UNEXPECTED,
        upgrade=True,
        handshake=True,
    )


def _binary_frame(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case("binary frame", frame(2, _bytes(rng, 16)), frozenset({"close:1003"}), upgrade=True)


def _silent_after_upgrade(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case("upgraded, then never speaks", b"", frozenset({"close:4002"}), upgrade=True)


def _silent_tcp(rng: random.Random, _fs: int, _hm: int) -> Case:
    return Case("connects and never speaks", b"", frozenset({"http:408"}))


# -- running a case ----------------------------------------------------------------------


class Reader:
    """Reads an HTTP head and then server frames off a raw stream, never answering any."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    async def fill(self) -> bool:
        try:
            self.buffer += await self.stream.receive()
            return True
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.eof = True
            return False

    async def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            if not await self.fill():
                return self.buffer
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    async def next_frame(self) -> tuple[int, bytes] | None:
        """Return the next server frame (opcode, payload); None at end of input."""
        while True:
            parsed = frames.parse(self.buffer)
            if parsed is not None:
                opcode, payload, self.buffer = parsed
                return opcode, payload
            if not await self.fill():
                return None


def upgrade_request() -> bytes:
    """A valid WebSocket upgrade request, with a fresh key."""
    key = base64.b64encode(os.urandom(16)).decode()
    return UPGRADE.format(host=HOST, key=key).encode()


async def upgrade(stream: anyio.abc.ByteStream, reader: Reader) -> m.Challenge:
    """Do a valid WebSocket upgrade by hand; return the challenge that follows."""
    await stream.send(upgrade_request())
    return await upgraded(reader)


async def upgraded(reader: Reader) -> m.Challenge:
    """Read the 101 to an upgrade request sent by hand, and the challenge after it."""
    head = await reader.head()
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    got = await reader.next_frame()
    assert got is not None
    challenge = m.decode(got[1])
    assert isinstance(challenge, m.Challenge)
    return challenge


def proof(challenge: m.Challenge) -> bytes:
    """A valid handshake message answering ``challenge`` with the test secret."""
    return answer(challenge, Keyring(SECRET).primary)


async def connect(port: int, ssl_context: ssl.SSLContext | None = None) -> anyio.abc.ByteStream:
    """A raw TCP (or TLS) stream to the server on 127.0.0.1."""
    if ssl_context is not None:
        return await anyio.connect_tcp(
            HOST,
            port,
            ssl_context=ssl_context,
            tls_hostname="localhost",
            tls_standard_compatible=False,
        )
    return await anyio.connect_tcp(HOST, port)


async def subscribe(
    port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[anyio.abc.ByteStream, Reader]:
    """Upgrade and authenticate by hand; the stream then answers nothing on its own."""
    stream = await connect(port, ssl_context)
    reader = Reader(stream)
    challenge = await upgrade(stream, reader)
    await stream.send(frame(1, proof(challenge)))
    got = await reader.next_frame()
    assert got is not None
    assert isinstance(m.decode(got[1]), m.Welcome)
    return stream, reader


class Runner:
    """Runs cases against a server on 127.0.0.1 and names each outcome."""

    def __init__(
        self, port: int, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.ssl_context = ssl_context  # set: every case runs over TLS (wss/https)
        self.recorded_proof: bytes | None = None

    async def run(self, case: Case) -> str:
        with anyio.move_on_after(self.timeout):
            return await self._run(case)
        return "timeout"

    async def _run(self, case: Case) -> str:
        stream = await connect(self.port, self.ssl_context)
        async with stream:
            reader = Reader(stream)
            payload = case.payload
            if case.upgrade:
                challenge = await upgrade(stream, reader)
                if case.handshake or (case.replay_from and self.recorded_proof is None):
                    answer = proof(challenge)
                    await stream.send(frame(1, answer))
                    self.recorded_proof = answer
                    got = await reader.next_frame()
                    assert got is not None
                    assert isinstance(m.decode(got[1]), m.Welcome)
                    if case.replay_from:
                        # This one was the recording: replay it on a new connection.
                        return await self._run(case)
                elif case.replay_from:
                    assert self.recorded_proof is not None
                    payload = frame(1, self.recorded_proof)
            if payload:
                # The server may close before reading it all: then read its verdict.
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(payload)
            return await self._outcome(reader, websocket=case.upgrade)

    async def _outcome(self, reader: Reader, *, websocket: bool) -> str:
        if not websocket:
            head = await reader.head()
            if not head:
                return "eof"
            parts = head.split(b" ", 2)
            return f"http:{int(parts[1])}" if len(parts) >= 2 and parts[1].isdigit() else "junk"
        while True:
            got = await reader.next_frame()
            if got is None:
                return "eof"
            opcode, data = got
            if opcode == 8:
                code = frames.close_code(data)
                return f"close:{code}" if code is not None else "close"
