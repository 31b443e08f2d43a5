"""Ended connections are freed by reference counting alone, of every kind.

The server raises the cycle collector's thresholds (a full collection at 10 000
connections stalls the loop), so anything an ended connection leaves in a reference
cycle piles up for hours. These tests run with the collector **disabled** and count the
server's own objects still alive after many connections ended each way: it must be
the ones still open, and nothing more. (Asking the collector what it finds would see
nothing: it breaks generator cycles before it reports them.)
"""

from __future__ import annotations

import gc
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.protocol import Protocol

from arraycrypto.core.handshake import ServerSession
from arraycrypto.core.server_connection import ServerConnection
from arraycrypto.net.sockets import SocketStream
from arraycrypto.net.tls import ServerTLSStream
from arraycrypto.server.fanout import Subscriber

from .harness import frames, hostile
from .harness.constants import HOST
from .harness.peers import RawClient
from .harness.servers import running_server, server_config, with_tls

pytestmark = pytest.mark.anyio

#: The server's per-connection objects; websockets' protocol is counted by class name
#: (the server's framing subclass), so the test's own client objects do not count.
OURS = (ServerConnection, ServerSession, SocketStream, ServerTLSStream, Subscriber)


def watched() -> frozenset[type]:
    """The exact classes counted: OURS, their subclasses, and the server's framing."""
    found: set[type] = set()
    pending: list[type] = [*OURS, Protocol]
    while pending:
        cls = pending.pop()
        if cls in OURS or cls.__name__ == "_Framing" or any(issubclass(cls, o) for o in OURS):
            found.add(cls)
        pending.extend(cls.__subclasses__())
    return frozenset(found)


def alive(known: frozenset[int] = frozenset()) -> dict[str, int]:
    """Instances of the server's per-connection types, without collecting anything.

    ``known``: ids of objects that were there before (another test's, still referenced)
    and are not counted.
    """
    # One set lookup per object: each look walks every object in the process (hundreds
    # of thousands in a test process), so an isinstance test and a name per object cost
    # twice as much.
    types = watched()
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        cls = type(obj)
        if cls in types and id(obj) not in known:
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
    return counts


def present() -> frozenset[int]:
    """Ids of the server's per-connection objects alive now."""
    types = watched()
    return frozenset(id(obj) for obj in gc.get_objects() if type(obj) in types)


@asynccontextmanager
async def collector_off() -> AsyncIterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


#: What a waiting kind calls once its connection does nothing but wait for the server's
#: deadline: the test starts the next connection then, not before.
Ready = Callable[[], None]
#: One way for a connection to end: (port, TLS context or None, ready).
Kind = Callable[[int, Any, Ready], Awaitable[None]]


async def clean_close(port: int, context: Any, ready: Ready) -> None:
    client = await RawClient.connect(port, ssl_context=context)
    await client.handshake()
    client.protocol.send_close(1000, "bye")
    await client.flush()
    await client.wait_closed()


async def fin(port: int, context: Any, ready: Ready) -> None:
    client = await RawClient.connect(port, ssl_context=context)
    await client.handshake()
    await client.aclose()


async def rst(port: int, context: Any, ready: Ready) -> None:
    stream, _ = await hostile.subscribe(port, context)
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await anyio.aclose_forcefully(stream)  # SO_LINGER 0: the kernel sends RST


async def handshake_timeout(port: int, context: Any, ready: Ready) -> None:
    stream = await hostile.connect(port, context)
    reader = hostile.Reader(stream)
    async with stream:
        await hostile.upgrade(stream, reader)
        ready()  # from here it only waits for the server's handshake deadline
        while (got := await reader.next_frame()) is not None and got[0] != frames.CLOSE:
            pass


def http_request(status: int) -> Kind:
    path = b"/health" if status == 200 else b"/nowhere"

    async def run(port: int, context: Any, ready: Ready) -> None:
        stream = await hostile.connect(port, context)
        async with stream:
            await stream.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await hostile.Reader(stream).head()
            assert head.startswith(b"HTTP/1.1 %d" % status), head[:40]

    return run


async def slow_head(port: int, context: Any, ready: Ready) -> None:
    stream = await hostile.connect(port, context)
    async with stream:
        await stream.send(b"GET /health HTTP/1.1\r\n")  # never finished: 408
        ready()  # from here it only waits for the server's read deadline
        head = await hostile.Reader(stream).head()
        assert head.startswith(b"HTTP/1.1 408"), head[:40]


