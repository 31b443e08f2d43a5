"""The server over real sockets on 127.0.0.1, under asyncio and trio."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import anyio
import pytest

from arraycrypto import CloseCode, Keyring
from arraycrypto.core import messages as m

from .harness import frames, hostile
from .harness.clock import current_ms
from .harness.constants import HOST, OTHER, RFC_6455_KEY, SECRET
from .harness.http import http_get, http_request
from .harness.peers import RawClient
from .harness.pure import answer
from .harness.servers import running_server, server_config, with_tls

pytestmark = pytest.mark.anyio


async def test_handshake_then_consecutive_signed_ticks() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        first = await client.handshake()
        ring = Keyring(SECRET)
        ticks = [first.tick]
        for _ in range(5):
            msg = await client.recv_message()
            assert isinstance(msg, m.SnapshotMessage)
            snap = msg.to_snapshot()
            assert ring.verify(snap) is not None
            assert abs(snap.timestamp - current_ms()) < 2000
            ticks.append(snap.tick)
        assert ticks == sorted(set(ticks))  # strictly increasing
        assert ticks[-1] - ticks[0] <= 7  # consecutive (a slow CI may skip one or two)
        assert server.metrics.handshakes_ok_total == 1
        await client.aclose()


async def test_challenge_is_fresh_and_names_the_key() -> None:
    async with running_server() as server:
        assert server.port
        a = await RawClient.connect(server.port)
        b = await RawClient.connect(server.port)
        ca, cb = await a.recv_message(), await b.recv_message()
        assert isinstance(ca, m.Challenge)
        assert isinstance(cb, m.Challenge)
        assert ca.challenge != cb.challenge
        assert ca.key_id == Keyring(SECRET).primary.key_id.hex()
        assert ca.tick_interval_ms == 100
        await a.aclose()
        await b.aclose()


async def expect_close(client: RawClient, code: int, error: bool = True) -> None:
    if error:
        msg = await client.recv_message()
        assert isinstance(msg, m.ErrorMessage)
        assert msg.code == code
    close = await client.wait_closed()
    assert close is not None
    assert close.code == code


async def test_wrong_proof_is_4001() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        challenge = await client.recv_message()
        assert isinstance(challenge, m.Challenge)
        forged = m.Handshake(
            hash="00" * 32, nonce="11" * 32, key_id=challenge.key_id, version=m.PROTOCOL_VERSION
        )
        await client.send_text(m.encode(forged))
        await expect_close(client, CloseCode.AUTHENTICATION_FAILED)
        assert server.metrics.handshakes_failed_total == {("authentication",): 1}


async def test_proof_with_another_secret_is_4001() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        challenge = await client.recv_message()
        assert isinstance(challenge, m.Challenge)
        await client.send_text(answer(challenge, Keyring(OTHER).primary))
        await expect_close(client, CloseCode.AUTHENTICATION_FAILED)


async def test_replayed_proof_from_an_earlier_connection_is_4001() -> None:
    async with running_server() as server:
        assert server.port
        first = await RawClient.connect(server.port)
        challenge = await first.recv_message()
        assert isinstance(challenge, m.Challenge)
        recorded = answer(challenge, Keyring(SECRET).primary)
        await first.send_text(recorded)
        assert isinstance(await first.recv_message(), m.Welcome)
        second = await RawClient.connect(server.port)
        await second.recv_message()  # its own, different challenge
        await second.send_text(recorded)
        await expect_close(second, CloseCode.AUTHENTICATION_FAILED)
        await first.aclose()


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"{}", b'{"type":"nope"}', b'{"type":"handshake","hash":1}', b"[]"],
)
async def test_malformed_first_frame_is_4003(payload: bytes) -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.recv_message()
        await client.send_text(payload)
        await expect_close(client, CloseCode.UNEXPECTED_MESSAGE)


async def test_frame_after_handshake_is_4003_and_others_keep_going() -> None:
    async with running_server() as server:
        assert server.port
        good = await RawClient.connect(server.port)
        await good.handshake()
        bad = await RawClient.connect(server.port)
        await bad.handshake()
        await bad.send_text(b'{"type":"handshake"}')
        await expect_close(bad, CloseCode.UNEXPECTED_MESSAGE)
        for _ in range(3):
            assert isinstance(await good.recv_message(), m.SnapshotMessage)
        await good.aclose()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_no_frame_follows_a_close_frame(tls: bool, tmp_path: Path) -> None:
    # RFC 6455, 5.5.1: after sending a Close frame an endpoint sends no more data frames.
    # A subscribed client breaks the protocol (a second text frame); the server answers
    # error + Close 4003, then waits for an echo this client never sends. Everything it
    # writes for the next ten ticks is read: no push may follow the Close. (The bug this
    # guards against pushed one snapshot per tick after the Close; the server's closing
    # deadline, 2 s, would only make the test wait longer for the same answer.)
    config = server_config(tick_interval=0.02)
    context = None
    if tls:
        config, context = with_tls(config, tmp_path)
    async with running_server(config) as server:
        assert server.port
        stream, reader = await hostile.subscribe(server.port, context)
        async with stream:
            got = await reader.next_frame()  # pushes flow: wait for one
            assert got is not None
            assert got[0] == frames.TEXT
            await stream.send(frames.encode(frames.TEXT, b'{"type":"handshake"}'))
            close_code = None
            after_close: list[int] = []
            ticks_at_close = 0

            async def read(scope: anyio.CancelScope) -> None:
                nonlocal close_code, ticks_at_close
                while (got := await reader.next_frame()) is not None:
                    opcode, payload = got
                    if close_code is not None:
                        after_close.append(opcode)
                    elif opcode == frames.CLOSE:
                        close_code = frames.close_code(payload)
                        ticks_at_close = server.metrics.ticks_total
                scope.cancel()  # the server ended the connection first

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(read, tg.cancel_scope)
                    while close_code is None or server.metrics.ticks_total < ticks_at_close + 10:
                        await anyio.sleep(0.01)
                    tg.cancel_scope.cancel()
        assert close_code == CloseCode.UNEXPECTED_MESSAGE
        assert after_close == []


async def test_binary_frame_is_1003() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.recv_message()
        await client.send_binary(b"\x00\x01")
        await expect_close(client, CloseCode.UNSUPPORTED_DATA, error=False)


async def test_fragmented_frame_is_4003() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.recv_message()
        client.protocol.send_text(b'{"type":', fin=False)
        await client.flush()
        await expect_close(client, CloseCode.UNEXPECTED_MESSAGE)


async def test_oversize_frame_is_1009() -> None:
    async with running_server(server_config(max_frame_size=1024)) as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.recv_message()
        await client.send_text(b"x" * 2000)
        close = await client.wait_closed()
        assert close is not None
        assert close.code == CloseCode.MESSAGE_TOO_BIG
        assert server.metrics.handshakes_failed_total == {("protocol",): 1}


async def test_no_handshake_within_timeout_is_4002() -> None:
    async with running_server(server_config(handshake_timeout=0.3)) as server:
        assert server.port
        client = await RawClient.connect(server.port)
        assert isinstance(await client.recv_message(), m.Challenge)
        await expect_close(client, CloseCode.HANDSHAKE_TIMEOUT)
        assert server.metrics.handshakes_failed_total == {("timeout",): 1}


async def test_client_close_is_answered() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.handshake()
        client.protocol.send_close(1000, "bye")
        await client.flush()
        close = await client.wait_closed()
        assert close is not None
        assert close.code == 1000
        with anyio.fail_after(5):
            while server.metrics.value("subscribed_clients"):
                await anyio.sleep(0.01)


async def test_unauthenticated_peer_receives_only_the_challenge() -> None:
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        assert isinstance(await client.recv_message(), m.Challenge)
        with anyio.move_on_after(0.5):  # five ticks pass; nothing else may arrive
            await client.recv_text(timeout=1)
            pytest.fail("an unauthenticated peer received a frame")
        await client.aclose()


async def test_pings_are_spread_over_the_interval() -> None:
    # Pinging every client in the same instant brings every pong back in one burst:
    # at 10 000 clients that stalled the loop for seconds (ticks late, clients gone to
    # another server). Clients subscribed together must be pinged at different times,
    # each still within its interval.
    interval = 1.0
    config = server_config(tick_interval=10, ping_interval=interval, ping_timeout=30)
    first_ping: list[float] = []  # when each client's first ping came
    waited: list[float] = []  # how long after its own subscription
    streams: list[anyio.abc.ByteStream] = []

    async def wait_ping(reader: hostile.Reader, subscribed: float) -> None:
        while (got := await reader.next_frame()) is not None:
            if got[0] == frames.PING:
                now = anyio.current_time()
                first_ping.append(now)
                waited.append(now - subscribed)
                return

    async with running_server(config) as server:
        assert server.port
        # Each client's reader starts as soon as it is subscribed: on a loaded machine
        # subscribing 40 takes long enough for pings to go out meanwhile, and a reader
        # started only after the last would see those as one burst that never was.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    stream, reader = await hostile.subscribe(server.port)
                    streams.append(stream)
                    tg.start_soon(wait_ping, reader, anyio.current_time())
        for stream in streams:
            await stream.aclose()
    assert len(first_ping) == 40
    assert max(waited) <= interval + 0.5  # everyone within the interval (and slack)
    # Spread over the interval, not one burst: at most a quarter in any tenth of it.
    first_ping.sort()
    window = interval / 10
    densest = max(sum(1 for t in first_ping if t0 <= t < t0 + window) for t0 in first_ping)
    assert densest <= 10, first_ping


async def test_stalled_client_does_not_delay_others_and_is_dropped() -> None:
    config = server_config(tick_interval=0.05, ping_interval=0.2, ping_timeout=0.3)
    async with running_server(config) as server:
        assert server.port
        stalled = await RawClient.connect(server.port)
        await stalled.handshake()  # then never reads again
        good = await RawClient.connect(server.port)
        await good.handshake()
        # The good client gets every tick the server makes while the other sits stalled:
        # the only gaps allowed are ticks the server itself skipped (a loaded machine).
        skipped = server.metrics.ticks_skipped_total
        ticks = []
        for _ in range(20):
            msg = await good.recv_message(timeout=2)
            assert isinstance(msg, m.SnapshotMessage)
            ticks.append(msg.tick)
        skipped = server.metrics.ticks_skipped_total - skipped
        assert ticks == sorted(set(ticks))
        assert ticks[-1] - ticks[0] <= len(ticks) - 1 + skipped
        with anyio.fail_after(5):
            while server.metrics.value("dropped_clients_total", "ping") == 0:
                assert isinstance(await good.recv_message(), m.SnapshotMessage)
        assert server.metrics.value("subscribed_clients") == 1
        await stalled.aclose()
        await good.aclose()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_fan_out_writes_directly(tls: bool, tmp_path: Path) -> None:
    # An idle client's pushes go out in the ticker's own synchronous write_now, plain
    # and TLS alike: no writer task is ever started for it.
    config, context = with_tls(server_config(), tmp_path) if tls else (server_config(), None)
    async with running_server(config) as server:
        assert server.port
        client = await RawClient.connect(server.port, ssl_context=context)
        await client.handshake()
        for _ in range(3):
            assert isinstance(await client.recv_message(), m.SnapshotMessage)
        assert server.fanout.writers_started == 0
        assert server.metrics.pushes_total >= 3
        await client.aclose()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_blocked_writer_is_dropped_and_others_unaffected(tls: bool, tmp_path: Path) -> None:
    config = server_config(
        tick_interval=0.05, write_timeout=0.3, ping_interval=100, ping_timeout=100
    )
    context = None
    if tls:
        config, context = with_tls(config, tmp_path)
    async with running_server(config) as server:
        assert server.port
        stalled = await RawClient.connect(server.port, ssl_context=context)
        await stalled.handshake()
        good = await RawClient.connect(server.port, ssl_context=context)
        await good.handshake()
        (victim,) = [c for c in server.fanout.subscribers if c.session_id == stalled.session_id]
        # Keep the kernel buffers toward the stalled client (which never reads) full
        # with valid server pings, written through the server's own connection, so the
        # ticks find its socket full and take the slow path (writer task, then
        # write_timeout). Topped up while waiting: TCP autotuning keeps growing them.
        filler = b"\x89\x00" * 65536
        with anyio.fail_after(20):
            while server.metrics.value("dropped_clients_total", "slow") == 0:
                while victim.stream.write_now(filler) and not victim.stream.backlogged:
                    pass
                msg = await good.recv_message(timeout=2)
                assert isinstance(msg, m.SnapshotMessage)
                assert current_ms() - msg.timestamp < 1000
        assert [c.session_id for c in server.fanout.subscribers] == [good.session_id]
        for _ in range(3):  # and the others go on receiving every tick
            assert isinstance(await good.recv_message(timeout=2), m.SnapshotMessage)
        await good.aclose()
        await stalled.aclose()


async def test_server_full_is_503() -> None:
    async with running_server(server_config(max_connections=1)) as server:
        assert server.port
        holder = await RawClient.connect(server.port)
        await holder.handshake()
        status, _, body = await http_get(server.port, "/health")
        assert status == 503
        assert json.loads(body) == {"error": "server full"}
        await holder.aclose()


# -- HTTP shim ---------------------------------------------------------------------------


async def test_http_snapshot_health_metrics() -> None:
    async with running_server() as server:
        assert server.port
        status, headers, body = await http_get(server.port, "/snapshot")
        assert status == 200
        assert headers["content-type"] == "application/json"
        msg = m.decode(body)
        assert isinstance(msg, m.SnapshotMessage)
        assert Keyring(SECRET).verify(msg.to_snapshot()) is not None
        assert {"tick", "seed", "timestamp", "signature"} <= set(json.loads(body))

        status, _, body = await http_get(server.port, "/health?verbose=1")
        health = json.loads(body)
        assert status == 200
        assert health["status"] == "healthy"
        assert abs(health["timestamp"] - current_ms()) < 5000
        assert health["tick"] >= msg.tick
        assert health["connections"] == 1  # this request
        assert health["subscribed"] == 0

        client = await RawClient.connect(server.port)
        await client.handshake()
        status, headers, body = await http_get(server.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        text = body.decode()
        assert "arraycrypto_subscribed_clients 1" in text
        assert "arraycrypto_handshakes_ok_total 1" in text
        assert "# TYPE arraycrypto_ticks_total counter" in text
        await client.aclose()


async def test_http_errors_are_json(caplog: pytest.LogCaptureFixture) -> None:
    async with running_server() as server:
        port = server.port
        assert port
        status, _, body = await http_get(port, "/nope")
        assert status == 404
        assert json.loads(body)["error"] == "not found"
        status, headers, _ = await http_request(port, b"DELETE /snapshot HTTP/1.1\r\n\r\n")
        assert status == 405
        assert headers["allow"] == "GET, HEAD, OPTIONS"
        status, _, body = await http_get(port, "/ws")
        assert status == 426
        assert json.loads(body)["error"] == "websocket upgrade required"
        for garbage in (b"\x00\x01\x02garbage\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9\r\n\r\n"):
            status, _, body = await http_request(port, garbage)
            assert (status, json.loads(body)) == (400, {"error": "bad request"})
        # Upgrades that are not RFC 6455's (PROTOCOL.md, section 6): an HTTP/1.0 one, a
        # bad key, a header value websockets refuses. Each a 400, and nothing logged as
        # an error on the way.
        upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        key = b"Sec-WebSocket-Key: %s\r\n" % RFC_6455_KEY.encode()
        for request in (
            b"GET /ws HTTP/1.0\r\nHost: x\r\n" + upgrade + key + b"\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n" + upgrade + b"Sec-WebSocket-Key: c2hvcnQ=\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n" + upgrade + key + b"X-Note: a\x01b\r\n\r\n",
        ):
            status, _, body = await http_request(port, request)
            assert (status, json.loads(body)) == (400, {"error": "invalid websocket handshake"})
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("body", [b"", b'{"hash": "00"}', b"x" * 100_000])
async def test_seed_post_handshake_with_a_body_gets_405(body: bytes) -> None:
    async with running_server() as server:
        assert server.port
        raw = (
            b"POST /handshake HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        status, _, reply = await http_request(server.port, raw)
        assert status == 405
        assert "first WebSocket frame" in json.loads(reply)["detail"]


async def test_chunked_body_gets_a_reply() -> None:
    async with running_server() as server:
        assert server.port
        raw = (
            b"POST /snapshot HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        status, _, _ = await http_request(server.port, raw)
        assert status == 405


async def test_oversize_headers_get_400() -> None:
    async with running_server(server_config(http_max_request_size=1024)) as server:
        assert server.port
        raw = b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n"
        status, _, body = await http_request(server.port, raw)
        assert (status, json.loads(body)) == (400, {"error": "bad request"})


async def test_slow_loris_gets_408() -> None:
    async with running_server(server_config(http_read_timeout=0.3)) as server:
        assert server.port
        status, _, body = await http_request(server.port, b"GET /health HTTP/1.1\r\nHost:")
        assert (status, json.loads(body)) == (408, {"error": "request timeout"})


async def test_cors_only_for_listed_origins() -> None:
    config = server_config(cors_origins=["https://ok.example"])
    async with running_server(config) as server:
        assert server.port
        _, headers, _ = await http_get(server.port, "/snapshot", Origin="https://ok.example")
        assert headers["access-control-allow-origin"] == "https://ok.example"
        _, headers, _ = await http_get(server.port, "/snapshot", Origin="https://evil.example")
        assert "access-control-allow-origin" not in headers
        _, headers, _ = await http_get(server.port, "/snapshot")
        assert "access-control-allow-origin" not in headers


async def test_silent_connections_are_closed_and_counted() -> None:
    async with running_server(server_config(http_read_timeout=0.2)) as server:
        assert server.port
        streams = [await anyio.connect_tcp(HOST, server.port) for _ in range(5)]
        for s in streams:
            with anyio.fail_after(5):
                data = b""
                try:
                    while True:
                        data += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            assert data.startswith(b"HTTP/1.1 408")
            await s.aclose()
        with anyio.fail_after(5):
            while server.metrics.connections:
                await anyio.sleep(0.01)


def test_gc_thresholds_are_only_ever_raised() -> None:
    from arraycrypto.server.tuning import GC_THRESHOLDS, tune_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.set_threshold(50_000, 5, 1000)  # an application's own, larger settings win
        tune_gc()
        assert gc.get_threshold() == (50_000, 10, 1000)
        gc.set_threshold(0)  # automatic collection switched off: stays off
        tune_gc()
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*saved)


async def test_an_embedded_server_leaves_the_process_as_it_found_it() -> None:
    # GC thresholds and the open-file limit are the host application's: serve() with a
    # max_connections far above the current limit changes neither.
    import resource

    import arraycrypto

    thresholds = gc.get_threshold()
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    config = server_config(max_connections=limits[0] + 10_000)
    async with anyio.create_task_group() as tg:
        port = await tg.start(arraycrypto.serve, config)
        status, _, _ = await http_get(port, "/health")
        assert status == 200
        assert gc.get_threshold() == thresholds
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == limits
        tg.cancel_scope.cancel()
    assert gc.get_threshold() == thresholds
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limits


async def test_pace_gc_collects_by_the_clock_and_freezes_what_survived() -> None:
    # The "paced" policy (the CLI's default): with automatic collection off, every
    # collection counted here is pace_gc's own: young and middle together by the clock,
    # then a freeze of what survived (freeze_every 0: at the first chance).
    from arraycrypto.server import pace_gc
    from arraycrypto.server.tuning import NO_FULL_COLLECTIONS, PACED_YOUNG, YOUNG_EVERY

    young, middle = (gc.get_stats()[g]["collections"] for g in (0, 1))
    thresholds = gc.get_threshold()
    gc.disable()
    gc.unfreeze()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pace_gc, 0.0)
                while gc.get_freeze_count() == 0 or gc.get_stats()[1]["collections"] < middle + 5:
                    await anyio.sleep(YOUNG_EVERY)
                paced = gc.get_threshold()
                tg.cancel_scope.cancel()
        # A collection of generation 1 counts there only: none was young alone.
        assert gc.get_stats()[0]["collections"] == young
        assert gc.get_stats()[1]["collections"] - middle >= 5
        # Ten middle collections a second must not bring on automatic full ones.
        assert paced[2] >= NO_FULL_COLLECTIONS
        # Young objects are collected by the clock: the allocation count only backs it.
        assert paced[0] >= max(thresholds[0], PACED_YOUNG)
        assert paced[1] == thresholds[1]
        # Stopped, it leaves the collector as it found it (an embedding application's).
        assert gc.get_threshold() == thresholds
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        gc.enable()


def test_the_paced_period_stretches_only_while_quiet_and_tightens_at_once() -> None:
    # Every wake-up of an idle process costs (about 0.2 ms of CPU on a cloud VM, where
    # ten a second were a fifth of a 1 000-client server's CPU per tick), so a quiet
    # server collects less often. But what survives comes in bursts (a round of pongs),
    # and a long period meets a burst whole: at 10 000 connections a period that
    # followed the last pause alone swung between 0.1 and 0.25 s (most collections
    # there take 0.02 ms, one in ten 20-34 ms). So the period
    # doubles only after QUIET_FOR seconds of nothing but quick collections, and any
    # slower collection puts it back to the minimum at once.
    from arraycrypto.server.tuning import (
        QUIET_FOR,
        QUIET_PAUSE,
        YOUNG_EVERY,
        YOUNG_EVERY_MAX,
        PacedPeriod,
    )

    pacing = PacedPeriod()
    quick, slow = QUIET_PAUSE / 10, QUIET_PAUSE * 2
    now = 0.0
    while now < QUIET_FOR:  # quick collections, but not for long enough yet
        assert pacing.after(quick, now) == YOUNG_EVERY
        now += YOUNG_EVERY
    assert pacing.after(quick, now) == YOUNG_EVERY * 2
    for _ in range(1000):  # a long quiet spell: up to the maximum, no further
        now += pacing.period
        pacing.after(quick, now)
    assert pacing.period == YOUNG_EVERY_MAX
    assert pacing.after(slow, now) == YOUNG_EVERY  # one burst: back at once
    now += YOUNG_EVERY
    assert pacing.after(quick, now) == YOUNG_EVERY  # and the quiet spell starts over
    now += QUIET_FOR / 2
    assert pacing.after(slow, now) == YOUNG_EVERY
    now += QUIET_FOR
    assert pacing.after(quick, now) == YOUNG_EVERY


async def test_the_ticker_reports_how_late_it_woke() -> None:
    # The loop-lag gauge is fed by the wake-ups the server has anyway, the ticker's
    # first (not by a watcher waking twenty times a second): a loop stalled across a
    # tick boundary shows as the ticker's lateness.
    import time

    from arraycrypto.server.fanout import Ticker
    from arraycrypto.server.metrics import Metrics

    metrics = Metrics()
    ticker = Ticker(server_config(tick_interval=0.05), Keyring(SECRET), metrics, time.time)
    ticks = 0

    def on_tick(frame: bytes) -> None:
        nonlocal ticks
        ticks += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run, on_tick)
            await anyio.sleep(0.01)  # the ticker sleeps toward a boundary now
            before = ticks
            time.sleep(0.25)  # a stalled loop, across several boundaries
            while ticks == before:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert metrics.loop_lag.value(time.monotonic()) >= 0.15


def test_the_debug_object_count_sees_frozen_connections() -> None:
    # The soak's leak check counts connection objects (serve --debug-objects); the
    # default policy freezes long-lived objects, which gc.get_objects() does not list.
    from arraycrypto.cli.serve import _count_connections
    from arraycrypto.core.server_connection import ServerConnection

    conn = ServerConnection.__new__(ServerConnection)
    expected = _count_connections()
    assert expected >= 1
    gc.freeze()
    try:
        assert _count_connections() == expected
        assert gc.get_freeze_count() > 0  # frozen again after the count
    finally:
        gc.unfreeze()
    del conn


async def test_the_tasks_gauge_counts_what_anyio_counts() -> None:
    # The gauge is read every second by each worker (its metrics file) and by every
    # scrape: it counts the event loop's tasks without building anyio's TaskInfo for
    # each (at 5 000 connections that was a tenth of a worker's CPU), and agrees with it.
    async with running_server() as server:
        assert server.port
        clients = [await RawClient.connect(server.port) for _ in range(5)]
        for client in clients:
            await client.handshake()
        assert server.metrics.value("tasks") == len(anyio.get_running_tasks())
        for client in clients:
            await client.aclose()
