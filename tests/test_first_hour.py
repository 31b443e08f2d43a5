"""The first hour of a new user, as a script: the README's quick start and client section.

Everything but ``pip install`` (the suite runs in the installed environment), in the
README's order, in fresh directories. Each documented output and error is checked twice:
that the README says it (:func:`documented`), and that the program does it. A README
statement that stops being true fails here.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from arraycrypto import ConfigError, CryptoConfig, Keyring, load_server_config, save_config

from .harness.cli import cli
from .harness.constants import HOST, OTHER
from .harness.http import http_get, http_request
from .harness.servers import ServeProcess
from .harness.tty import cli_on_tty

README = Path(__file__).resolve().parent.parent / "README.md"


def _flat(text: str) -> str:
    return " ".join(text.split())


def documented(*phrases: str) -> None:
    """Fail unless the README says each phrase (whitespace and line breaks aside)."""
    text = _flat(README.read_text())
    for phrase in phrases:
        assert _flat(phrase) in text, f"README.md no longer says: {phrase!r}"


def python_block(marker: str) -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if marker in b]
    return block


@dataclass
class FirstServer:
    """The server of the quick start, as a new user starts it."""

    home: Path  # where the user typed `arraycrypto serve`
    port: int
    output: str


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstServer]:
    """Quick start: `arraycrypto serve` in an empty directory (on a free port, not 8000)."""
    documented(
        "on first start it creates `server_config.json` with a fresh random secret (mode"
        " 0600) and listens on port 8000",
        ".venv/bin/pip install . && .venv/bin/arraycrypto serve",
    )
    home = tmp_path_factory.mktemp("first-hour")
    with ServeProcess(cwd=home) as server:
        yield FirstServer(home, server.port, server.output())


def test_quick_start_creates_the_config_and_serves(first: FirstServer) -> None:
    config = first.home / "server_config.json"
    assert f"created config {config.resolve()}" in first.output
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    server = load_server_config(config, create=False)
    assert server.port == 8000  # the file's default; the test ran it with --port 0
    assert len(server.secret_key) == 32
    assert f"listening on ws://{HOST}:{first.port}/ws" in first.output
    assert "Traceback" not in first.output
    documented("`arraycrypto serve` logs the address and the config path (never the secret)")
    assert base64.b64encode(server.secret_key).decode() not in first.output


def test_client_config_as_documented(first: FirstServer) -> None:
    documented(
        "`arraycrypto client-config` writes a `client_config.json` from"
        " `server_config.json` (mode 0600: it holds the secret; it never overwrites an"
        " existing file), with a `server_url` for the server's port and path on this machine",
        '"server_url": "http://localhost:8000"',
        '"max_drift": 60',
    )
    result = cli("client-config", cwd=first.home)
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr.decode() == "wrote client_config.json (mode 0600) for http://localhost:8000\n"
    )
    written = first.home / "client_config.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    doc = json.loads(written.read_text())
    server = json.loads((first.home / "server_config.json").read_text())
    assert doc["server_url"] == "http://localhost:8000"
    assert doc["secret_key"] == server["secret_key"]
    assert doc["max_drift"] == 60
    again = cli("client-config", cwd=first.home)
    assert again.returncode == 1
    assert again.stderr.decode() == "arraycrypto: client_config.json exists; not overwriting it\n"


@pytest.fixture(scope="module")
def live(first: FirstServer) -> Path:
    """A client config for the running server: `client-config --url http://SERVER:PORT`."""
    documented("`--url http://SERVER:8000` for another")
    out = first.home / "live.json"
    url = f"http://{HOST}:{first.port}"
    result = cli("client-config", "--url", url, "--output", str(out), cwd=first.home)
    assert result.returncode == 0, result.stderr
    return out


def test_the_python_client_example(live: Path, tmp_path: Path) -> None:
    example = python_block('CryptoClient("client_config.json")')
    shutil.copy(live, tmp_path / "client_config.json")
    (tmp_path / "example.py").write_text(example)
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "b'Your secret message'"  # the comment in the example says so
    assert lines[1].isdigit()
    assert "print(await client.decrypt_message(token))  # b'Your secret message'" in example


def test_the_command_line_block(live: Path, tmp_path: Path) -> None:
    config = str(live)
    documented("arraycrypto keygen # a fresh base64 secret")
    key = cli("keygen")
    assert len(base64.b64decode(key.stdout.strip(), validate=True)) == 32
    # encrypt: binary to a pipe; refused on a terminal; text with --armor
    sealed = cli("encrypt", "--config", config, data=b"plain text\n")
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stdout[0] == 1
    documented(
        "Binary is never written to a terminal", "(`--armor`, `-o FILE`, a pipe, or `--force`)"
    )
    code, shown, errors = cli_on_tty("encrypt", "--config", config, data=b"x")
    assert (code, shown) == (2, b"")
    assert b"use --armor for text, -o FILE, a pipe, or --force" in errors
    documented(
        "-----BEGIN ARRAYCRYPTO MESSAGE-----", "recognise it by its first line, with no flag"
    )
    armored = cli("encrypt", "--armor", "--config", config, data=b"plain text\n")
    assert armored.stdout.startswith(b"-----BEGIN ARRAYCRYPTO MESSAGE-----\n")
    for token in (sealed.stdout, armored.stdout):
        plain = cli("decrypt", "--config", config, data=token)
        assert (plain.returncode, plain.stdout) == (0, b"plain text\n")
    # inspect: no config, no secret, nothing verified
    documented("arraycrypto inspect < sealed # the header, no config, no secret")
    shown_header = cli("inspect", data=sealed.stdout, cwd=tmp_path).stdout.decode()
    assert shown_header.startswith("envelope     v1, single\n")
    assert "NOT AUTHENTICATED" in shown_header
    # watch: one JSON line per snapshot, and its state on stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", "watch", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        _, errors = proc.communicate(timeout=10)
    assert line["type"] == "snapshot"
    assert re.fullmatch(r"[0-9a-f]{32}", line["seed"])
    documented("`connected to URL`")
    assert f"connected to http://{HOST}:" in errors.decode()


def test_the_documented_errors(first: FirstServer, live: Path, tmp_path: Path) -> None:
    config = str(live)
    secret = load_server_config(first.home / "server_config.json", create=False).secret_key
    ring = Keyring(secret)
    token = ring.encrypt(ring.new_snapshot(1, bytes(16), int(time.time() * 1000)), b"x", b"u")

    documented("base64 of one: `base64 -d` it first")
    b64 = cli("decrypt", "--config", config, data=base64.b64encode(token))
    assert b"(it looks like base64 text: decode it first (base64 -d)" in b64.stderr

    documented("`made under key id 3f2a…, which is not in this keyring (it has: …)`")
    wrong = tmp_path / "wrong.json"
    save_config(wrong, CryptoConfig(secret_key=OTHER))
    refused = cli("decrypt", "--config", str(wrong), data=token).stderr.decode()
    assert f"made under key id {ring.primary.key_id.hex()}, which is not in this keyring" in refused

    documented("the one opaque `DecryptionError`, whose words name all the causes")
    opaque = cli("decrypt", "--config", config, "--associated-data", "v", data=token)
    assert opaque.stderr.decode() == (
        "arraycrypto: DecryptionError: decryption failed (the ciphertext was changed or cut"
        " short, or --associated-data differs from the sender's)\n"
    )
    assert cli("decrypt", "--config", config, "--associated-data", "u", data=token).stdout == b"x"

    documented("empty input")
    assert cli("decrypt", "--config", config).stderr == (
        b"arraycrypto: empty input: there is nothing to decrypt\n"
    )

    # The URL rule: ws:// is used as given; without the path the server says which it is.
    documented(
        "`ws://HOST:8000` alone asks for `/`, which the server refuses saying where to go"
        " (`HTTP 404: the WebSocket path is /ws; …`"
    )
    bare = tmp_path / "bare.json"
    save_config(
        bare,
        CryptoConfig(server_url=f"ws://{HOST}:{first.port}", secret_key=secret),
    )
    no_path = cli("encrypt", "--config", str(bare), data=b"x").stderr.decode()
    assert (
        f"ws://{HOST}:{first.port}: WebSocket upgrade refused: HTTP 404: the WebSocket path is /ws"
        in no_path
    )

    documented("last connection error: …: connection refused")
    down = tmp_path / "down.json"
    save_config(down, CryptoConfig(server_url=f"http://{HOST}:1", secret_key=OTHER))
    unreachable = cli("encrypt", "--config", str(down), data=b"x")
    assert unreachable.returncode == 1
    assert b"connection refused" in unreachable.stderr


@pytest.mark.anyio
async def test_migrating_from_the_original(first: FirstServer) -> None:
    documented("There is no `server.py` to run**: install the package and run `arraycrypto serve`")
    assert not (Path(__file__).resolve().parent.parent / "server.py").exists()

    documented(
        '`405` with `"detail": "the handshake is now the first WebSocket frame: see PROTOCOL.md"`'
    )
    status, _, body = await http_request(
        first.port, b"POST /handshake HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert status == 405
    assert (
        json.loads(body)["detail"]
        == "the handshake is now the first WebSocket frame: see PROTOCOL.md"
    )

    documented("`GET /snapshot`'s `seed` is hex** (16 bytes as 32 hex digits)")
    status, _, body = await http_get(first.port, "/snapshot")
    snapshot = json.loads(body)
    assert status == 200
    assert re.fullmatch(r"[0-9a-f]{32}", snapshot["seed"])
    assert re.fullmatch(r"[0-9a-f]{16}", snapshot["key_id"])

    documented(
        '`secret_key=b"your_secret_key"` is 15 bytes and is refused: ``ConfigError:'
        " `secret_key` must decode to 16..1024 bytes (got 15)``"
    )
    with pytest.raises(ConfigError) as info:
        CryptoConfig(server_url="http://localhost:8000", secret_key=b"your_secret_key")
    assert f"ConfigError: {info.value}" == (
        "ConfigError: `secret_key` must decode to 16..1024 bytes (got 15)"
    )
    documented("`generate_secret()` in Python")
    from arraycrypto import generate_secret

    CryptoConfig(secret_key=generate_secret())  # what to use instead


def test_configuration_by_environment_as_documented() -> None:
    documented("`` ARRAYCRYPTO_PORT: Expected `int`, got `str` ``")
    secret = base64.b64encode(OTHER).decode()
    with pytest.raises(ConfigError) as info:
        load_server_config(None, env={"ARRAYCRYPTO_SECRET_KEY": secret, "ARRAYCRYPTO_PORT": "x"})
    assert str(info.value) == "ARRAYCRYPTO_PORT: Expected `int`, got `str`"
    documented(
        "a list is a JSON array or comma-separated (`ARRAYCRYPTO_CORS_ORIGINS=https://a,https://b`)"
    )
    config = load_server_config(
        None,
        env={"ARRAYCRYPTO_SECRET_KEY": secret, "ARRAYCRYPTO_CORS_ORIGINS": "https://a,https://b"},
    )
    assert config.cors_origins == ["https://a", "https://b"]
