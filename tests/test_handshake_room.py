"""The handshake room: plain-TCP connections wait for their handshake without a task.

Every other behaviour of a connection in its handshake (the HTTP answers, the
deadlines, eviction, the hostile cases, what an ended connection leaves behind) is
tested where it was before the room, through the same server: these are what the room
adds. Real sockets on 127.0.0.1, both backends.
"""

from __future__ import annotations

import base64
import os

import anyio
import anyio.abc
import pytest

from arraycrypto.core import messages as m
from arraycrypto.server.handshakes import HandshakeRoom

from .harness import frames, hostile
from .harness.clock import wait_for
from .harness.constants import HOST
from .harness.servers import running_server, server_config

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not HandshakeRoom.available(), reason="the room needs epoll (Linux)"),
]

N = 20


async def challenged(port: int) -> tuple[anyio.abc.ByteStream, hostile.Reader, m.Challenge]:
    """A raw client that upgraded and read its challenge, and answers nothing yet."""
    stream = await hostile.connect(port)
    reader = hostile.Reader(stream)
    return stream, reader, await hostile.upgrade(stream, reader)


async def test_handshakes_wait_in_the_room_without_a_task_each() -> None:
    async with running_server(server_config(tick_interval=0.1)) as server:
        assert server.port
        room = server.listener.handshake_room
        assert room is not None
        tasks = len(anyio.get_running_tasks())
        clients = [await challenged(server.port) for _ in range(N)]
        assert len(room) == N
        assert len(anyio.get_running_tasks()) == tasks  # none of them has a task
        for stream, reader, challenge in clients:
            await stream.send(hostile.frame(frames.TEXT, hostile.proof(challenge)))
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.Welcome)
        # Subscribed: each left the room for a task of its own, and gets every tick.
        assert len(room) == 0
        assert server.metrics.handshakes_ok_total == N
        for stream, reader, _ in clients:
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.SnapshotMessage)
            await stream.aclose()


async def test_a_head_in_pieces_and_a_ping_right_behind_it() -> None:
    async with running_server() as server:
        assert server.port
        stream = await hostile.connect(server.port)
        reader = hostile.Reader(stream)
        async with stream:
            key = base64.b64encode(os.urandom(16)).decode()
            request = hostile.UPGRADE.format(host=HOST, key=key).encode()
            # The head in three writes, the last one with a ping frame after it: the
            # server answers the ping while the handshake is still open.
            await stream.send(request[:10])
            await stream.send(request[10:60])
            await stream.send(request[60:] + hostile.frame(frames.PING, b"early"))
            head = await reader.head()
            assert head.startswith(b"HTTP/1.1 101"), head[:80]
            got = await reader.next_frame()
            assert got is not None
            challenge = m.decode(got[1])
            assert isinstance(challenge, m.Challenge)
            assert await reader.next_frame() == (frames.PONG, b"early")
            await stream.send(hostile.frame(frames.TEXT, hostile.proof(challenge)))
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.Welcome)


async def test_stopping_says_goodbye_to_the_room_and_counts_everyone_out() -> None:
    async with running_server() as server:
        assert server.port
        room = server.listener.handshake_room
        assert room is not None
        clients = [await challenged(server.port) for _ in range(N)]
        silent = [await hostile.connect(server.port) for _ in range(N)]  # no byte sent
        await wait_for(lambda: len(room) == 2 * N)  # the silent ones: accepted meanwhile
        assert server.metrics.connections == 2 * N
    # Stopped: each upgraded connection got close 1001, then the end of input; the
    # others just the end of input. Nothing stays counted.
    for stream, reader, _ in clients:
        got = await reader.next_frame()
        assert got is not None
        assert got[0] == frames.CLOSE
        assert frames.close_code(got[1]) == 1001
        assert await reader.next_frame() is None
        await stream.aclose()
    for stream in silent:
        assert await hostile.Reader(stream).next_frame() is None
        await stream.aclose()
    assert server.metrics.connections == 0
    assert server.listener.handshake_room is None
