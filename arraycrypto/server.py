"""The push server: a thin anyio driver around websockets' ServerProtocol and the core.

One code path for asyncio and trio. Per connection: read the HTTP request head (bounded
in size and time); a WebSocket upgrade on the configured path goes to websockets'
``ServerProtocol``, anything else gets a small JSON answer from the HTTP shim. A
WebSocket session is driven by :class:`~arraycrypto._protocol.ServerSession`.

Fan-out: each tick's frame is serialised **once** (server frames are unmasked and no
extension is negotiated, so the bytes are the same for every client). For each client
whose socket is idle, the ticker writes the frame with one non-blocking ``send``: no
task switch, no per-client work beyond the syscall (over TLS, the server's own TLS layer
encrypts it first: :class:`~arraycrypto._transport.ServerTLSStream`). Only a client
whose kernel buffer is full gets a writer task, started on demand, with a one-slot
mailbox: a newer frame replaces an unsent older one, so what is queued for a slow client
is bounded and it never delays the ticker or anyone else. A writer blocked past
``write_timeout`` drops its client; one task pings every client and drops those that
stop answering.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import resource
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from ._transport import STREAM_ERRORS, ServerTLSStream, WSConnection, can_half_close
from .core import http as _http
from .core import messages as m
from .core.config import ServerConfig
from .core.exceptions import ConfigError
from .core.handshake import REASONS, CloseCode, ServerSession, ServerState, Violation
from .core.keyring import Keyring
from .core.keys import SEED_SIZE, Snapshot

__all__ = ["Server", "serve"]

logger = logging.getLogger("arraycrypto.server")
# websockets logs every connection open/close at INFO: a separate, quieter logger.
ws_logger = logging.getLogger("arraycrypto.server.websocket")

_LINGER_TIMEOUT = 1.0  # seconds to drain an unread request body before closing
_LINGER_BYTES = 1 << 20
_CLOSE_TIMEOUT = 2.0
# accept() errors that mean "out of resources for now", not "the listener is broken".
_ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BATCH = 256  # connections accepted per wake-up before yielding to other tasks


# Collector thresholds while a server runs (see _tune_gc): young collections every
# 10 000 net allocations instead of 700, full collections 10 times rarer.
_GC_THRESHOLDS: Final = (10_000, 10, 100)


def _tune_gc() -> None:
    """Fit the cyclic garbage collector to a heap of long-lived connections.

    The server's heap is mostly connection state that lives as long as its client and
    is freed by reference counting when the connection ends (a test checks this).
    Python's default thresholds still run full collections that scan all of it: seven
    while 10 000 clients connect, each stalling the event loop for up to half a second
    (1.5 s of CPU in all, a quarter of the connect time; docs/benchmarks.md). Raised
    thresholds keep young collections frequent enough for short-lived cycles and make
    full collections rare. Thresholds are only ever raised, so an application's own,
    larger settings win; a disabled collector stays disabled. (Not ``gc.freeze()``:
    frozen objects vanish from ``gc.get_referrers()``, which other libraries rely on.)
    """
    current = gc.get_threshold()
    if current[0] == 0:
        return  # automatic collection switched off by the application: leave it so
    gc.set_threshold(*(max(have, want) for have, want in zip(current, _GC_THRESHOLDS, strict=True)))


def _json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


class Metrics:
    """Counters exported on ``GET /metrics`` (Prometheus text format)."""

    def __init__(self, clients: set[Any]) -> None:
        self._clients = clients  # the server's live set: `subscribed` is derived from it
        self.connections_total = 0
        self.connections_active = 0
        self.handshakes_ok = 0
        self.handshakes_failed: dict[str, int] = {}
        self.ticks = 0
        self.ticks_skipped = 0
        self.pushes = 0
        self.dropped_slow = 0
        self.dropped_ping = 0
        self.rejected_full = 0
        self.http_requests: dict[tuple[str, int], int] = {}
        self.push_seconds_sum = 0.0
        self.push_seconds_last = 0.0
        self.tasks = 0  # sampled when /metrics is read
        self.accept_errors = 0

    @property
    def subscribed(self) -> int:
        """Authenticated clients currently in the fan-out."""
        return len(self._clients)

    def fail(self, reason: str) -> None:
        """Count a failed handshake."""
        self.handshakes_failed[reason] = self.handshakes_failed.get(reason, 0) + 1

    def render(self) -> bytes:
        """Return the Prometheus text exposition."""
        out: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP arraycrypto_{name} {doc}")
            out.append(f"# TYPE arraycrypto_{name} {kind}")
            for labels, value in samples:
                out.append(f"arraycrypto_{name}{labels} {value}")

        metric(
            "connections_total",
            "counter",
            "TCP connections accepted.",
            [("", self.connections_total)],
        )
        metric("connections", "gauge", "Open TCP connections.", [("", self.connections_active)])
        metric(
            "subscribed_clients",
            "gauge",
            "Authenticated WebSocket clients.",
            [("", self.subscribed)],
        )
        metric(
            "handshakes_ok_total", "counter", "Successful handshakes.", [("", self.handshakes_ok)]
        )
        metric(
            "handshakes_failed_total",
            "counter",
            "Failed handshakes by reason.",
            [(f'{{reason="{r}"}}', n) for r, n in sorted(self.handshakes_failed.items())]
            or [('{reason="authentication"}', 0)],
        )
        metric("ticks_total", "counter", "Snapshots made.", [("", self.ticks)])
        metric(
            "ticks_skipped_total",
            "counter",
            "Ticks skipped because the loop stalled.",
            [("", self.ticks_skipped)],
        )
        metric(
            "pushes_total",
            "counter",
            "Snapshot frames handed to client writers.",
            [("", self.pushes)],
        )
        metric(
            "dropped_clients_total",
            "counter",
            "Clients dropped by the server.",
            [('{reason="slow"}', self.dropped_slow), ('{reason="ping"}', self.dropped_ping)],
        )
        metric(
            "rejected_full_total",
            "counter",
            "Connections refused at max_connections.",
            [("", self.rejected_full)],
        )
        metric(
            "http_requests_total",
            "counter",
            "HTTP shim requests by path and status.",
            [
                (f'{{path="{p}",status="{s}"}}', n)
                for (p, s), n in sorted(self.http_requests.items())
            ],
        )
        metric(
            "push_duration_seconds_sum",
            "counter",
            "Time spent fanning out ticks.",
            [("", self.push_seconds_sum)],
        )
        metric("tasks", "gauge", "Tasks in the server's event loop.", [("", self.tasks)])
        metric(
            "accept_errors_total",
            "counter",
            "accept() failures for lack of resources (file descriptors).",
            [("", self.accept_errors)],
        )
        metric(
            "push_duration_seconds_last",
            "gauge",
            "Fan-out time of the last tick.",
            [("", self.push_seconds_last)],
        )
        return ("\n".join(out) + "\n").encode()


class _Client:
    """One subscribed WebSocket client: its connection, one-slot mailbox and timers."""

    __slots__ = (
        "conn",
        "last_pong",
        "pending",
        "ping_due",
        "ping_sent",
        "session_id",
        "write_started",
        "writing",
    )

    def __init__(self, conn: WSConnection, session_id: str) -> None:
        self.conn = conn
        self.session_id = session_id
        self.pending: bytes | None = None  # the newest unsent snapshot frame (replaceable)
        self.ping_due = False
        self.ping_sent: float | None = None
        self.last_pong = 0.0
        self.writing = False  # a writer task is running
        self.write_started: float | None = None  # when the current awaited write began


# Server → client frames are unmasked and no extension is negotiated: pre-serialised once.
_PING_FRAME: Final = Frame(Opcode.PING, b"").serialize(mask=False)


class Server:
    """The arraycrypto push server. Use :func:`serve`, or ``await server.run()``."""

    def __init__(self, config: ServerConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.keyring = Keyring(config.secret_key)
        self._clients: set[_Client] = set()
        self.metrics = Metrics(self._clients)
        self.port: int | None = None
        self._clock = clock
        self._started = time.monotonic()
        self._tg: anyio.abc.TaskGroup | None = None
        self._interval_ms = round(config.tick_interval * 1000)
        self.snapshot: Snapshot = self._make_snapshot(self._current_tick())
        self._encode_snapshot()
        self._ssl: ssl.SSLContext | None = None
        if config.tls_certfile and config.tls_keyfile:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                self._ssl.load_cert_chain(config.tls_certfile, config.tls_keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"`tls_certfile`/`tls_keyfile`: cannot load the certificate and key"
                    f" ({exc.strerror or exc.__class__.__name__})"
                ) from None

    def __repr__(self) -> str:
        return f"Server(port={self.port}, key_id={self.keyring.primary.key_id.hex()})"

    # -- ticks ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _current_tick(self) -> int:
        return self._now_ms() // self._interval_ms

    def _make_snapshot(self, tick: int) -> Snapshot:
        return self.keyring.new_snapshot(
            tick, os.urandom(SEED_SIZE), self._now_ms(), self.config.hash_size
        )

    def _encode_snapshot(self) -> None:
        # Encoded once per tick: the /snapshot body and the push frame every client gets.
        self._snapshot_json = m.encode(m.SnapshotMessage.from_snapshot(self.snapshot))
        # Server frames are unmasked and no extension is negotiated, so the frame bytes
        # are identical for every client.
        self._snapshot_frame = Frame(Opcode.TEXT, self._snapshot_json).serialize(mask=False)

    async def _ticker(self) -> None:
        while True:
            # Sleep to the next wall-clock boundary of tick_interval.
            delay = self._interval_ms - self._now_ms() % self._interval_ms
            await anyio.sleep(delay / 1000)
            tick = self._current_tick()
            if tick <= self.snapshot.tick:
                continue  # woke a hair early: the boundary has not passed yet
            if tick > self.snapshot.tick + 1:
                # The loop stalled: skip to now, never send a burst of stale ticks.
                self.metrics.ticks_skipped += tick - self.snapshot.tick - 1
            self.snapshot = self._make_snapshot(tick)
            self._encode_snapshot()
            self.metrics.ticks += 1
            self._fan_out()

    def _fan_out(self) -> None:
        started = time.perf_counter()
        frame = self._snapshot_frame
        now = time.monotonic()
        write_timeout = self.config.write_timeout
        for client in list(self._clients):
            if client.writing:
                # Its writer is still busy: replace any unsent older frame, never queue.
                client.pending = frame
                if client.write_started is not None and now - client.write_started > write_timeout:
                    self.metrics.dropped_slow += 1
                    logger.info("session %s: writes blocked, dropping", client.session_id)
                    self._drop(client)
                continue
            # Fast path: the socket is idle, so one non-blocking send, no task switch.
            conn = client.conn
            if not conn.write_now(frame):
                client.pending = frame  # full, or the reader is sending: a writer sends it
                self._start_writer(client)
            elif conn.backlogged:
                self._start_writer(client)  # partly written: the writer sends the rest
        self.metrics.pushes += len(self._clients)
        elapsed = time.perf_counter() - started
        self.metrics.push_seconds_last = elapsed
        self.metrics.push_seconds_sum += elapsed

    async def _pinger(self) -> None:
        # Dead-peer detection for every client from one task, not a timer per connection.
        interval = self.config.ping_interval
        timeout = self.config.ping_timeout
        while True:
            await anyio.sleep(min(interval, timeout))
            now = time.monotonic()
            for client in list(self._clients):
                if client.ping_sent is not None:
                    if client.last_pong < client.ping_sent:
                        if now - client.ping_sent >= timeout:
                            self.metrics.dropped_ping += 1
                            logger.info("session %s: no pong, dropping", client.session_id)
                            self._drop(client)
                        continue
                    if now - client.ping_sent < interval:
                        continue
                if not client.writing and client.conn.write_now(_PING_FRAME):
                    client.ping_sent = now
                    if client.conn.backlogged:
                        self._start_writer(client)
                    continue
                client.ping_due = True
                if not client.writing:
                    self._start_writer(client)

    def _start_writer(self, client: _Client) -> None:
        # Writers are rare (only for a full socket buffer) and short-lived: they run in
        # the server's task group rather than costing every connection a task group.
        assert self._tg is not None
        client.writing = True
        self._tg.start_soon(self._writer, client)

    def _drop(self, client: _Client) -> None:
        """Disconnect a client without a closing handshake (it is not reading)."""
        if client in self._clients:
            self._clients.discard(client)
            # Closing the stream ends its reader (end of input) and any blocked writer.
            assert self._tg is not None
            self._tg.start_soon(client.conn.aclose)

    async def _writer(self, client: _Client) -> None:
        """Send what write_now left queued, the newest frame and a due ping, awaiting."""
        conn = client.conn
        try:
            while True:
                if conn.protocol.state is not State.OPEN:
                    return  # closing: never push after a close frame
                if conn.backlogged:
                    data = b""  # send_raw sends the queued bytes first
                elif client.pending is not None:
                    data, client.pending = client.pending, None
                elif client.ping_due:
                    data, client.ping_due = _PING_FRAME, False
                    client.ping_sent = time.monotonic()
                else:
                    return
                client.write_started = time.monotonic()
                await conn.send_raw(data)
                client.write_started = None
        except STREAM_ERRORS:
            self._drop(client)
        finally:
            client.writing = False

    # -- listening -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; report the bound port through ``task_status``.

        On cancellation every client gets close code 1001 (going away), bounded in time.
        """
        self._raise_fd_limit()
        _tune_gc()
        multi = await anyio.create_tcp_listener(
            local_host=self.config.host, local_port=self.config.port, reuse_port=False
        )
        self.port = int(multi.extra(anyio.abc.SocketAttribute.local_port))
        scheme = "wss" if self._ssl else "ws"
        logger.info(
            "listening on %s://%s:%d%s (key id %s, tick %.3fs)",
            scheme,
            self.config.host,
            self.port,
            self.config.path,
            self.keyring.primary.key_id.hex(),
            self.config.tick_interval,
        )
        async with multi, anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._ticker)
            tg.start_soon(self._pinger)
            for listener in multi.listeners:
                assert isinstance(listener, anyio.abc.SocketListener)
                tg.start_soon(self._accept_loop, listener, tg)
            task_status.started(self.port)
        # Not reached: serve() runs until cancelled. On cancellation each WebSocket
        # connection says goodbye itself (close 1001), shielded and bounded in time.

    async def _accept_loop(
        self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        # Our own loop rather than anyio's serve() or listener.accept(): it accepts every
        # pending connection per wake-up (a reconnect storm arrives all at once) and
        # leaves wrapping the socket to the connection's own task, instead of one
        # checkpoint, cancel scope and transport setup per accept in this loop. And
        # running out of file descriptors (EMFILE) slows accepting down, it never takes
        # the whole server with it.
        sock = listener.extra(anyio.abc.SocketAttribute.raw_socket)
        while True:
            await anyio.wait_readable(sock)
            for _ in range(_ACCEPT_BATCH):
                try:
                    client, _addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break  # none pending
                except ConnectionAbortedError:
                    continue  # reset before we got to it
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RETRY:
                        raise
                    self.metrics.accept_errors += 1
                    logger.warning("accept failed (%s): retrying in 0.1 s", exc.strerror)
                    await anyio.sleep(0.1)
                    break
                # A fixed task name: deriving one from the function costs per connection.
                tg.start_soon(self._handle, client, name="arraycrypto connection")
            else:
                await anyio.lowlevel.checkpoint()  # a long batch: let the others run

    def _raise_fd_limit(self) -> None:
        """Raise the soft descriptor limit toward max_connections, as far as allowed."""
        want = self.config.max_connections + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(want, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < want:
            logger.warning(
                "open file limit %d is below max_connections %d: raise it (ulimit -n)"
                " or lower max_connections",
                soft,
                self.config.max_connections,
            )

    # -- one connection ------------------------------------------------------------------

    async def _handle(self, sock: socket.socket) -> None:
        try:
            # Small frames must leave at once (pushes, the welcome): no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream: anyio.abc.ByteStream = await anyio.abc.SocketStream.from_socket(sock)
        except OSError:
            sock.close()  # the peer is already gone
            return
        self.metrics.connections_total += 1
        self.metrics.connections_active += 1
        try:
            if self._ssl is not None:
                stream = await self._tls(stream, sock)
            if self.metrics.connections_active > self.config.max_connections:
                self.metrics.rejected_full += 1
                await self._http_reply(stream, "-", 503, {"error": "server full"})
                return
            await self._serve_connection(stream, sock)
        except STREAM_ERRORS:
            pass  # the peer went away
        except Exception:
            logger.exception("unexpected error on a connection")
        finally:
            self.metrics.connections_active -= 1
            await anyio.aclose_forcefully(stream)

    async def _tls(self, stream: anyio.abc.ByteStream, sock: socket.socket) -> ServerTLSStream:
        assert self._ssl is not None
        try:
            with anyio.fail_after(self.config.handshake_timeout):
                # Our own TLS layer, not anyio's TLSStream: it can take the fan-out's
                # synchronous write path (see ServerTLSStream).
                return await ServerTLSStream.wrap(stream, self._ssl, sock)
        except (TimeoutError, ssl.SSLError, *STREAM_ERRORS) as exc:
            # A port scanner or a plaintext client is not a server error: one line.
            logger.info("TLS handshake failed: %s", type(exc).__name__)
            raise anyio.BrokenResourceError from None

    async def _read_head(self, stream: anyio.abc.ByteStream) -> tuple[bytes, bytes] | int:
        """Return (head, rest) or the HTTP status of the failure (400 or 408)."""
        buffer = bytearray()
        limit = self.config.http_max_request_size
        with anyio.move_on_after(self.config.http_read_timeout):
            while True:
                end = _http.find_head_end(buffer)
                if end >= 0:
                    return bytes(buffer[:end]), bytes(buffer[end:])
                if len(buffer) > limit:
                    return 400
                try:
                    # Never more than one byte past the limit: enough to refuse it.
                    buffer += await stream.receive(limit + 1 - len(buffer))
                except anyio.EndOfStream:
                    return 400 if buffer else 0
        return 408

    async def _serve_connection(self, stream: anyio.abc.ByteStream, sock: socket.socket) -> None:
        got = await self._read_head(stream)
        if got == 0:
            return  # connected and closed without a byte
        if isinstance(got, int):
            error = "request timeout" if got == 408 else "bad request"
            await self._http_reply(stream, "-", got, {"error": error})
            return
        head, rest = got
        del got
        try:
            request = _http.parse_request_head(head)
        except ValueError:
            await self._http_reply(stream, "-", 400, {"error": "bad request"})
            return
        if request.path != self.config.path or request.method != "GET":
            await self._http_shim(stream, request)
        elif not request.is_websocket_upgrade():
            await self._http_reply(
                stream,
                request.path,
                426,
                {"error": "websocket upgrade required"},
                request,
                (("Upgrade", "websocket"),),
            )
        else:
            accepted = self._accept_websocket(stream, sock, head + rest)
            # This frame stays suspended for the whole session: drop the request data
            # now (it would cost every connection a few KiB).
            del head, rest, request
            if accepted is None:
                await self._http_reply(
                    stream, self.config.path, 400, {"error": "invalid websocket handshake"}
                )
            else:
                await self._websocket(*accepted)

    # -- HTTP shim -----------------------------------------------------------------------

    async def _http_shim(self, stream: anyio.abc.ByteStream, request: _http.RequestHead) -> None:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            body: dict[str, str] = {"error": "method not allowed"}
            if path == "/handshake":
                body["detail"] = "the handshake is now the first WebSocket frame: see PROTOCOL.md"
            await self._http_reply(stream, path, 405, body, request, (("Allow", "GET"),))
        elif path == "/snapshot":
            await self._http_reply(stream, path, 200, self._snapshot_json, request)
        elif path == "/health":
            health = {
                "status": "healthy",
                "timestamp": self._now_ms(),
                "tick": self.snapshot.tick,
                "connections": self.metrics.connections_active,
                "subscribed": self.metrics.subscribed,
                "uptime": round(time.monotonic() - self._started, 3),
            }
            await self._http_reply(stream, path, 200, health, request)
        elif path == "/metrics":
            self.metrics.tasks = len(anyio.get_running_tasks())
            await self._http_reply(
                stream,
                path,
                200,
                self.metrics.render(),
                request,
                content_type="text/plain; version=0.0.4",
            )
        else:
            await self._http_reply(stream, path, 404, {"error": "not found"}, request)

    async def _http_reply(
        self,
        stream: anyio.abc.ByteStream,
        path: str,
        status: int,
        body: bytes | dict[str, Any],
        request: _http.RequestHead | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        content_type: str = "application/json",
    ) -> None:
        label = path if path in ("/snapshot", "/health", "/metrics", "/handshake") else "other"
        key = (label, status)
        self.metrics.http_requests[key] = self.metrics.http_requests.get(key, 0) + 1
        payload = body if isinstance(body, bytes) else _json(body)
        if request is not None:
            origin = request.headers.get("origin")
            if origin is not None and origin in self.config.cors_origins:
                headers += (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))
        data = _http.response(status, payload, content_type=content_type, headers=headers)
        if request is not None and request.method == "HEAD":
            data = data[: len(data) - len(payload)]
        with anyio.move_on_after(self.config.write_timeout):
            await stream.send(data)
        await self._linger(stream)

    async def _linger(self, stream: anyio.abc.ByteStream) -> None:
        # Closing a socket with unread input makes the kernel send RST, which can destroy
        # the response before the client reads it (a POST with a body, pipelined bytes).
        # So: half-close, then drain what the client still sends, bounded in time and size.
        with anyio.move_on_after(_LINGER_TIMEOUT):
            try:
                if can_half_close(stream):
                    await stream.send_eof()
                drained = 0
                while drained < _LINGER_BYTES:
                    drained += len(await stream.receive())
            except (*STREAM_ERRORS, NotImplementedError):
                pass

    # -- WebSocket -----------------------------------------------------------------------

    def _accept_websocket(
        self, stream: anyio.abc.ByteStream, sock: socket.socket, data: bytes
    ) -> tuple[WSConnection, ServerSession] | None:
        """Run the upgrade through websockets and queue the challenge; None if refused."""
        # No extensions offered: compression would double fan-out CPU and stop the frame
        # bytes from being identical for every client.
        protocol = ServerProtocol(max_size=self.config.max_frame_size, logger=ws_logger)
        protocol.receive_data(data)
        events = protocol.events_received()
        if not events:  # our parser accepted the head, so websockets should; be safe
            return None
        response = protocol.accept(events[0])  # type: ignore[arg-type]
        if response.status_code != 101:
            return None
        protocol.send_response(response)
        session = ServerSession(
            self.keyring.primary, os.urandom(32), secrets.token_hex(6), self.config.tick_interval
        )
        protocol.send_text(session.challenge_message())
        return WSConnection(stream, protocol, raw_socket=sock), session

    async def _websocket(self, conn: WSConnection, session: ServerSession) -> None:
        try:
            await conn.flush()
            if await self._handshake(conn, session):
                await self._subscribed(conn, session)
        except anyio.get_cancelled_exc_class():
            # The server is stopping: tell the client (1001), shielded and bounded.
            await conn.close(CloseCode.GOING_AWAY, REASONS[CloseCode.GOING_AWAY], 1.0)
            raise
        finally:
            conn.release()

    async def _subscribed(self, conn: WSConnection, session: ServerSession) -> None:
        client = _Client(conn, session.session_id)
        self._clients.add(client)
        try:
            await self._reader(client, session)
        finally:
            self._clients.discard(client)
            logger.debug("session %s ended", session.session_id)

    async def _handshake(self, conn: WSConnection, session: ServerSession) -> bool:
        """Run the handshake phase; return True once the client is subscribed."""
        protocol = conn.protocol
        with anyio.move_on_after(self.config.handshake_timeout):
            while session.state is ServerState.CHALLENGED:
                if not await conn.receive():
                    self.metrics.fail("disconnected")
                    return False
                for event in protocol.events_received():
                    if not isinstance(event, Frame):
                        continue
                    try:
                        welcome = self._dispatch(session, event)
                    except Violation as exc:
                        self.metrics.fail(
                            "authentication"
                            if exc.code == CloseCode.AUTHENTICATION_FAILED
                            else "protocol"
                        )
                        logger.info("session %s: %s", session.session_id, exc)
                        await self._violation(conn, exc.code)
                        return False
                    if welcome is not None:
                        protocol.send_text(welcome)
                        await conn.flush()
                        self.metrics.handshakes_ok += 1
                        logger.debug("session %s subscribed", session.session_id)
                        return True
                if protocol.state is not State.OPEN:
                    self.metrics.fail("protocol")  # framing error, close, oversize
                    await conn.close(CloseCode.PROTOCOL_ERROR, "", _CLOSE_TIMEOUT)
                    return False
        self.metrics.fail("timeout")
        logger.info("session %s: handshake timeout", session.session_id)
        await self._violation(conn, CloseCode.HANDSHAKE_TIMEOUT)
        return False

    def _dispatch(self, session: ServerSession, frame: Frame) -> bytes | None:
        """Map one frame to the session; raise Violation for anything not allowed."""
        if frame.opcode is Opcode.TEXT:
            if not frame.fin:  # we never fragment and accept no fragments
                raise Violation(CloseCode.UNEXPECTED_MESSAGE)
            return session.receive_text(bytes(frame.data), self.snapshot)
        if frame.opcode is Opcode.BINARY:
            session.receive_binary()
        if frame.opcode is Opcode.CONT:
            raise Violation(CloseCode.UNEXPECTED_MESSAGE)
        return None  # PING (answered by the protocol), PONG, CLOSE

    async def _violation(self, conn: WSConnection, code: CloseCode) -> None:
        if code >= 4000 and conn.protocol.state is State.OPEN:
            conn.protocol.send_text(m.encode(m.ErrorMessage(code=int(code), reason=REASONS[code])))
        await conn.close(code, REASONS[code], _CLOSE_TIMEOUT)

    async def _reader(self, client: _Client, session: ServerSession) -> None:
        conn = client.conn
        protocol = conn.protocol
        while True:
            if not await conn.receive():
                return
            for event in protocol.events_received():
                if not isinstance(event, Frame):
                    continue
                if event.opcode is Opcode.PONG:
                    client.last_pong = time.monotonic()
                    continue
                try:
                    self._dispatch(session, event)
                except Violation as exc:
                    logger.info("session %s: %s", client.session_id, exc)
                    await self._violation(conn, exc.code)
                    return
            if protocol.state is not State.OPEN:
                # A close from the client (echoed by the protocol) or a framing error
                # (1002/1009, sent by the protocol): finish the closing handshake.
                await conn.close(CloseCode.NORMAL_CLOSURE, "", _CLOSE_TIMEOUT)
                return


async def serve(
    config: ServerConfig, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run a server for ``config`` until cancelled.

    Use ``port = await task_group.start(serve, config)`` to learn the bound port (for
    ``port: 0``). Cancelling the task group stops it; clients get close code 1001.
    """
    await Server(config).run(task_status=task_status)
