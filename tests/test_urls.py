"""URLs: a generated client config reaches its server; a wrong URL says what to use.

Issue 13: ``client-config`` wrote ``http://localhost:8000`` whatever the server's port
and path, and ``ws://host:port`` without the path failed with a bare "HTTP 404".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arraycrypto import CryptoClient, ServerConfig, SnapshotError, load_client_config, save_config

from .harness.cli import cli
from .harness.constants import HOST, SECRET
from .harness.http import http_get
from .harness.servers import client_config, running_server, server_config


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({}, "http://localhost:8000"),
        ({"port": 9100, "path": "/crypto"}, "ws://localhost:9100/crypto"),
        ({"port": 9100, "path": "/crypto/ws"}, "http://localhost:9100/crypto"),
        ({"host": "10.0.0.5", "port": 9100}, "http://10.0.0.5:9100"),
        ({"host": "::", "port": 9100}, "http://localhost:9100"),
        ({"host": "fd00::5"}, "http://[fd00::5]:8000"),
        ({"tls_certfile": "c.pem", "tls_keyfile": "k.pem"}, "https://localhost:8000"),
        (
            {"tls_certfile": "c.pem", "tls_keyfile": "k.pem", "path": "/push"},
            "wss://localhost:8000/push",
        ),
    ],
)
def test_client_config_uses_the_servers_port_and_path(
    tmp_path: Path, fields: dict[str, object], url: str
) -> None:
    server = tmp_path / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, **fields))  # type: ignore[arg-type]
    out = tmp_path / "client_config.json"
    result = cli("client-config", "--server-config", str(server), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert load_client_config(out).server_url == url
    assert f"for {url}" in result.stderr.decode()


def test_client_config_url_flag_still_wins(tmp_path: Path) -> None:
    server = tmp_path / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, port=9100))
    out = tmp_path / "client_config.json"
    args = ("--server-config", str(server), "--output", str(out), "--url", "http://h:1")
    assert cli("client-config", *args).returncode == 0
    assert load_client_config(out).server_url == "http://h:1"


pytestmark_anyio = pytest.mark.anyio


@pytestmark_anyio
async def test_a_404_names_the_websocket_path_and_routes() -> None:
    async with running_server(server_config(path="/crypto/ws")) as server:
        assert server.port
        status, _, body = await http_get(server.port, "/nope")
    assert status == 404
    assert json.loads(body) == {
        "error": "not found",
        "detail": "the WebSocket path is /crypto/ws; HTTP routes: /crypto/snapshot,"
        " /crypto/health, /crypto/metrics",
    }


@pytestmark_anyio
@pytest.mark.parametrize(
    ("server_path", "template", "tried"),
    [
        ("/ws", "ws://{host}:{port}", "ws://{host}:{port}"),  # the path left out
        ("/crypto", "http://{host}:{port}", "ws://{host}:{port}/ws"),  # needs ws://.../crypto
    ],
)
async def test_a_wrong_url_says_which_was_tried_and_the_servers_path(
    server_path: str, template: str, tried: str
) -> None:
    async with running_server(server_config(path=server_path)) as server:
        assert server.port
        url = template.format(host=HOST, port=server.port)
        config = client_config(server.port, server_url=url)
        async with CryptoClient(config) as client:
            with pytest.raises(SnapshotError) as info:
                await client.encrypt_message(b"x")
    message = str(info.value)
    assert f"{tried.format(host=HOST, port=server.port)}: WebSocket upgrade refused" in message
    assert f"HTTP 404: the WebSocket path is {server_path}" in message
    assert client.last_error is not None
    assert f"the WebSocket path is {server_path}" in client.last_error
