"""Trust rules over real sockets: which keys a client trusts, how snapshots are ordered.

One client URL goes through a fault proxy whose target the test switches between
servers (different secrets, different tick intervals), as a DNS change or a load
balancer would, so the client meets each server in turn on the same URL.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from arraycrypto import AuthenticationError, CryptoClient, Keyring, Snapshot, SnapshotError
from arraycrypto.server import Server

from .harness import frames
from .harness.clock import wait_for
from .harness.constants import HOST, OTHER, SECRET
from .harness.proxy import FaultProxy
from .harness.servers import client_config, running_server, server_config

pytestmark = pytest.mark.anyio

OLD, NEW = SECRET, OTHER
OLD_ID, NEW_ID = Keyring(OLD).primary.key_id, Keyring(NEW).primary.key_id


@asynccontextmanager
async def proxy_to(server: Server) -> AsyncIterator[FaultProxy]:
    async with anyio.create_task_group() as tg:
        assert server.port
        proxy = FaultProxy(server.port)
        await tg.start(proxy.run)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()


def switch(proxy: FaultProxy, server: Server) -> None:
    """Point the proxy at another server and drop every connection through it."""
    assert server.port
    proxy.target_port = server.port
    proxy.cut()


def fast(port: int, **overrides: Any) -> Any:
    return client_config(port, **{"connect_timeout": 0.5, "reconnect_max_delay": 0.2, **overrides})


async def test_a_retired_secret_is_never_trusted_to_sign() -> None:
    # Finding 1: someone holding only a retired secret answers on the client's URL. The
    # client must not authenticate it, and must never encrypt under its snapshots.
    async with running_server(server_config(secret_key=OLD)) as attacker:
        assert attacker.port
        config = fast(attacker.port, secret_key=NEW, old_secret_keys=[OLD], snapshot_timeout=1)
        async with CryptoClient(config) as client:
            with pytest.raises((AuthenticationError, SnapshotError)):
                await client.authenticate()
            with pytest.raises((AuthenticationError, SnapshotError)):
                await client.encrypt_message("must not be readable with OLD")
            assert client.snapshot is None
            assert client.last_error is not None
            assert OLD_ID.hex() in client.last_error


async def test_rotation_through_next_secret_keys_and_no_way_back() -> None:
    # The rotation the README describes: clients trust NEW to sign before the server
    # switches to it; once a client saw NEW it never accepts OLD again.
    async with (
        running_server(server_config(secret_key=OLD)) as old,
        running_server(server_config(secret_key=NEW)) as new,
        proxy_to(old) as proxy,
    ):
        config = fast(proxy.port, secret_key=OLD, next_secret_keys=[NEW])
        async with CryptoClient(config) as client:
            seen: list[Snapshot] = []

            async def watch() -> None:
                async for snapshot in client.watch():
                    seen.append(snapshot)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await client.authenticate()
                assert client.snapshot is not None
                assert client.snapshot.key_id == OLD_ID
                switch(proxy, new)  # the server moves to NEW: no refusal, no restart
                await wait_for(lambda: seen and seen[-1].key_id == NEW_ID)
                before = client.last_error
                switch(proxy, old)  # a server still on OLD: the client must not go back
                await wait_for(lambda: client.last_error not in (None, before))
                assert "older" in (client.last_error or "")
                switch(proxy, new)
                await wait_for(lambda: client.state.value == "connected")
                tg.cancel_scope.cancel()
            first_new = next(i for i, s in enumerate(seen) if s.key_id == NEW_ID)
            assert all(s.key_id == NEW_ID for s in seen[first_new:])
            assert Keyring(NEW).decrypt(await client.encrypt_message("x")) == b"x"


async def test_changing_tick_interval_locks_no_one_out() -> None:
    # Finding 2: ticks are floor(time / interval), so doubling the interval halves them.
    # Ordering by tick refused every snapshot of the new server; by timestamp, none.
    async with (
        running_server(server_config(tick_interval=0.05)) as fine,
        running_server(server_config(tick_interval=0.1)) as coarse,
        proxy_to(fine) as proxy,
        CryptoClient(fast(proxy.port)) as client,
    ):
        await client.authenticate()
        assert client.snapshot is not None
        fine_tick = client.snapshot.tick
        switch(proxy, coarse)
        await wait_for(lambda: client.snapshot is not None and client.snapshot.tick < fine_tick)
        assert client.state.value == "connected"
        client.encrypt("still encrypting")


async def test_a_server_sending_only_refused_snapshots_is_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Finding 3: a server whose clock runs 120 s ahead sends snapshots the client must
    # refuse. Only an accepted snapshot proves a server useful: after three tick
    # intervals without one the client moves on to the next URL. Its warnings about the
    # refused snapshots are rate-limited, not one per frame.
    ahead = lambda: time.time() + 120  # noqa: E731
    async with (
        running_server(server_config(tick_interval=0.05), clock=ahead) as skewed,
        running_server(server_config(tick_interval=0.05)) as healthy,
    ):
        assert skewed.port
        assert healthy.port
        good_url = f"ws://{HOST}:{healthy.port}/ws"
        config = fast(skewed.port, server_urls=[good_url], snapshot_timeout=15)
        with caplog.at_level(logging.WARNING, logger="arraycrypto.client"):
            async with CryptoClient(config) as client:
                await client.authenticate()
                assert client.server_url == good_url
    refused = skewed.metrics.pushes_total
    warnings = [r for r in caplog.records if "snapshot" in r.getMessage()]
    assert refused >= 10  # the skewed server pushed many it refused
    assert 1 <= len(warnings) <= 2


async def test_encrypt_message_fails_at_once_when_expired_and_no_connection() -> None:
    # Finding 4: once the cached snapshot expired and no connection is up, every
    # encrypt_message waited snapshot_timeout (here 30 s) before raising.
    clock = FakeClock()
    async with running_server() as server, proxy_to(server) as proxy:
        config = fast(proxy.port, max_drift=5, snapshot_timeout=30)
        async with CryptoClient(config, clock=clock) as client:
            await client.authenticate()
            proxy.target_port = dead_port()  # the server is gone: connections refused
            proxy.cut()
            clock.offset += 60  # and the cached snapshot has long expired
            await wait_for(lambda: client.state.value == "disconnected")
            with anyio.fail_after(3), pytest.raises(SnapshotError, match="expired"):
                await client.encrypt_message("x")
            with pytest.raises(SnapshotError, match="expired"):
                client.encrypt("x")  # the sync call always failed at once


class FakeClock:
    """The wall clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def dead_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def set_interval(value: float) -> Callable[[dict[str, Any]], None]:
    def change(message: dict[str, Any]) -> None:
        if message.get("type") == "challenge":
            for field in [k for k in message if k.startswith("tick_interval")]:
                message[field] = value

    return change


def inject_session(message: dict[str, Any]) -> None:
    if message.get("type") == "welcome":
        message["session"] = "ok\nERROR forged log line \x1b[31m"


@pytest.mark.parametrize(
    "change",
    [set_interval(1e308), set_interval(-1), inject_session],
    ids=["interval-huge", "interval-negative", "session-injection"],
)
async def test_a_relay_cannot_change_handshake_fields(
    change: Callable[[dict[str, Any]], None],
) -> None:
    # Finding 5: over ws:// a relay could rewrite fields no proof covered: an infinite
    # tick_interval (no dead-server detection), a negative one, a session id with
    # newlines and escape codes for the client's log. The whole transcript is proved now.
    async with running_server() as server, proxy_to(server) as proxy:
        proxy.rewrite = lambda chunk: frames.rewrite_text(chunk, change)
        async with CryptoClient(fast(proxy.port, snapshot_timeout=1)) as client:
            with pytest.raises((AuthenticationError, SnapshotError)):
                await client.authenticate()
            assert client.snapshot is None
            assert client.session_id is None
