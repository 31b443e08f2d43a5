"""The server does what PROTOCOL.md says, where an independent client found it did not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from arraycrypto import CloseCode, CryptoConfig, Keyring, save_config

from .harness.constants import HOST, SECRET
from .harness.http import http_get, http_request
from .harness.peers import RawClient
from .harness.servers import running_server, server_config

pytestmark = pytest.mark.anyio


async def test_1009_reason_is_the_documented_one() -> None:
    async with running_server(server_config(max_frame_size=1024)) as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.recv_message()
        await client.send_text(b"x" * 2000)
        close = await client.wait_closed()
        assert close is not None
        assert (close.code, close.reason) == (CloseCode.MESSAGE_TOO_BIG, "frame too large")


async def test_http_endpoints_follow_the_path_prefix() -> None:
    # Section 4: server_url http://H:P/prefix means ws://H:P/prefix/ws and
    # http://H:P/prefix/snapshot; the server only answered /snapshot.
    async with running_server(server_config(path="/crypto/ws")) as server:
        assert server.port
        for route in ("/crypto/snapshot", "/crypto/health", "/crypto/metrics"):
            status, _, _ = await http_get(server.port, route)
            assert status == 200, route
        status, _, _ = await http_get(server.port, "/snapshot")
        assert status == 404  # one place for each route: under the prefix
        client = await RawClient.connect(server.port, "/crypto/ws")
        await client.handshake()
        await client.aclose()


async def test_a_tls_client_hello_on_the_plain_port_gets_a_quick_400() -> None:
    # Bytes that can never begin a request used to wait for http_read_timeout (408).
    config = server_config(http_read_timeout=30, handshake_timeout=30)
    async with running_server(config) as server:
        assert server.port
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
        with anyio.fail_after(5):
            status, _, body = await http_request(server.port, hello, timeout=5)
        assert status == 400
        assert "plain HTTP" in json.loads(body)["detail"]
        with anyio.fail_after(5):
            status, _, _ = await http_request(server.port, b"\x00\x01garbage", timeout=5)
        assert status == 400


async def test_allow_names_head_and_options_answers_a_cors_preflight() -> None:
    config = server_config(cors_origins=["https://app.example"])
    async with running_server(config) as server:
        port = server.port
        assert port
        status, headers, _ = await http_request(port, b"DELETE /snapshot HTTP/1.1\r\n\r\n")
        assert status == 405
        assert headers["allow"] == "GET, HEAD, OPTIONS"
        preflight = (
            b"OPTIONS /snapshot HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: GET\r\n\r\n"
        )
        status, headers, body = await http_request(port, preflight)
        assert status == 204
        assert body == b""
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
        assert "access-control-max-age" in headers
        stranger = preflight.replace(b"https://app.example", b"https://evil.example")
        status, headers, _ = await http_request(port, stranger)
        assert status == 204
        assert "access-control-allow-origin" not in headers


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, "closed"), (4001, "rejected")],
    ids=["1000-closed", "4001-rejected"],
)
async def test_a_client_that_closes_before_its_handshake_is_counted_by_its_code(
    code: int, reason: str
) -> None:
    # A Close before the handshake is no protocol error. PROTOCOL.md, "Close codes": a
    # client that does not trust the server's key id closes with 4001 (the Close
    # alone), which the server counts and logs as rejected; any other close is closed.
    async with running_server() as server:
        assert server.port
        client = await RawClient.connect(server.port)
        await client.recv_message()
        client.protocol.send_close(code, "leaving")
        await client.flush()
        close = await client.wait_closed()
        assert close is not None
        assert close.code == code  # echoed
        with anyio.fail_after(5):
            while server.metrics.connections:
                await anyio.sleep(0.01)
        assert server.metrics.handshakes_failed_total == {(reason,): 1}


def test_decrypt_checks_a_future_date_without_ttl(tmp_path: Path) -> None:
    # The CLI checked ciphertexts dated in the future only with --ttl.
    ring = Keyring(SECRET)
    far = ring.new_snapshot(1, bytes(16), 4_102_444_800_000)  # the year 2100
    token = ring.encrypt(far, b"from the future")
    config = tmp_path / "client.json"
    save_config(config, CryptoConfig(server_url=f"http://{HOST}:1", secret_key=SECRET))
    result = subprocess.run(
        [sys.executable, "-m", "arraycrypto", "decrypt", "--config", str(config)],
        input=token,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert b"future" in result.stderr
