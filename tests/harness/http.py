"""Raw HTTP/1.1 requests to the server's shim, and parsing what comes back."""

from __future__ import annotations

import anyio

from .constants import HOST

__all__ = ["http_get", "http_request", "parse_response"]


async def http_request(
    port: int, raw: bytes, *, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole response (the server closes), parse it."""
    async with await anyio.connect_tcp(HOST, port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(timeout):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lowercased names) and body of one HTTP response."""
    assert data, "empty reply from server"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


async def http_get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``path``; keyword arguments become headers (``user_agent`` → User-Agent)."""
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    raw = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()
    return await http_request(port, raw)
