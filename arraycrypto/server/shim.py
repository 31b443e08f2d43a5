"""The HTTP shim on the WebSocket port: read a request head, answer it, linger, close.

One request per connection, every answer JSON (``/metrics`` excepted), CORS only for
the configured origins. The request head is read here, bounded in size and time, for
every connection, WebSocket upgrades included: websockets' own parser drops a request
with a body without any reply, and answers errors in text/plain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import anyio
import msgspec

from ..core import http
from ..core.config import ServerConfig
from ..net.driver import Stream
from ..net.sockets import STREAM_ERRORS
from .metrics import Metrics

__all__ = ["Failure", "Routes", "Shim"]

_METHODS: Final = "GET, HEAD, OPTIONS"
_HEADER_LIST: Final = re.compile(r"^[A-Za-z0-9-]+(\s*,\s*[A-Za-z0-9-]+)*$")
_LINGER_TIMEOUT: Final = 1.0  # seconds to drain an unread request body before closing
_LINGER_BYTES: Final = 1 << 20
#: Paths counted under their own label in http_requests_total; anything else is "other".
_LABELLED: Final = frozenset({"/snapshot", "/health", "/metrics", "/handshake"})


class Failure(NamedTuple):
    """Why a request head could not be read, and what to answer (status 0: nothing)."""

    status: int
    body: dict[str, str]


_SILENT: Final = Failure(0, {})  # connected and closed without a byte
_BAD: Final = Failure(400, {"error": "bad request"})
_TIMEOUT: Final = Failure(408, {"error": "request timeout"})
_NOT_TLS: Final = Failure(
    400,
    {
        "error": "bad request",
        "detail": "this port speaks plain HTTP and WebSocket (http://, ws://), not TLS",
    },
)


class Routes(msgspec.Struct, frozen=True):
    """What the shim serves, supplied by the server: each called per request.

    ``snapshot`` returns the body and the whole seconds it stays current (every server
    of a fleet serves the same bytes for a tick, so caches may keep it that long).
    """

    snapshot: Callable[[], tuple[bytes, int]]
    health: Callable[[], dict[str, Any]]
    metrics: Callable[[], bytes]


class Shim:
    """Reads request heads and answers plain HTTP requests."""

    def __init__(self, config: ServerConfig, metrics: Metrics, routes: Routes) -> None:
        self.metrics = metrics
        self.routes = routes
        self.reload(config)

    def reload(self, config: ServerConfig) -> None:
        """Take a new config (path, CORS, limits) for the next requests."""
        self.config = config
        # The HTTP routes live next to the WebSocket path: /ws -> /snapshot,
        # /crypto/ws -> /crypto/snapshot (PROTOCOL.md, section 4).
        self._base = config.path.rsplit("/", 1)[0]
        # Says where to go: a client with a wrong URL shows this in its error.
        routes = ", ".join(f"{self._base}/{name}" for name in ("snapshot", "health", "metrics"))
        self._not_found = {
            "error": "not found",
            "detail": f"the WebSocket path is {config.path}; HTTP routes: {routes}",
        }

    async def read_head(
        self, stream: Stream, remaining: float, prefix: bytes = b""
    ) -> tuple[bytes, bytes] | Failure:
        """Return (head, bytes after it), or why there is no head to answer.

        The head must arrive within ``http_read_timeout`` and ``remaining`` seconds (what
        is left of the connection's pre-authentication deadline); bytes that can never
        begin a request (a TLS ClientHello, binary garbage) are refused at once.
        ``prefix``: what was already read from the stream (by the room).
        """
        buffer = bytearray(prefix)
        limit = self.config.http_max_request_size
        with anyio.move_on_after(min(self.config.http_read_timeout, remaining)):
            while True:
                # Read to one byte past the limit, never further: a head ending there.
                end = http.find_head_end(buffer, limit + 1)
                if end >= 0:
                    return bytes(buffer[:end]), bytes(buffer[end:])
                problem = http.head_problem(buffer)
                if problem == "tls":
                    return _NOT_TLS
                if problem is not None or len(buffer) > limit:
                    return _BAD
                try:
                    # Never more than one byte past the limit: enough to refuse it.
                    buffer += await stream.receive(limit + 1 - len(buffer))
                except anyio.EndOfStream:
                    return _BAD if buffer else _SILENT
        return _TIMEOUT

    async def answer_failure(self, stream: Stream, failure: Failure) -> None:
        """Answer a request head that could not be read (nothing for a silent peer)."""
        if failure.status:
            await self.reply(stream, "-", failure.status, failure.body)

    def route(self, path: str) -> str | None:
        """The route a path names under the HTTP base (``/snapshot``...), if any."""
        base = self._base
        return path[len(base) :] if path.startswith(base + "/") else None

    async def answer(self, stream: Stream, request: http.RequestHead) -> None:
        """Answer a plain HTTP request (anything but a WebSocket upgrade on our path)."""
        path, method = request.path, request.method
        route = self.route(path) or "-"  # "-": no route of ours (a 404)
        routes = self.routes
        if path == self.config.path and method == "GET":
            await self.reply(
                stream,
                route,
                426,
                {"error": "websocket upgrade required"},
                request,
                (("Upgrade", "websocket"),),
            )
        elif method == "OPTIONS":
            await self.reply(stream, route, 204, b"", request, self._preflight(request))
        elif method not in ("GET", "HEAD"):
            body: dict[str, str] = {"error": "method not allowed"}
            if route == "/handshake":
                body["detail"] = "the handshake is now the first WebSocket frame: see PROTOCOL.md"
            await self.reply(stream, route, 405, body, request, (("Allow", _METHODS),))
        elif route == "/snapshot":
            current, max_age = routes.snapshot()
            cache = (("Cache-Control", f"public, max-age={max_age}"),)
            await self.reply(stream, route, 200, current, request, cache)
        elif route == "/health":
            health = routes.health()
            # Draining: load balancers must stop sending new clients here.
            status = 503 if health.get("status") == "draining" else 200
            await self.reply(stream, route, status, health, request)
        elif route == "/metrics":
            await self.reply(
                stream,
                route,
                200,
                routes.metrics(),
                request,
                content_type="text/plain; version=0.0.4",
            )
        else:
            await self.reply(stream, route, 404, self._not_found, request)

    def _preflight(self, request: http.RequestHead) -> tuple[tuple[str, str], ...]:
        headers: tuple[tuple[str, str], ...] = (("Allow", _METHODS),)
        if request.headers.get("origin") in self.config.cors_origins:
            headers += (
                ("Access-Control-Allow-Methods", _METHODS),
                ("Access-Control-Max-Age", "600"),
            )
            asked = request.headers.get("access-control-request-headers")
            if asked and _HEADER_LIST.match(asked):
                headers += (("Access-Control-Allow-Headers", asked),)
        return headers

    async def reply(
        self,
        stream: Stream,
        path: str,
        status: int,
        body: bytes | dict[str, Any],
        request: http.RequestHead | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        content_type: str = "application/json",
    ) -> None:
        """Send one response, count it, then linger so the client reads all of it."""
        label = path if path in _LABELLED else "other"
        self.metrics.count("http_requests_total", label, str(status))
        payload = body if isinstance(body, bytes) else msgspec.json.encode(body)
        if request is not None:
            origin = request.headers.get("origin")
            if origin is not None and origin in self.config.cors_origins:
                headers += (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))
        data = http.response(status, payload, content_type=content_type, headers=headers)
        if request is not None and request.method == "HEAD":
            data = data[: len(data) - len(payload)]
        with anyio.move_on_after(self.config.write_timeout):
            await stream.send(data)
        await linger(stream)


async def linger(stream: Stream) -> None:
    """Half-close, then drain what the client still sends, bounded in time and size.

    Closing a socket with unread input makes the kernel send RST, which can destroy the
    response before the client reads it (a POST with a body, pipelined bytes).
    """
    with anyio.move_on_after(_LINGER_TIMEOUT):
        try:
            await stream.send_eof()
            drained = 0
            while drained < _LINGER_BYTES:
                drained += len(await stream.receive())
        except STREAM_ERRORS:
            pass
