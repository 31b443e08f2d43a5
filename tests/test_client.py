"""CryptoClient against the real server on 127.0.0.1, under asyncio and trio."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from arraycrypto import (
    AuthenticationError,
    ConfigError,
    ConnectionState,
    CryptoClient,
    CryptoError,
    DecryptionError,
    ExpiredError,
    Keyring,
    ServerConfig,
    SnapshotError,
    SyncCryptoClient,
    save_config,
)

from .harness.clock import wait_for
from .harness.constants import HOST, OTHER, SECRET
from .harness.servers import ServeProcess, client_config, running_server, server_config
from .harness.streams import Sink, Source

pytestmark = pytest.mark.anyio
EXAMPLES = Path(__file__).parent / "seed_examples"


async def test_encrypt_decrypt_str_bytes_and_megabytes() -> None:
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            await client.authenticate()
            assert client.state is ConnectionState.CONNECTED
            token = await client.encrypt_message("Your secret message")
            assert await client.decrypt_message(token) == b"Your secret message"
            token = await client.encrypt_message(b"\x00\xffbinary")
            assert await client.decrypt_message(token) == b"\x00\xffbinary"
            big = os.urandom(3 * 1024 * 1024)
            token = await client.encrypt_message(big, b"ad")
            assert await client.decrypt_message(token, b"ad") == big
            assert client.decrypt(client.encrypt("sync", b"x"), b"x") == b"sync"
            with pytest.raises(DecryptionError):
                await client.decrypt_message(token[:-1], b"ad")
            with pytest.raises(DecryptionError):
                await client.decrypt_message(b"foreign data")


async def test_large_payloads_leave_the_event_loop_running() -> None:
    # 32 MiB takes ~30 ms of AES-GCM: done inline, no other task would run meanwhile.
    # Count what does run while the client works in its thread.
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            await client.authenticate()
            data = os.urandom(32 * 1024 * 1024)
            beats = 0
            done = False

            async def heartbeat() -> None:
                nonlocal beats
                while not done:
                    await anyio.sleep(0)
                    beats += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(heartbeat)
                await anyio.sleep(0)
                start = beats
                token = await client.encrypt_message(data)
                during_encrypt = beats - start
                start = beats
                assert await client.decrypt_message(token) == data
                during_decrypt = beats - start
                done = True
            assert during_encrypt > 1
            assert during_decrypt > 1


async def test_ciphertext_crosses_clients_and_decrypts_offline() -> None:
    async with running_server() as server:
        assert server.port
        async with (
            CryptoClient(client_config(server.port)) as a,
            CryptoClient(client_config(server.port)) as b,
        ):
            token = await a.encrypt_message("shared", b"ctx")
            assert await b.decrypt_message(token, b"ctx") == b"shared"
    # no server at all: the keyring alone decrypts it
    assert Keyring(SECRET).decrypt(token, b"ctx") == b"shared"


async def test_ttl_on_decrypt() -> None:
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            token = await client.encrypt_message("x")
            assert await client.decrypt_message(token, ttl=60) == b"x"
            await anyio.sleep(0.05)
            with pytest.raises(SnapshotError, match="ttl"):
                await client.decrypt_message(token, ttl=0.001)


async def test_wrong_secret_is_an_authentication_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="arraycrypto.server")
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port, secret_key=OTHER)) as client:
            with pytest.raises(AuthenticationError):
                await client.authenticate()
            with pytest.raises(AuthenticationError):
                await client.encrypt_message("x")
            assert client.state is not ConnectionState.CONNECTED
        # The server's side of it: not just "closed", but which mistake it likely is.
        with anyio.fail_after(5):
            while server.metrics.connections:
                await anyio.sleep(0.01)
        failed = server.metrics.handshakes_failed_total
        assert set(failed) == {("rejected",)}
        lines = [r.getMessage() for r in caplog.records if "handshake failed" in r.getMessage()]
        assert lines
        assert all("does not trust this server's key" in line for line in lines)
        assert all("secret_key" in line for line in lines)


async def test_a_next_secret_signs_an_old_one_only_decrypts() -> None:
    # The server already moved to a secret the client trusts ahead of its primary
    # (next_secret_keys): the client proves and verifies with it. The same secret as
    # an old (retired) one is never trusted to sign: see tests/test_trust.py.
    async with running_server() as server:
        assert server.port
        config = client_config(server.port, secret_key=OTHER, next_secret_keys=[SECRET])
        async with CryptoClient(config) as client:
            await client.authenticate()
            token = await client.encrypt_message("x")
            assert Keyring(SECRET).decrypt(token) == b"x"


async def test_watch_yields_increasing_verified_snapshots() -> None:
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            ticks = []
            with anyio.fail_after(10):
                async for snapshot in client.watch():
                    assert Keyring(SECRET).verify(snapshot) is not None
                    ticks.append(snapshot.tick)
                    if len(ticks) == 4:
                        break
            assert ticks == sorted(set(ticks))
            assert client.snapshot is not None
            assert client.snapshot.tick >= ticks[-1]


async def test_watch_ends_when_the_client_closes() -> None:
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            seen = 0
            with anyio.fail_after(10):
                async for _ in client.watch():
                    seen += 1
                    if seen == 2:
                        await client.close()
            assert seen == 2
            assert client.closed


async def test_failover_to_the_second_url() -> None:
    # A port that refuses connections: bind a listener, note its port, close it.
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    dead_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    async with running_server() as server:
        assert server.port
        config = client_config(
            dead_port, server_urls=[f"ws://{HOST}:{server.port}/ws"], reconnect_max_delay=0.2
        )
        async with CryptoClient(config) as client:
            await client.authenticate()
            assert client.server_url == f"ws://{HOST}:{server.port}/ws"


async def test_with_no_server_encrypt_fails_at_once_and_decrypt_works() -> None:
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    config = client_config(port, snapshot_timeout=30, reconnect_max_delay=0.1)
    async with CryptoClient(config) as client:
        with pytest.raises(SnapshotError, match="no snapshot"):
            client.encrypt("x")  # sync: never waits
        # The connection is refused outright: no attempt brings a snapshot, so it fails
        # at once instead of waiting snapshot_timeout (30 s).
        with anyio.fail_after(5), pytest.raises(SnapshotError, match="refused"):
            await client.encrypt_message("x")
        # decryption still works without any server
        assert (
            client.decrypt(
                Keyring(SECRET).encrypt(Keyring(SECRET).new_snapshot(1, bytes(16), 1), b"m")
            )
            == b"m"
        )


async def test_errors_say_why_there_is_no_snapshot() -> None:
    async with running_server() as server:  # signs with 16-byte signatures
        assert server.port
        config = client_config(server.port, hash_size=32, snapshot_timeout=0.5)
        async with CryptoClient(config) as client:
            with pytest.raises(SnapshotError, match="signature shorter than hash_size"):
                await client.authenticate()
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    async with CryptoClient(client_config(port, snapshot_timeout=0.5)) as client:
        with pytest.raises(SnapshotError, match="last connection error"):
            await client.authenticate()


async def test_outside_context_is_a_clear_error() -> None:
    client = CryptoClient(client_config(1))
    with pytest.raises(CryptoError, match="async with"):
        client.encrypt("x")
    with pytest.raises(CryptoError, match="async with"):
        await client.encrypt_message("x")
    assert "secret" not in repr(client).lower() or "<hidden>" in repr(client)


async def test_client_from_config_file(tmp_path: Path) -> None:
    async with running_server() as server:
        assert server.port
        path = tmp_path / "client_config.json"
        save_config(path, client_config(server.port))
        async with CryptoClient(path) as client:
            await client.authenticate()
            assert await client.decrypt_message(await client.encrypt_message("f")) == b"f"
        with pytest.raises(ConfigError):
            CryptoClient(tmp_path / "missing.json")


async def test_dead_server_detected_by_silence() -> None:
    # A server that stops pushing snapshots looks dead after ~3 tick intervals, even
    # while it keeps answering and sending pings (every 0.1 s here).
    config = server_config(tick_interval=0.2, ping_interval=0.1, ping_timeout=5)
    async with running_server(config) as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            await client.authenticate()
            first_session = client.session_id
            server.fanout.push = lambda frame: None  # type: ignore[method-assign]  # no pushes
            await wait_for(lambda: client.session_id != first_session, timeout=10)
            await client.authenticate()


# -- the real server process: restart, outage --------------------------------------------


def write_server_config(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, tick_interval=0.1, **overrides))
    return path


async def test_server_restart_is_transparent(tmp_path: Path, anyio_backend: str) -> None:
    path = write_server_config(tmp_path)
    with ServeProcess("--config", str(path), "--backend", anyio_backend) as server:
        port = server.port
        async with CryptoClient(client_config(port, max_drift=30)) as client:
            await client.authenticate()
            before = await client.encrypt_message("before")
            first_tick = client.snapshot.tick if client.snapshot else 0
            server.kill()
            await wait_for(lambda: client.state is not ConnectionState.CONNECTED)
            # the cached snapshot keeps encryption going while the server is away
            during = client.encrypt("during")
            with ServeProcess("--config", str(path), port=port):
                await wait_for(lambda: client.state is ConnectionState.CONNECTED)
                await wait_for(
                    lambda: client.snapshot is not None and client.snapshot.tick > first_tick + 1
                )
                after = await client.encrypt_message("after")
            for token, text in ((before, b"before"), (during, b"during"), (after, b"after")):
                assert await client.decrypt_message(token) == text


async def test_outage_longer_than_max_drift_then_recovery(tmp_path: Path) -> None:
    path = write_server_config(tmp_path)
    with ServeProcess("--config", str(path)) as server:
        port = server.port
        config = client_config(port, max_drift=1.0, snapshot_timeout=0.2)
        async with CryptoClient(config) as client:
            await client.authenticate()
            server.kill()
            await wait_for(lambda: client.state is not ConnectionState.CONNECTED)
            assert client.snapshot is not None
            stamp = client.snapshot.timestamp / 1000

            def age() -> float:
                return time.time() - stamp

            while age() < 0.8:
                client.encrypt("x")  # the cached snapshot serves until max_drift
                await anyio.sleep(0.05)
            await anyio.sleep(max(0.0, 1.1 - age()))
            with pytest.raises(SnapshotError, match=r"expired snapshot.*unreachable for"):
                client.encrypt("x")
            with pytest.raises(SnapshotError, match="expired"):
                await client.encrypt_message("x")
            with ServeProcess("--config", str(path), port=port):
                await wait_for(lambda: client.state is ConnectionState.CONNECTED)
                token = await client.encrypt_message("back")
                assert client.decrypt(token) == b"back"


# -- SyncCryptoClient --------------------------------------------------------------------


def test_sync_client_from_eight_threads(tmp_path: Path) -> None:
    path = write_server_config(tmp_path)
    with (
        ServeProcess("--config", str(path)) as server,
        SyncCryptoClient(client_config(server.port)) as client,
    ):
        client.authenticate()
        errors: list[BaseException] = []
        results: dict[int, int] = {}

        def work(n: int) -> None:
            try:
                for i in range(200):
                    data = f"{n}-{i}".encode()
                    assert client.decrypt_message(client.encrypt_message(data)) == data
                results[n] = 200
            except BaseException as exc:  # collected and re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert results == {n: 200 for n in range(8)}


# -- the seed's README examples ----------------------------------------------------------


def run_example(
    name: str, cwd: Path, *args: str, text: str | None = None
) -> subprocess.CompletedProcess[str]:
    source = text if text is not None else (EXAMPLES / name).read_text()
    script = cwd / name
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_seed_example_with_config_file(tmp_path: Path) -> None:
    path = write_server_config(tmp_path)
    with ServeProcess("--config", str(path)) as server:
        port = server.port
        save_config(tmp_path / "client_config.json", client_config(port))
        result = run_example("example_file_config.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Your secret message\n"


def test_seed_example_with_direct_config(tmp_path: Path) -> None:
    result = run_example("example_direct_config.py", tmp_path)
    assert result.returncode == 1
    assert "ConfigError" in result.stderr
    assert "secret_key" in result.stderr
    # With a 16-byte key and nothing listening on :8000 the example, whose body is
    # `pass`, enters and leaves the client cleanly.
    source = (EXAMPLES / "example_direct_config.py").read_text()
    fixed = source.replace('b"your_secret_key"', 'b"your_secret_key!"')
    assert fixed != source
    result = run_example("example_direct_config.py", tmp_path, text=fixed)
    assert result.returncode == 0, result.stderr


def test_seed_error_handling_example(tmp_path: Path) -> None:
    path = write_server_config(tmp_path)
    with ServeProcess("--config", str(path)) as server:
        port = server.port
        good, bad = tmp_path / "good.json", tmp_path / "bad.json"
        save_config(good, client_config(port))
        save_config(bad, client_config(port, secret_key=OTHER))
        ok = run_example("example_errors.py", tmp_path, str(good))
        failed = run_example("example_errors.py", tmp_path, str(bad))
        expired = run_example("example_errors.py", tmp_path, str(_unreachable_config(tmp_path)))
    assert (ok.returncode, ok.stdout) == (0, ""), ok.stderr
    assert failed.stdout == "Authentication failed\n", failed.stderr
    assert expired.stdout == "Invalid or expired snapshot\n", expired.stderr


def _unreachable_config(tmp_path: Path) -> Path:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    path = tmp_path / "unreachable.json"
    save_config(path, client_config(port, snapshot_timeout=0.5))
    return path


async def test_expiry_set_by_the_sender_is_enforced_by_every_reader() -> None:
    clock = [time.time()]
    async with running_server() as server:
        assert server.port
        config = client_config(server.port, max_drift=30)
        async with CryptoClient(config, clock=lambda: clock[0]) as client:
            await client.authenticate()
            token = client.encrypt(b"for an hour", expires_in=3600)
            big = await client.encrypt_message(os.urandom(2 << 20), expires_in=3600)
            assert client.decrypt(token) == b"for an hour"
            assert len(await client.decrypt_message(big)) == 2 << 20
            clock[0] += 3600 + 61  # past the expiry and any max_drift tolerance (30, 60)
            with pytest.raises(ExpiredError, match="expired at"):
                client.decrypt(token)
            with pytest.raises(ExpiredError):
                await client.decrypt_message(big)
            # no ttl to remember on the reading side: the keyring alone refuses it too
            with pytest.raises(ExpiredError):
                Keyring(SECRET).decrypt(token, now_ms=int(clock[0] * 1000))


async def test_streams_through_the_client() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    async with running_server() as server:
        assert server.port
        async with CryptoClient(client_config(server.port)) as client:
            await client.authenticate()
            sealed = Sink(keep=True)
            size = await client.encrypt_stream(Source(0, data=data), sealed, b"ad")
            assert size == len(data)
            plain = Sink(keep=True)
            await client.decrypt_stream(Source(0, data=sealed.value()), plain, b"ad")
            assert plain.value() == data
            with pytest.raises(DecryptionError):
                await client.decrypt_stream(Source(0, data=sealed.value()[:-1]), Sink(), b"ad")


def test_sync_client_files(tmp_path: Path) -> None:
    import io

    path = write_server_config(tmp_path)
    data = os.urandom(1_500_000)
    with (
        ServeProcess("--config", str(path)) as server,
        SyncCryptoClient(client_config(server.port)) as client,
    ):
        client.authenticate()
        sealed = io.BytesIO()
        assert client.encrypt_file(io.BytesIO(data), sealed, expires_in=60) == len(data)
        back = io.BytesIO()
        assert client.decrypt_file(io.BytesIO(sealed.getvalue()), back) == len(data)
        assert back.getvalue() == data
