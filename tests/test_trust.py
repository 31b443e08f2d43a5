"""Trust rules over real sockets: which keys a client trusts, how snapshots are ordered.

One client URL goes through a fault proxy whose target the test switches between
servers (different secrets, different tick intervals), as a DNS change or a load
balancer would, so the client meets each server in turn on the same URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from arraycrypto import AuthenticationError, CryptoClient, Keyring, Snapshot, SnapshotError
from arraycrypto.server import Server

from .harness.clock import wait_for
from .harness.constants import OTHER, SECRET
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
