"""The HTTP shim's request-head parser and response builder, without I/O.

The server reads the request head itself (bounded in size and time) so that every
request gets an HTTP response: websockets' own parser silently drops a request with a
body or a Transfer-Encoding, and answers errors in text/plain. Upgrade requests on the
WebSocket path are then handed, head and all, to websockets' ``ServerProtocol``.
"""

from __future__ import annotations

import json
import re
from typing import Final, NamedTuple

__all__ = [
    "RequestHead",
    "find_head_end",
    "head_problem",
    "parse_request_head",
    "refusal",
    "response",
]

MAX_HEADERS: Final = 100
_TOKEN: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_REASONS: Final = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    426: "Upgrade Required",
    503: "Service Unavailable",
}


class RequestHead(NamedTuple):
    """A parsed request line and headers.

    ``headers`` has lowercased names with repeated values joined by ", ";
    ``raw_headers`` keeps every header line as it came (for the WebSocket upgrade);
    ``version`` is the request line's ("HTTP/1.1" or "HTTP/1.0").
    """

    method: str
    target: str
    headers: dict[str, str]
    raw_headers: tuple[tuple[str, str], ...] = ()
    version: str = "HTTP/1.1"

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def is_websocket_upgrade(self) -> bool:
        """Whether the client asks for a WebSocket upgrade."""
        return "websocket" in self.headers.get("upgrade", "").lower()


#: The longest method we could be sent (OPTIONS and friends are shorter).
_MAX_METHOD: Final = 16
_TLS_HANDSHAKE_RECORD: Final = 0x16


def head_problem(buffer: bytes | bytearray) -> str | None:
    """Why ``buffer`` can never become a request head: "tls", "bad", or None (it still can).

    Called on each read, so bytes that cannot begin a request line (a TLS ClientHello
    on a plain port, binary garbage) are answered at once rather than after
    ``http_read_timeout``.
    """
    if not buffer:
        return None
    if buffer[0] == _TLS_HANDSHAKE_RECORD:
        return "tls"
    space = buffer.find(b" ", 0, _MAX_METHOD + 1)
    method = buffer[: space if space >= 0 else _MAX_METHOD + 1]
    if space == 0 or not _TOKEN.match(bytes(method)) or (space < 0 and len(method) > _MAX_METHOD):
        return "bad"
    return None


def find_head_end(buffer: bytes | bytearray, within: int | None = None) -> int:
    """Return the length of the request head in ``buffer`` (through CRLFCRLF), or -1.

    ``within``: only a head that ends in the first ``within`` bytes counts.
    """
    end = buffer.find(b"\r\n\r\n", 0, within)
    return -1 if end < 0 else end + 4


def parse_request_head(head: bytes) -> RequestHead:
    """Parse an HTTP/1.x request head; raise ValueError if it is not valid."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("request head is not ASCII") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError("empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise ValueError("bad request line")
    method, target, version = parts
    if not _TOKEN.match(method.encode()) or not target.startswith("/"):
        raise ValueError("bad request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise ValueError("too many headers")
    headers: dict[str, str] = {}
    raw: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name.encode()):
            raise ValueError("bad header line")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raw.append((name, value))
    return RequestHead(method, target, headers, tuple(raw), version)


def response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Return a complete HTTP/1.1 response that closes the connection.

    A 204 carries neither a body nor Content-Type and Content-Length (RFC 9110, 8.6).
    ``Cache-Control: no-store`` unless ``headers`` set a Cache-Control of their own.
    """
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    if status != 204:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    else:
        body = b""
    if not any(name.lower() == "cache-control" for name, _ in headers):
        lines.append("Cache-Control: no-store")
    lines.append("Connection: close")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def refusal(exc: Exception) -> str:
    """Why a server refused a WebSocket upgrade: ``HTTP 404: <its detail>``.

    ``exc`` is websockets' handshake exception; a refusal by an arraycrypto server
    carries a JSON body whose ``detail`` (or ``error``) says what to do, e.g. which path
    is the WebSocket path. Anything else is described by the exception itself.
    """
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if not isinstance(status, int):
        return str(exc)
    said = ""
    try:
        body = json.loads(bytes(getattr(response, "body", b"") or b"")[:4096])
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        said = str(body.get("detail") or body.get("error") or "")[:200]
    return f"HTTP {status}: {said}" if said else f"HTTP {status}"