async def failed_tls(port: int, context: Any, ready: Ready) -> None:
    stream = await anyio.connect_tcp(HOST, port)
    async with stream:  # a ClientHello cut short, then gone: the TLS handshake fails
        await stream.send(b"\x16\x03\x01\x00")


KINDS: dict[str, Kind] = {
    "clean close": clean_close,
    "FIN": fin,
    "RST": rst,
    "HTTP 200": http_request(200),
    "HTTP 404": http_request(404),
    "TLS failure": failed_tls,
}
#: The kinds answered at once, with no subscriber and no deadline to race.
ANSWERED = frozenset({"HTTP 200", "HTTP 404", "TLS failure"})
#: The kinds that end by a server deadline: they mostly wait, so they overlap.
WAITING: dict[str, Kind] = {
    "handshake timeout": handshake_timeout,
    "HTTP 408": slow_head,
}


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("kind", [*KINDS, *WAITING])
async def test_ended_connections_leave_nothing_behind(kind: str, tls: bool, tmp_path: Path) -> None:
    if kind == "TLS failure" and not tls:
        pytest.skip("a plain port has no TLS handshake to fail")
    waits = kind in WAITING
    run = WAITING[kind] if waits else KINDS[kind]
    # 400 over plain TCP, 150 over TLS (both ends' handshakes run in this process). One
    # object kept per connection shows as a count at any number; hundreds give the rare
    # paths their turn: a subscriber's peer gone mid-write, a pinger round or a tick
    # meeting it half-closed, a deadline racing a read. The pinger runs a round every
    # 50 ms (interval 0.5 s, ten slots), so it looks at live subscribers during the
    # test: a round's loop variable once kept the last client alive after every client
    # had gone, which 100 connections at the default 2 s rounds did not show (and
    # 300/100 showed in 11 runs of 12). The HTTP answers and the failed TLS handshakes
    # race nothing (their clients read every byte, or send their last one, before they
    # go): 100 (50 over TLS) of those.
    count = (50 if tls else 100) if kind in ANSWERED else (150 if tls else 400)
    # The deadline kinds start one connection once the previous one is only waiting, so
    # no connection's handshake queues behind a crowd of others and the deadline can be
    # short without a loaded machine ending a connection before its upgrade.
    short = (1.0 if tls else 0.5) if waits else 10.0
    config = server_config(
        handshake_timeout=short,
        http_read_timeout=short,
        tick_interval=0.05,
        ping_interval=0.5,
        ping_timeout=10.0,
    )
    context = None
    if tls:
        config, context = with_tls(config, tmp_path)
    # The count can only see what it looks for: the framing class is found by name.
    assert {cls.__name__ for cls in watched()} >= {"_Framing", *(cls.__name__ for cls in OURS)}
    async with running_server(config) as server, collector_off():
        assert server.port
        port = server.port
        known = present()  # not this test's: whatever other tests left referenced
        await run(port, context, lambda: None)  # warm up: caches, lazy imports
        await settle(server, known)
        limit = anyio.Semaphore(200 if waits else 50)  # descriptors: two per connection

        async def one(ready: anyio.Event) -> None:
            async with limit:
                await run(port, context, ready.set)
            ready.set()

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    ready = anyio.Event()
                    tg.start_soon(one, ready)
                    if waits:
                        await ready.wait()
            left = await settle(server, known)
    # Every connection ended, so none of their objects may be alive: a reference cycle
    # would keep one set per connection ({'_Framing': 400, ...}).
    assert left == {}, f"{kind}: {left} alive after {count} ended connections"


async def settle(server: Any, known: frozenset[int] = frozenset()) -> dict[str, int]:
    """Wait until every connection has ended and its task let go of its objects.

    Returns what is still alive then (nothing, unless something leaks).
    """
    with anyio.fail_after(20):
        while server.metrics.connections:
            await anyio.sleep(0.01)
    # The last tasks finish their finally blocks. Each look walks every object in the
    # process (tens of milliseconds of CPU), so the looks back off.
    pause = 0.01
    with anyio.move_on_after(2):
        while left := alive(known):
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.4)
        return left
    return alive(known)
