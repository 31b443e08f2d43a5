"""The HTTP shim on the WebSocket port: read a request head, answer it, linger, close.

One request per connection, every answer JSON (``/metrics`` excepted), CORS only for
the configured origins. The request head is read here, bounded in size and time, for
every connection, WebSocket upgrades included: websockets' own parser drops a request
with a body without any reply, and answers errors in text/plain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import anyio
import msgspec

from ..core import http
from ..core.config import ServerConfig
from ..net.driver import Stream
from ..net.sockets import STREAM_ERRORS
from .metrics import Metrics

__all__ = ["Routes", "Shim"]

_LINGER_TIMEOUT: Final = 1.0  # seconds to drain an unread request body before closing
_LINGER_BYTES: Final = 1 << 20
#: Paths counted under their own label in http_requests_total; anything else is "other".
_LABELLED: Final = frozenset({"/snapshot", "/health", "/metrics", "/handshake"})


class Routes(msgspec.Struct, frozen=True):
    """What the shim serves, supplied by the server: each called per request."""

    snapshot: Callable[[], bytes]
    health: Callable[[], dict[str, Any]]
    metrics: Callable[[], bytes]


class Shim:
    """Reads request heads and answers plain HTTP requests."""

    def __init__(self, config: ServerConfig, metrics: Metrics, routes: Routes) -> None:
        self.config = config
        self.metrics = metrics
        self.routes = routes

    async def read_head(self, stream: Stream, remaining: float) -> tuple[bytes, bytes] | int:
        """Return (head, bytes after it), or the HTTP status of the failure (400 or 408).

        The head must arrive within ``http_read_timeout`` and ``remaining`` seconds (what
        is left of the connection's pre-authentication deadline). 0 means the peer
        closed without sending a byte: nothing to answer.
        """
        buffer = bytearray()
        limit = self.config.http_max_request_size
        with anyio.move_on_after(min(self.config.http_read_timeout, remaining)):
            while True:
                end = http.find_head_end(buffer)
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

    async def answer_failure(self, stream: Stream, status: int) -> None:
        """Answer a request head that could not be read (400 or 408)."""
        error = "request timeout" if status == 408 else "bad request"
        await self.reply(stream, "-", status, {"error": error})

    async def answer(self, stream: Stream, request: http.RequestHead) -> None:
        """Answer a plain HTTP request (anything but a WebSocket upgrade on our path)."""
        path = request.path
        routes = self.routes
        if path == self.config.path and request.method == "GET":
            await self.reply(
                stream,
                path,
                426,
                {"error": "websocket upgrade required"},
                request,
                (("Upgrade", "websocket"),),
            )
        elif request.method not in ("GET", "HEAD"):
            body: dict[str, str] = {"error": "method not allowed"}
            if path == "/handshake":
                body["detail"] = "the handshake is now the first WebSocket frame: see PROTOCOL.md"
            await self.reply(stream, path, 405, body, request, (("Allow", "GET"),))
        elif path == "/snapshot":
            await self.reply(stream, path, 200, routes.snapshot(), request)
        elif path == "/health":
            await self.reply(stream, path, 200, routes.health(), request)
        elif path == "/metrics":
            await self.reply(
                stream,
                path,
                200,
                routes.metrics(),
                request,
                content_type="text/plain; version=0.0.4",
            )
        else:
            await self.reply(stream, path, 404, {"error": "not found"}, request)

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
        self.metrics.count(
            "http_requests_total", path if path in _LABELLED else "other", str(status)
        )
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
