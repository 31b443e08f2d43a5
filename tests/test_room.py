"""The room: plain-TCP connections wait for their handshake, and then as subscribers,
without a task.

Every other behaviour of a connection (the HTTP answers, the deadlines, eviction, the
hostile cases, pushes, pings, drains, what an ended connection leaves behind) is tested
where it was before the room, through the same server: these are what the room adds.
Real sockets on 127.0.0.1, both backends.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc
import pytest

from arraycrypto.core import messages as m
from arraycrypto.core.server_connection import Event
from arraycrypto.net.sockets import SocketStream
from arraycrypto.server.fanout import Subscriber
from arraycrypto.server.listener import Listener
from arraycrypto.server.room import Arrival, Room

from .harness import frames, hostile
from .harness.clock import wait_for
from .harness.http import http_get, http_request
from .harness.servers import running_server, server_config

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not Room.available(), reason="the room needs epoll (Linux)"),
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
        room = server.listener.room
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
        # Subscribed: each stays in the room, still without a task, and gets every tick.
        assert len(room) == N
        assert len(anyio.get_running_tasks()) == tasks
        assert server.metrics.handshakes_ok_total == N
        assert server.metrics.value("subscribed_clients") == N
        for stream, reader, _ in clients:
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.SnapshotMessage)
            await stream.aclose()
        # Gone (a FIN each): each got a task, which ended it.
        await wait_for(lambda: server.metrics.connections == 0)
        assert len(room) == 0
        assert server.metrics.value("subscribed_clients") == 0
        await wait_for(lambda: len(anyio.get_running_tasks()) == tasks)


async def next_non_push(reader: hostile.Reader) -> tuple[int, bytes] | None:
    """The next frame that is not a snapshot push (a pong, a ping, a Close), or None."""
    while (got := await reader.next_frame()) is not None:
        if got[0] != frames.TEXT:
            return got
    return None


async def test_a_subscriber_waits_in_the_room_through_pings_both_ways() -> None:
    # The pinger pings every 50 ms: each pong is read in the room. The client's own ping
    # is answered there too. It keeps no task, and stays subscribed.
    config = server_config(tick_interval=0.05, ping_interval=0.05, ping_timeout=5.0)
    async with running_server(config) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        tasks = len(anyio.get_running_tasks())
        stream, reader = await hostile.subscribe(server.port)
        async with stream:
            with anyio.fail_after(10):
                for _ in range(3):
                    got = await next_non_push(reader)
                    assert got is not None
                    assert got[0] == frames.PING
                    await stream.send(hostile.frame(frames.PONG, got[1]))
                await stream.send(hostile.frame(frames.PING, b"mine"))
                got = await next_non_push(reader)
                while got is not None and got[0] == frames.PING:  # the pinger's, meanwhile
                    await stream.send(hostile.frame(frames.PONG, got[1]))
                    got = await next_non_push(reader)
            assert got == (frames.PONG, b"mine")
            assert len(room) == 1
            assert len(anyio.get_running_tasks()) == tasks
            (subscriber,) = server.fanout.subscribers
            assert subscriber.conn.last_pong > 0  # the pongs were read, in the room
            assert server.metrics.value("dropped_clients_total", "ping") == 0


async def test_a_parked_subscribers_close_is_a_closing_handshake() -> None:
    # The client's Close gives the connection its task, which echoes it and ends it.
    async with running_server(server_config(tick_interval=0.05)) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        stream, reader = await hostile.subscribe(server.port)
        async with stream:
            assert len(room) == 1
            await stream.send(hostile.frame(frames.CLOSE, b"\x03\xe8bye"))
            with anyio.fail_after(10):
                got = await next_non_push(reader)
                assert got is not None
                assert got[0] == frames.CLOSE
                assert frames.close_code(got[1]) == 1000
                assert await reader.next_frame() is None  # then the server's FIN
        await wait_for(lambda: server.metrics.connections == 0)
        assert len(room) == 0
        assert server.metrics.value("subscribed_clients") == 0


async def test_a_parked_subscriber_that_never_answers_a_ping_is_dropped() -> None:
    # The pinger drops it ("no pong"); with no task of its own, the drop gives it one,
    # which ends it: counted out, its descriptor closed.
    config = server_config(tick_interval=0.05, ping_interval=0.05, ping_timeout=0.2)
    async with running_server(config) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        fds = len(os.listdir("/proc/self/fd"))
        stream, reader = await hostile.subscribe(server.port)
        async with stream:
            assert len(room) == 1
            with anyio.fail_after(10):
                while await reader.next_frame() is not None:  # pings unanswered
                    pass
        await wait_for(lambda: server.metrics.connections == 0)
        assert server.metrics.value("dropped_clients_total", "ping") == 1
        assert len(room) == 0
        assert server.metrics.value("subscribed_clients") == 0
        await wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds)


async def test_a_drain_says_goodbye_to_parked_subscribers() -> None:
    # Draining closes every subscriber with 1001: a parked one gets its task for the
    # closing handshake at once (not when the client echoes: a client that never does
    # is then given up at the closing deadline by that task), which reads the echo.
    async with running_server(server_config(tick_interval=0.05)) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        clients = [await hostile.subscribe(server.port) for _ in range(N)]
        assert len(room) == N
        await server.fanout.close_all(0.2)
        for _, reader in clients:
            with anyio.fail_after(10):
                got = await next_non_push(reader)
            assert got is not None
            assert got[0] == frames.CLOSE
            assert frames.close_code(got[1]) == 1001
        assert len(room) == 0  # no echo yet: each is in its task, from the goodbye
        for stream, reader in clients:
            await stream.send(hostile.frame(frames.CLOSE, b"\x03\xe9"))  # the echo
            with anyio.fail_after(10):
                assert await reader.next_frame() is None  # the server's FIN
            await stream.aclose()
        await wait_for(lambda: server.metrics.connections == 0)


async def test_a_head_in_pieces_and_a_ping_right_behind_it() -> None:
    async with running_server() as server:
        assert server.port
        stream = await hostile.connect(server.port)
        reader = hostile.Reader(stream)
        async with stream:
            request = hostile.upgrade_request()
            # The head in three writes, the last one with a ping frame after it: the
            # server answers the ping while the handshake is still open.
            await stream.send(request[:10])
            await stream.send(request[10:60])
            await stream.send(request[60:] + hostile.frame(frames.PING, b"early"))
            challenge = await hostile.upgraded(reader)
            assert await reader.next_frame() == (frames.PONG, b"early")
            await stream.send(hostile.frame(frames.TEXT, hostile.proof(challenge)))
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.Welcome)


async def test_stopping_says_goodbye_to_the_room_and_counts_everyone_out() -> None:
    async with running_server() as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        clients = [await challenged(server.port) for _ in range(N)]
        subscribed = [await hostile.subscribe(server.port) for _ in range(N)]
        silent = [await hostile.connect(server.port) for _ in range(N)]  # no byte sent
        await wait_for(lambda: len(room) == 3 * N)  # the silent ones: accepted meanwhile
        assert server.metrics.connections == 3 * N
    # Stopped: each upgraded connection got close 1001, then the end of input; the
    # others just the end of input. Nothing stays counted.
    for stream, reader in [(stream, reader) for stream, reader, _ in clients] + subscribed:
        got = await next_non_push(reader)
        assert got is not None
        assert got[0] == frames.CLOSE
        assert frames.close_code(got[1]) == 1001
        assert await reader.next_frame() is None
        await stream.aclose()
    for stream in silent:
        assert await hostile.Reader(stream).next_frame() is None
        await stream.aclose()
    assert server.metrics.connections == 0
    assert server.listener.room is None


def heads(room: Room) -> list[bytes]:
    """The request-head bytes each connection in the room has been read so far."""
    return [arrival.head for arrival in room._arrivals.values()]


async def test_stopping_mid_handshake_is_a_closing_handshake_not_a_reset() -> None:
    # The client's last bytes (a ping) may still be unread when the server stops:
    # closing then would reset the connection, and the 1001 with it. The stopping
    # server reads on, finishes the closing handshake, and ends with a FIN.
    outcome: list[object] = []

    async def goodbye(stream: anyio.abc.ByteStream, reader: hostile.Reader) -> None:
        while (got := await reader.next_frame()) is not None and got[0] != frames.CLOSE:
            pass
        outcome.append(got and frames.close_code(got[1]))
        await stream.send(hostile.frame(frames.CLOSE, got[1] if got else b""))
        try:
            outcome.append(await stream.receive())
        except anyio.EndOfStream:
            outcome.append("end of input")
        except anyio.BrokenResourceError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg, running_server() as server:
        assert server.port
        stream, reader, _ = await challenged(server.port)
        tg.start_soon(goodbye, stream, reader)
        # Sent with no await before the stop, so the room cannot have read it (on
        # either backend the cancellation reaches the room before the readiness).
        fd = stream.extra(anyio.abc.SocketAttribute.raw_socket).fileno()
        with socket.socket(fileno=os.dup(fd)) as raw:  # a plain socket sends at once
            raw.send(hostile.frame(frames.PING, b"late"))
    await stream.aclose()
    assert outcome == [1001, "end of input"]


async def test_an_evicted_handshake_is_counted_out_as_disconnected() -> None:
    config = server_config(max_pending=1, handshake_timeout=30, http_read_timeout=30)
    async with running_server(config) as server:
        assert server.port
        first, reader, _ = await challenged(server.port)
        # A newcomer finds the pool full; once the first is old enough (a second),
        # the server takes the newcomer and evicts the first.
        second = await hostile.connect(server.port)
        with anyio.fail_after(10):
            assert await reader.next_frame() is None  # evicted: closed
        await wait_for(lambda: server.metrics.connections == 1)
        assert server.metrics.pending_evicted_total == 1
        assert server.metrics.handshakes_failed_total == {("disconnected",): 1}
        await first.aclose()
        await second.aclose()
        await wait_for(lambda: server.metrics.connections == 0)
        assert server.listener.door.admission.pending == 0


async def test_a_head_read_in_pieces() -> None:
    async with running_server() as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        stream = await hostile.connect(server.port)
        reader = hostile.Reader(stream)
        async with stream:
            request = hostile.upgrade_request()
            # Each piece read by the room before the next is sent: three reads.
            await stream.send(request[:10])
            await wait_for(lambda: heads(room) == [request[:10]])
            await stream.send(request[10:60])
            await wait_for(lambda: heads(room) == [request[:60]])
            await stream.send(request[60:])
            head = await reader.head()
            assert head.startswith(b"HTTP/1.1 101"), head[:80]


def taken_in_part(which: Callable[[bytes], bool]) -> Callable[[SocketStream, bytes], bool]:
    """``SocketStream.write_now`` as when the kernel takes only the first 10 bytes of
    the writes ``which`` picks (the rest is queued for an awaited flush)."""
    write_now = SocketStream.write_now

    def partly(self: SocketStream, data: bytes) -> bool:
        if not which(data) or self.backlogged or self.busy:
            return write_now(self, data)
        taken = write_now(self, data[:10])
        if taken:
            self.enqueue(data[10:])
        return taken

    return partly


async def test_a_write_the_kernel_takes_in_part_is_finished_by_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel may take part of a write (here the 101 and the challenge): the room
    # queues the rest and the connection moves to its task, which sends it before
    # anything else, and goes on through the handshake.
    monkeypatch.setattr(SocketStream, "write_now", taken_in_part(lambda data: len(data) > 10))
    async with running_server(server_config(tick_interval=0.1)) as server:
        assert server.port
        stream, reader = await hostile.subscribe(server.port)
        async with stream:
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.SnapshotMessage)


async def test_a_parked_subscribers_pong_the_kernel_takes_in_part_is_finished_by_its_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pong written in the room that the kernel takes only in part: the rest is queued
    # and the connection leaves the room for its task, which sends it; pushes go on.
    async with running_server(server_config(tick_interval=0.05)) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        stream, reader = await hostile.subscribe(server.port)
        async with stream:
            assert len(room) == 1
            partly = taken_in_part(lambda data: len(data) > 10)
            monkeypatch.setattr(SocketStream, "write_now", partly)
            await stream.send(hostile.frame(frames.PING, b"p" * 100))
            with anyio.fail_after(10):
                got = await next_non_push(reader)
                assert got == (frames.PONG, b"p" * 100)
                await wait_for(lambda: len(room) == 0)  # in its task now
                got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.SnapshotMessage)
            assert server.metrics.value("subscribed_clients") == 1


async def test_an_empty_room_does_not_wake(monkeypatch: pytest.MonkeyPatch) -> None:
    # Connections that left keep their deadline entries until their time: the room
    # must not wake for them (a wake-up per connection, for nothing).
    wakes = 0
    serve_ready = Room._serve_ready

    def counted(self: Room) -> int:
        nonlocal wakes
        wakes += 1
        return serve_ready(self)

    monkeypatch.setattr(Room, "_serve_ready", counted)
    config = server_config(http_read_timeout=0.2, handshake_timeout=0.3, tick_interval=60)
    async with running_server(config) as server:
        assert server.port
        clients = [await hostile.subscribe(server.port) for _ in range(N)]
        before = wakes
        await anyio.sleep(0.5)  # past every deadline the clients had: nothing to do
        assert wakes == before
        for stream, _ in clients:
            await stream.aclose()


async def test_a_connection_the_room_cannot_take_gets_a_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    add = Room.add
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def full_once(self: Room, arrival: Arrival) -> None:
        if failures:
            raise failures.pop()
        add(self, arrival)

    monkeypatch.setattr(Room, "add", full_once)
    async with running_server() as server:
        assert server.port
        for _ in range(2):  # the first gets a task, the second the room: both served
            stream, _ = await hostile.subscribe(server.port)
            await stream.aclose()
        assert server.metrics.handshakes_ok_total == 2
    assert "room full (No space left on device)" in caplog.text


async def test_an_authenticated_client_leaves_the_pending_pool_without_a_task() -> None:
    # In a reconnect storm thousands of connections authenticate at once: they must not
    # hold places in the pending pool (newcomers would wait, or evict clients already
    # welcomed), and none of them needs a task to leave it.
    async with running_server() as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        tasks = len(anyio.get_running_tasks())
        stream, reader, challenge = await challenged(server.port)
        async with stream:
            assert server.listener.door.admission.pending == 1
            await stream.send(hostile.frame(frames.TEXT, hostile.proof(challenge)))
            with anyio.fail_after(10):
                got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.Welcome)
            assert server.listener.door.admission.pending == 0
            assert len(room) == 1  # parked: subscribed, and no task was started
            assert len(anyio.get_running_tasks()) == tasks


def held_back(gate: anyio.Event) -> Callable[..., Awaitable[None]]:
    """Listener._run, held back until ``gate`` for a connection leaving the room."""
    run = Listener._run

    async def queued(
        self: Listener,
        arrival: Arrival,
        events: Sequence[Event],
        subscriber: Subscriber | None = None,
    ) -> None:
        try:
            if events or subscriber is not None:
                await gate.wait()
        finally:  # cancelled while held back (the test ended): it still ends the connection
            await run(self, arrival, events, subscriber)

    return queued


async def test_a_new_subscriber_gets_the_next_tick_with_no_task() -> None:
    # The room hands a subscribed connection to the fan-out at once, its welcome first:
    # the next tick reaches it, and it never needed a task.
    async with running_server(server_config(tick_interval=0.05)) as server:
        assert server.port
        tasks = len(anyio.get_running_tasks())
        stream, reader, challenge = await challenged(server.port)
        async with stream:
            await stream.send(hostile.frame(frames.TEXT, hostile.proof(challenge)))
            with anyio.fail_after(10):
                got = await reader.next_frame()
                assert got is not None
                welcome = m.decode(got[1])
                assert isinstance(welcome, m.Welcome)
                got = await reader.next_frame()
            assert got is not None
            push = m.decode(got[1])
            assert isinstance(push, m.SnapshotMessage)
            assert len(anyio.get_running_tasks()) == tasks
            assert server.metrics.handshakes_ok_total == 1


async def test_a_welcome_the_kernel_takes_in_part_joins_the_fan_out_before_its_task_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A welcome not written whole cannot park: the connection needs its task to send
    # the rest. It still leaves the pending pool and joins the fan-out at once, not when
    # that task first runs (in a reconnect storm thousands queue); every push follows
    # the welcome.
    welcome_in_part = taken_in_part(lambda data: b'"welcome"' in data)
    monkeypatch.setattr(SocketStream, "write_now", welcome_in_part)
    gate = anyio.Event()
    monkeypatch.setattr(Listener, "_run", held_back(gate))
    async with running_server(server_config(tick_interval=0.05)) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        stream, reader, challenge = await challenged(server.port)
        async with stream:
            await stream.send(hostile.frame(frames.TEXT, hostile.proof(challenge)))
            await wait_for(lambda: server.metrics.value("subscribed_clients") == 1)
            assert len(room) == 0  # not parked: its task (held back) sends the rest
            assert server.listener.door.admission.pending == 0
            gate.set()
            with anyio.fail_after(10):
                got = await reader.next_frame()
                assert got is not None
                assert isinstance(m.decode(got[1]), m.Welcome)
                got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.SnapshotMessage)


async def test_without_epoll_a_connection_has_its_task_from_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where there is no epoll (macOS, the BSDs), every connection takes the path TLS
    # connections take here: a task from accept on. The same answers either way.
    monkeypatch.setattr(Room, "available", staticmethod(lambda: False))
    config = server_config(tick_interval=0.1, http_read_timeout=0.3)
    async with running_server(config) as server:
        assert server.port
        assert server.listener.room is None
        stream, reader = await hostile.subscribe(server.port)
        async with stream:
            got = await reader.next_frame()
            assert got is not None
            assert isinstance(m.decode(got[1]), m.SnapshotMessage)
        status, _, _ = await http_get(server.port, "/health")
        assert status == 200
        status, _, _ = await http_request(server.port, b"GET /health HTTP/1.1\r\nHost:")
        assert status == 408
        assert server.metrics.handshakes_ok_total == 1


async def test_a_reload_below_a_head_already_read_refuses_it() -> None:
    config = server_config(http_max_request_size=4096)
    async with running_server(config) as server:
        assert server.port
        room = server.listener.room
        assert room is not None
        stream = await hostile.connect(server.port)
        async with stream:
            start = b"GET /health HTTP/1.1\r\nX-Long: " + b"a" * 3000
            await stream.send(start)
            await wait_for(lambda: heads(room) == [start])
            server.reload(server_config(http_max_request_size=1024))
            await stream.send(b"a")  # more of a head already over the new limit
            head = await hostile.Reader(stream).head()
            assert head.startswith(b"HTTP/1.1 400"), head[:40]
        status, _, _ = await http_get(server.port, "/health")  # and the server goes on
        assert status == 200
