"""Faults between client and server: cut, black-hole, delay, restore; server killed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from arraycrypto import (
    ConnectionState,
    CryptoClient,
    CryptoConfig,
    Keyring,
    ServerConfig,
    SnapshotError,
    save_config,
)

from .harness.clock import wait_for
from .harness.constants import HOST, SECRET
from .harness.proxy import FaultProxy
from .harness.servers import ServeProcess, client_config, running_server

pytestmark = pytest.mark.anyio


def config_via(port: int, **overrides: Any) -> CryptoConfig:
    """Fail fast: a short connect timeout and backoff cap, so faults show quickly."""
    return client_config(port, **{"connect_timeout": 0.5, "reconnect_max_delay": 0.3, **overrides})


async def test_cut_connections_are_reestablished() -> None:
    async with running_server() as server, anyio.create_task_group() as tg:
        assert server.port
        proxy = FaultProxy(server.port)
        await tg.start(proxy.run)
        async with CryptoClient(config_via(proxy.port)) as client:
            await client.authenticate()
            sessions = [client.session_id]
            for _ in range(3):
                proxy.cut()
                await wait_for(lambda: client.session_id not in (*sessions, None))
                sessions.append(client.session_id)
                client.encrypt("still going")  # the cached snapshot never stopped serving
            assert proxy.accepted >= 4
            await client.authenticate()
        tg.cancel_scope.cancel()


async def test_black_hole_is_detected_and_fails_over() -> None:
    async with running_server() as server, anyio.create_task_group() as tg:
        assert server.port
        proxy = FaultProxy(server.port)
        await tg.start(proxy.run)
        direct = f"ws://{HOST}:{server.port}/ws"
        async with CryptoClient(config_via(proxy.port, server_urls=[direct])) as client:
            await client.authenticate()
            assert client.server_url == f"http://{HOST}:{proxy.port}"
            # Established and new connections now go silent: no RST, no FIN.
            proxy.mode = "blackhole"
            started = time.monotonic()
            await wait_for(lambda: client.server_url == direct, timeout=15)
            # three tick intervals of silence (0.3 s) + 1 s margin, then the next URL
            assert time.monotonic() - started < 10
            await client.authenticate()
        tg.cancel_scope.cancel()


async def test_delay_is_tolerated() -> None:
    async with running_server() as server, anyio.create_task_group() as tg:
        assert server.port
        proxy = FaultProxy(server.port)
        proxy.delay = 0.2
        await tg.start(proxy.run)
        async with CryptoClient(config_via(proxy.port, connect_timeout=5.0)) as client:
            await client.authenticate()
            ticks = []
            with anyio.fail_after(10):
                async for snapshot in client.watch():
                    ticks.append(snapshot.tick)
                    if len(ticks) == 5:
                        break
            assert ticks == sorted(set(ticks))
            assert client.decrypt(client.encrypt("late but fine")) == b"late but fine"
        tg.cancel_scope.cancel()


async def test_restore_after_black_hole() -> None:
    async with running_server() as server, anyio.create_task_group() as tg:
        assert server.port
        proxy = FaultProxy(server.port)
        await tg.start(proxy.run)
        async with CryptoClient(config_via(proxy.port, max_drift=30)) as client:
            await client.authenticate()
            proxy.mode = "blackhole"
            await wait_for(lambda: client.state is not ConnectionState.CONNECTED)
            client.encrypt("cached snapshot still valid")
            proxy.mode = "forward"
            proxy.cut()  # drop the black-holed attempts so the client retries at once
            await wait_for(lambda: client.state is ConnectionState.CONNECTED, timeout=15)
            await client.authenticate()
        tg.cancel_scope.cancel()


async def test_server_killed_and_restarted_while_clients_encrypt(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, tick_interval=0.1))
    max_drift = 5.0
    made: list[tuple[bytes, bytes]] = []
    failures_while_fresh = 0
    with ServeProcess("--config", str(path)) as server:
        port = server.port
        configs = [config_via(port, max_drift=max_drift) for _ in range(10)]
        async with anyio.create_task_group() as tg:
            clients = [CryptoClient(c) for c in configs]
            for c in clients:
                await tg.start(_enter, c)
            for c in clients:
                await c.authenticate()

            async def encrypt_all(seconds: float) -> None:
                nonlocal failures_while_fresh
                deadline = time.monotonic() + seconds
                n = 0
                while time.monotonic() < deadline:
                    for c in clients:
                        data = f"{n}".encode()
                        n += 1
                        snap = c.snapshot
                        try:
                            made.append((c.encrypt(data), data))
                        except SnapshotError:
                            fresh = snap and time.time() * 1000 - snap.timestamp < max_drift * 1000
                            failures_while_fresh += bool(fresh)
                    await anyio.sleep(0.01)

            await encrypt_all(0.5)
            server.kill()
            await encrypt_all(1.0)  # the server is down
            with ServeProcess("--config", str(path), port=port):
                started = time.monotonic()
                await wait_for(
                    lambda: all(c.state is ConnectionState.CONNECTED for c in clients),
                    timeout=15,
                )
                reconnect_s = time.monotonic() - started
                await encrypt_all(0.5)
            tg.cancel_scope.cancel()
    assert failures_while_fresh == 0
    assert reconnect_s < 10
    assert len(made) > 100
    ring = Keyring(SECRET)
    assert all(ring.decrypt(token) == data for token, data in made)


async def _enter(client: CryptoClient, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async with client:
        task_status.started()
        await anyio.sleep_forever()
