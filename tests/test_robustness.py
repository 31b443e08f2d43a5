"""The server under faults of its own and hostile admission: it keeps serving everyone else."""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import pytest

from arraycrypto import CryptoClient
from arraycrypto.core import messages as m
from arraycrypto.net.tls import server_context

from .harness import frames, hostile
from .harness.constants import HOST, RFC_6455_KEY
from .harness.http import http_get
from .harness.peers import RawClient
from .harness.servers import client_config, running_server, server_config, with_tls

pytestmark = pytest.mark.anyio


class Exploding:
    """A subscriber's stream whose synchronous writes raise: a bug in one client's path."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write_now(self, data: bytes) -> bool:
        raise RuntimeError("boom")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("path", ["fan-out", "pinger"])
async def test_one_clients_failure_never_reaches_the_server(path: str) -> None:
    # Finding 7a: an exception in the fan-out's or the pinger's per-client work must
    # drop that client only; it used to propagate into the server's task group.
    pings = {"ping_interval": 0.05, "ping_timeout": 5} if path == "pinger" else {}
    config = server_config(tick_interval=0.05 if path == "fan-out" else 10, **pings)
    async with running_server(config) as server:
        assert server.port
        good = await RawClient.connect(server.port)
        await good.handshake()
        bad = await RawClient.connect(server.port)
        await bad.handshake()
        (victim,) = [s for s in server.fanout.subscribers if s.session_id == bad.session_id]
        victim.stream = Exploding(victim.stream)
        # On a loaded machine the pinger may have pinged this client before the swap
        # (rounds every 5 ms); unanswered, that ping would end it as "no pong" after
        # ping_timeout, not through the exploding write. Its next round pings it again.
        victim.conn.ping_sent = None
        with anyio.fail_after(10):
            while any(s.session_id == bad.session_id for s in server.fanout.subscribers):
                await anyio.sleep(0.01)
        if path == "fan-out":
            for _ in range(3):  # the others go on receiving every tick
                assert isinstance(await good.recv_message(), m.SnapshotMessage)
        status, _, _ = await http_get(server.port, "/health")
        assert status == 200
        assert server.metrics.value("dropped_clients_total", "error") == 1
        await good.aclose()
        await bad.aclose()


class FlakyListener:
    """A listening socket whose next accept() fails with ``error`` once."""

    def __init__(self, sock: socket.socket, error: int) -> None:
        self.sock = sock
        self.error: int | None = error

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        if self.error is not None:
            error, self.error = self.error, None
            raise OSError(error, "injected")
        return self.sock.accept()


@pytest.mark.parametrize("error", [errno.EPROTO, errno.ENETDOWN, errno.EPERM])
async def test_an_unexpected_accept_error_does_not_stop_the_server(error: int) -> None:
    # Finding 7b: only running out of descriptors was tolerated; any other errno from
    # accept() (a protocol error, a firewall's EPERM) ended the whole server.
    async with running_server() as server, anyio.create_task_group() as tg:
        with socket.socket() as raw:
            raw.bind((HOST, 0))
            raw.listen()
            raw.setblocking(False)
            port = raw.getsockname()[1]
            flaky = FlakyListener(raw, error)
            tg.start_soon(server.listener.accept_loop, flaky, tg)
            async with CryptoClient(client_config(port)) as client:
                await client.authenticate()  # accepted after the error, served
            assert flaky.error is None
            tg.cancel_scope.cancel()


async def idle_connections(port: int, n: int) -> list[anyio.abc.SocketStream]:
    return [await anyio.connect_tcp(HOST, port) for _ in range(n)]


async def test_idle_unauthenticated_connections_never_keep_a_client_out() -> None:
    # Finding 7c: 100 idle sockets made /health answer 503 and kept clients out until
    # they timed out. Unauthenticated connections have their own pool; when it (or the
    # server) is full, a newcomer evicts the oldest unfinished one.
    # (An idle connection may be evicted once it has been pending for a second; until
    # then newcomers wait in the kernel's accept queue.)
    config = server_config(max_connections=12, max_pending=4, handshake_timeout=30)
    async with running_server(config) as server:
        assert server.port
        idle = await idle_connections(server.port, 10)
        try:
            with anyio.fail_after(10):
                status, _, body = await http_get(server.port, "/health")
                assert status == 200, body
                async with CryptoClient(client_config(server.port)) as client:
                    await client.authenticate()
            assert server.metrics.value("pending_evicted_total") >= 4
        finally:
            for stream in idle:
                await stream.aclose()


async def test_a_reconnect_storm_larger_than_the_pending_pool_evicts_no_one() -> None:
    # A storm of real clients is not a slow-loris: all of them are mid-handshake, and
    # evicting the oldest (the nearest to done) only sends it back to its backoff.
    # The pool must bound concurrency without evicting anyone who is not old.
    config = server_config(max_pending=4, handshake_timeout=30)
    async with running_server(config) as server:
        assert server.port
        port = server.port
        subscribed = 0

        async def one() -> None:
            nonlocal subscribed
            client = await RawClient.connect(port)
            try:
                await client.handshake()
                subscribed += 1
            finally:
                await client.aclose()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(one)
        assert subscribed == 40
        assert server.metrics.value("pending_evicted_total") == 0


async def test_the_whole_pre_authentication_phase_has_one_deadline() -> None:
    # Finding 7c: the request head, then the handshake, each had its own timeout, so a
    # slow drip held a slot for their sum. One deadline from accept covers it all.
    config = server_config(handshake_timeout=1.0, http_read_timeout=5.0)
    async with running_server(config) as server:
        assert server.port
        stream = await hostile.connect(server.port)
        reader = hostile.Reader(stream)
        async with stream:
            head = hostile.UPGRADE.format(host=HOST, key=RFC_6455_KEY).encode()
            outcome = "eof"
            with anyio.fail_after(10):
                try:
                    for i in range(0, len(head), 10):  # the whole head takes ~2.3 s
                        await stream.send(head[i : i + 10])
                        await anyio.sleep(0.15)
                except (anyio.BrokenResourceError, OSError):
                    pass
                answer = await reader.head()
                if answer.startswith(b"HTTP/1.1 101"):
                    got = await reader.next_frame()
                    while got is not None and got[0] != frames.CLOSE:
                        got = await reader.next_frame()
                    outcome = f"close:{frames.close_code(got[1])}" if got else "eof"
                else:
                    outcome = answer.split(b" ", 2)[1].decode() if answer else "eof"
        # Before: the head completed (under http_read_timeout), then 4002 a second later.
        assert outcome == "408"


def test_tls_renegotiation_is_refused(tmp_path: Path) -> None:
    # Finding 7a: a TLS 1.2 renegotiation made a write wait for a read.
    config, _ = with_tls(server_config(), tmp_path)
    assert config.tls_certfile
    assert config.tls_keyfile
    context = server_context(config.tls_certfile, config.tls_keyfile)
    assert context.options & ssl.OP_NO_RENEGOTIATION


async def test_a_tls_write_that_wants_to_read_fails_only_its_connection(tmp_path: Path) -> None:
    from arraycrypto.net.sockets import SocketStream
    from arraycrypto.net.tls import ServerTLSStream

    config, _ = with_tls(server_config(), tmp_path)
    assert config.tls_certfile
    assert config.tls_keyfile
    context = server_context(config.tls_certfile, config.tls_keyfile)
    a, b = socket.socketpair()
    with b:
        stream = ServerTLSStream(SocketStream(a), context)

        def wants_to_read() -> None:
            raise ssl.SSLWantReadError

        with pytest.raises(anyio.BrokenResourceError, match="wants to read"):
            await stream._run(wants_to_read, reading=False)
        stream.close()
