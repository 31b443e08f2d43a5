"""Operations: reload without dropping anyone, graceful drain, workers, one truth per tick."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import trustme

from arraycrypto import (
    ConfigError,
    CryptoClient,
    CryptoConfig,
    Keyring,
    ServerConfig,
    save_config,
)
from arraycrypto.core import messages as m
from arraycrypto.core.server_connection import ServerPhase
from arraycrypto.server import listener

from .harness import frames, hostile
from .harness.cli import cli
from .harness.clock import wait_for
from .harness.constants import HOST, OTHER, RFC_6455_KEY, SECRET
from .harness.http import http_get, parse_response
from .harness.peers import RawClient
from .harness.proc import alive
from .harness.servers import (
    ServeProcess,
    client_config,
    running_server,
    server_config,
    trusting,
    with_tls,
)

pytestmark = pytest.mark.anyio

OLD, NEW = SECRET, OTHER
NEW_ID = Keyring(NEW).primary.key_id


def write(path: Path, **overrides: Any) -> None:
    base: dict[str, Any] = {"secret_key": OLD, "tick_interval": 0.1}
    save_config(path, ServerConfig(**{**base, **overrides}))


async def test_sighup_rotates_the_secret_without_dropping_anyone(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    write(path)
    with ServeProcess("--config", str(path)) as server:
        config = client_config(server.port, secret_key=OLD, next_secret_keys=[NEW])
        async with CryptoClient(config) as client:
            await client.authenticate()
            session = client.session_id
            before = await client.encrypt_message("before")
            write(path, secret_key=NEW)
            server.signal(signal.SIGHUP)
            await wait_for(lambda: client.snapshot is not None and client.snapshot.key_id == NEW_ID)
            assert client.session_id == session  # the same connection all along
            after = await client.encrypt_message("after")
            # A broken config is refused in one line; the running one stays in force.
            path.write_text('{"secret_key": "not base64!"}')
            server.signal(signal.SIGHUP)
            await wait_for(lambda: "reload failed" in server.output())
            status, _, _ = await http_get(server.port, "/health")
            assert status == 200
            assert client.session_id == session
        ring = Keyring(NEW, old=[OLD])
        assert ring.decrypt(before) == b"before"
        assert ring.decrypt(after) == b"after"
        assert server.output().count("reload failed") == 1


async def test_reload_refuses_what_needs_a_restart() -> None:
    async with running_server() as server:
        assert server.port
        moved = msgspec.structs.replace(server.config, port=server.port + 1)
        with pytest.raises(ConfigError, match="`port` changed"):
            server.reload(moved)
        assert server.config.port == 0  # the old config still in force
        # Turning TLS on names the fields an operator wrote, not an internal name.
        pem = str(Path(__file__).parent / "no-such.pem")
        with_tls = msgspec.structs.replace(server.config, tls_certfile=pem, tls_keyfile=pem)
        with pytest.raises(ConfigError, match=r"TLS turned on .`tls_certfile`, `tls_keyfile`."):
            server.reload(with_tls)
        tighter = msgspec.structs.replace(server.config, max_connections=7, write_timeout=1.0)
        server.reload(tighter)
        assert server.listener.door.admission.max_connections == 7


async def test_certificate_rotation_by_reload(tmp_path: Path) -> None:
    def issue(name: str) -> tuple[Path, ssl.SSLContext]:
        ca = trustme.CA()
        pem = tmp_path / f"{name}.pem"
        ca.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
        return pem, trusting(ca)

    first, trusts_first = issue("first")
    second, trusts_second = issue("second")
    config = server_config(tls_certfile=str(first), tls_keyfile=str(first))
    async with running_server(config) as server:
        assert server.port
        old = await RawClient.connect(server.port, ssl_context=trusts_first)
        await old.handshake()
        rotated = msgspec.structs.replace(config, tls_certfile=str(second), tls_keyfile=str(second))
        server.reload(rotated)
        new = await RawClient.connect(server.port, ssl_context=trusts_second)
        await new.handshake()
        with pytest.raises(ssl.SSLCertVerificationError):
            await RawClient.connect(server.port, ssl_context=trusts_first)
        # The connection made before the rotation goes on receiving every tick.
        assert isinstance(await old.recv_message(), m.SnapshotMessage)
        await old.aclose()
        await new.aclose()


async def test_drain_spreads_the_goodbyes_and_turns_health_away() -> None:
    async with running_server(server_config(tick_interval=0.1)) as server:
        assert server.port
        clients = [await RawClient.connect(server.port) for _ in range(10)]
        for client in clients:
            await client.handshake()
        closed_at: list[float] = []

        async def wait_goodbye(client: RawClient) -> None:
            close = await client.wait_closed(timeout=10)
            assert close is not None
            assert close.code == 1001
            closed_at.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(wait_goodbye, client)
            tg.start_soon(server.drain, 1.0)
            await wait_for(lambda: server.draining)
            status, _, body = await http_get(server.port, "/health")
            assert (status, json.loads(body)["status"]) == (503, "draining")
            late = await anyio.connect_tcp(HOST, server.port)
            async with late:  # a new WebSocket client is turned away too
                await late.send(hostile.UPGRADE.format(host=HOST, key=RFC_6455_KEY).encode())
                data = b""
                with anyio.fail_after(5):
                    while b"\r\n\r\n" not in data:
                        data += await late.receive()
            assert parse_response(data)[0] == 503
        # Not all at once: the goodbyes are spread over the window (0.8 s of 1 s here).
        assert max(closed_at) - min(closed_at) >= 0.3


async def test_sigterm_drains_then_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    write(path, drain_seconds=1.0)
    with ServeProcess("--config", str(path)) as server:
        clients = [await RawClient.connect(server.port) for _ in range(4)]
        for client in clients:
            await client.handshake(Keyring(OLD))
        server.signal(signal.SIGTERM)
        await wait_for(lambda: "draining" in server.output())
        status, _, _ = await http_get(server.port, "/health")
        assert status == 503
        for client in clients:
            close = await client.wait_closed(timeout=10)
            assert close is not None
            assert close.code == 1001
        assert server.wait(timeout=10) == 0


async def test_workers_share_the_port_and_the_metrics(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    write(path)
    with ServeProcess("--config", str(path), "--workers", "2") as server:
        await wait_for(lambda: server.output().count("listening on") == 2, timeout=20)
        # As a single server does (README): which file is in force, said once.
        assert server.output().count(f"using config {path.resolve()}") == 1
        clients = [await RawClient.connect(server.port) for _ in range(40)]
        for client in clients:
            await client.handshake(Keyring(OLD))
        # Whichever worker answers, /metrics shows both, each under its label, after
        # their next publication (every second): they sum to every client.

        async def both_sum_to_all() -> bool:
            _, _, body = await http_get(server.port, "/metrics")
            lines = [
                line
                for line in body.decode().splitlines()
                if line.startswith("arraycrypto_subscribed_clients{")
            ]
            return len(lines) == 2 and sum(float(x.rsplit(" ", 1)[1]) for x in lines) == 40

        with anyio.fail_after(10):
            while not await both_sum_to_all():
                await anyio.sleep(0.2)
        # The same snapshot from either worker for a tick: one truth per tick.
        bodies: dict[int, set[bytes]] = {}
        for _ in range(10):
            _, _, body = await http_get(server.port, "/snapshot")
            bodies.setdefault(json.loads(body)["tick"], set()).add(body)
        assert all(len(seen) == 1 for seen in bodies.values())
        for client in clients:
            await client.aclose()
        # SIGHUP reaches every worker.
        server.signal(signal.SIGHUP)
        await wait_for(lambda: server.output().count("reloaded config") == 2)
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0


async def test_a_second_supervisor_cannot_join_a_port_in_use(tmp_path: Path) -> None:
    # Found by following the README as a new operator: a second `serve --workers` on a
    # port that a first one serves (another directory, another secret) started without
    # a word, its workers in the same SO_REUSEPORT group, and the kernel spread new
    # clients over both servers: 3 of 8 snapshots came signed with a key the first
    # server's clients do not trust.
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    write(first)
    write(second, secret_key=NEW)
    # No ARRAYCRYPTO_ variable of the test's environment may add a line of its own.
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("ARRAYCRYPTO_")}
    with ServeProcess("--config", str(first), "--workers", "2") as server:
        await wait_for(lambda: server.output().count("listening on") == 2, timeout=20)
        result = await anyio.to_thread.run_sync(
            lambda: cli(
                "serve",
                "--config",
                str(second),
                "--workers",
                "2",
                "--port",
                str(server.port),
                timeout=30,
                env=clean_env,
            )
        )
        assert result.returncode == 1
        err = result.stderr.decode()
        assert err.count("\n") == 1, err  # one line, no traceback
        assert f"port {server.port} is already served by another arraycrypto" in err, err
        # And the port still has one server: every snapshot is the first one's.
        ours = Keyring(OLD).primary.key_id.hex()
        for _ in range(10):
            _, _, body = await http_get(server.port, "/snapshot")
            assert json.loads(body)["key_id"] == ours
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0


async def test_a_killed_supervisors_metrics_directory_does_not_outlive_it(tmp_path: Path) -> None:
    # The workers share their metrics through a directory the supervisor makes in the
    # temp dir and removes on a clean stop. SIGKILL (the OOM killer, a unit's final kill)
    # left it behind: 212 of them had piled up in /tmp on the machine this was found on.
    # The next supervisor removes those of supervisors that no longer run.
    path = tmp_path / "server_config.json"
    write(path, drain_seconds=0.0)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    # Anyone can make these: not pids (one beyond any kill()), so kept, and no crash.
    unrelated = {tmp / "arraycrypto-workers-notapid-x", tmp / "arraycrypto-workers-99999999999-x"}
    for made in unrelated:
        made.mkdir()

    def dirs() -> set[str]:
        return {p.name for p in tmp.glob("arraycrypto-workers-*") if p not in unrelated}

    with ServeProcess("--config", str(path), "--workers", "2", env=env) as first:
        await wait_for(lambda: first.output().count("listening on") == 2, timeout=20)
        (killed,) = dirs()
    # The context's exit SIGKILLed the supervisor and its workers: nothing cleaned up.
    assert dirs() == {killed}
    with ServeProcess("--config", str(path), "--workers", "2", env=env) as second:
        await wait_for(lambda: second.output().count("listening on") == 2, timeout=20)
        (own,) = dirs()
        assert own != killed
        second.signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    assert dirs() == set()  # a clean stop removes its own
    assert all(made.exists() for made in unrelated)


async def test_workers_end_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    # SIGKILL (an OOM kill, `kill -9`, a crashed supervisor) cannot be forwarded: the
    # workers must notice on their own, or they keep the port and its clients forever
    # and a restarted supervisor's workers share the port with orphans.
    path = tmp_path / "server_config.json"
    write(path, drain_seconds=0.5)
    with ServeProcess("--config", str(path), "--workers", "2") as server:
        await wait_for(lambda: server.output().count("listening on") == 2, timeout=20)
        client = await RawClient.connect(server.port)
        await client.handshake(Keyring(OLD))
        workers = server.kill_supervisor_only()
        assert len(workers) == 2
        # The workers drain (the client gets its going-away close) and exit.
        close = await client.wait_closed(timeout=10)
        assert close is not None
        assert close.code == 1001
        await wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10)
        assert "supervisor" in server.output()


async def test_one_truth_per_tick_across_servers() -> None:
    # Two servers with the same secret and interval: the same bytes for a tick.
    async with running_server() as a, running_server() as b:
        for _ in range(20):
            ta, tb = a.ticker.snapshot, b.ticker.snapshot
            if ta.tick == tb.tick:
                assert ta == tb
                break
            await anyio.sleep(0.01)
        else:
            pytest.fail("the two servers never showed the same tick")
        assert a.port
        status, headers, _ = await http_get(a.port, "/snapshot")
        assert status == 200
        assert headers["cache-control"].startswith("public, max-age=")


async def test_a_client_follows_a_new_config_without_a_restart() -> None:
    async with running_server(server_config(secret_key=NEW)) as server:
        assert server.port
        config = client_config(server.port, secret_key=OLD, next_secret_keys=[NEW])
        async with CryptoClient(config) as client:
            await client.authenticate()
            session = client.session_id
            # Step 3 of a rotation: NEW becomes the primary, OLD only decrypts.
            step3 = msgspec.structs.replace(
                config, secret_key=NEW, next_secret_keys=[], old_secret_keys=[OLD]
            )
            client.reload(step3)
            assert client.session_id == session
            client.encrypt("still encrypting")
            # A config that no longer trusts the server's key drops the snapshot.
            distrust = CryptoConfig(
                server_url=config.server_url, secret_key=OLD, old_secret_keys=[NEW]
            )
            client.reload(distrust)
            assert client.snapshot is None


@pytest.mark.parametrize("draining", [False, True], ids=["stop", "drain then stop"])
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_stopping_sends_a_partly_written_push_whole_then_1001(
    tls: bool, draining: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client that reads slowly has a fan-out writer with a push partly in the kernel,
    # the rest queued, when the server stops. The stop sends the rest, then Close 1001:
    # it used to close with the push cut short and no Close (a parked plain-TCP client's
    # task was cancelled while it sent the rest, before its goodbye). Or a drain had
    # already queued the Close behind the rest, and the stop cut both short.
    # The goodbye's bound made long: a window closed for a while reopens only at the
    # sender's next probe (backed off), which on a loaded machine came after 1 s.
    monkeypatch.setattr(listener, "_GOODBYE_TIMEOUT", 20.0)
    config = server_config()
    context = None
    if tls:
        config, context = with_tls(config, tmp_path)
    got: list[tuple[int, bytes]] = []
    async with anyio.create_task_group() as tg, running_server(config) as server:
        assert server.port
        stream, reader = await hostile.subscribe(server.port, context)
        await wait_for(lambda: len(server.fanout) == 1)
        (sub,) = server.fanout.subscribers
        # Small buffers at both ends, and the client reads nothing: the buffers fill.
        client = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sub.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)

        def stuck() -> bool:
            # A writer with bytes queued that the kernel has taken none of for 0.2 s: the
            # client's window is closed, not just the server's buffer full for a moment.
            started = sub.write_started
            blocked = started is not None and time.monotonic() - started > 0.2
            return blocked and sub.stream.backlogged

        with anyio.fail_after(10):
            for _ in range(10_000):  # pushes as the ticker makes them, only faster
                if stuck():
                    break
                if not sub.writing:
                    server.fanout.push(server.ticker.frame)
                await anyio.sleep(0.001)
        assert stuck()

        stopping = anyio.Event()
        if draining:
            tg.start_soon(server.drain, 0.5)  # its Close waits behind the push
            await wait_for(lambda: sub.conn.phase is not ServerPhase.SUBSCRIBED)

        async def read_once_stopping() -> None:
            # From the moment the server is stopping: then it said goodbye, or gave up on
            # the connection (a drain said goodbye before).
            await stopping.wait()
            await wait_for(
                lambda: (
                    sub.conn.phase is not ServerPhase.SUBSCRIBED or not server.metrics.connections
                )
            )
            # A wide window again: a small one drains too slowly for the goodbye's bound.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            while (frame := await reader.next_frame()) is not None:
                got.append(frame)
                if frame[0] == frames.CLOSE:  # echo it, as a client does: the server is done
                    await stream.send(hostile.frame(frames.CLOSE, frame[1]))

        tg.start_soon(read_once_stopping)
        stopping.set()  # the reader runs once the stop below has cancelled the server
    # Stopped (the reader ran meanwhile): whole pushes, then the Close, then nothing.
    await stream.aclose()
    assert reader.buffer == b"", f"a frame cut short: {reader.buffer!r}"
    assert got, "nothing after the stop"
    assert got[-1][0] == frames.CLOSE, f"no Close, last frame: {got[-1]!r}"
    assert frames.close_code(got[-1][1]) == 1001
    pushes = [payload for opcode, payload in got[:-1] if opcode == frames.TEXT]
    assert all(isinstance(m.decode(payload), m.SnapshotMessage) for payload in pushes)
