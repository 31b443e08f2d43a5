"""The command line through real pipes and a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from arraycrypto import CryptoConfig, Keyring, ServerConfig, save_config

from .harness.cli import cli
from .harness.constants import HOST, OTHER, SECRET
from .harness.servers import ServeProcess


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Path, Path]:
    server = tmp_path / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, tick_interval=0.1))
    return server, tmp_path / "client_config.json"


def write_client(path: Path, port: int, secret: bytes = SECRET) -> None:
    save_config(
        path,
        CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=secret, snapshot_timeout=5),
    )


def test_encrypt_decrypt_round_trip_through_pipes(configs: tuple[Path, Path]) -> None:
    server_path, client_path = configs
    data = os.urandom(300_000) + b"\x00\r\n\x1a"  # binary-safe
    with ServeProcess("--config", str(server_path)) as server:
        port = server.port
        write_client(client_path, port)
        enc = cli("encrypt", "--config", str(client_path), "--associated-data", "ctx", data=data)
        assert enc.returncode == 0, enc.stderr
    assert Keyring(SECRET).decrypt(enc.stdout, b"ctx") == data
    # decryption is offline: the server is gone now
    dec = cli("decrypt", "--config", str(client_path), "--associated-data", "ctx", data=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == data
    ttl = cli(
        "decrypt",
        "--config",
        str(client_path),
        "--associated-data",
        "ctx",
        "--ttl",
        "600",
        data=enc.stdout,
    )
    assert ttl.stdout == data


def test_decrypt_failure_is_opaque(configs: tuple[Path, Path]) -> None:
    # Once the header is recognised and its key is in the keyring, one message for all
    # (a wrong secret is told before that: tests/test_hints.py).
    _, client_path = configs
    write_client(client_path, 1)
    token = bytearray(Keyring(SECRET).encrypt(Keyring(SECRET).new_snapshot(1, bytes(16), 1), b"x"))
    token[-1] ^= 1
    result = cli("decrypt", "--config", str(client_path), data=bytes(token))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().strip() == (
        "arraycrypto: DecryptionError: decryption failed (the ciphertext was changed or cut"
        " short, or --associated-data differs from the sender's)"
    )


def test_bad_config_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"secret_key": "AAAA"}')
    result = cli("encrypt", "--config", str(path))
    assert result.returncode == 2
    assert b"secret_key" in result.stderr
    assert b"Traceback" not in result.stderr


def test_encrypt_with_wrong_secret_is_an_authentication_error(configs: tuple[Path, Path]) -> None:
    server_path, client_path = configs
    with ServeProcess("--config", str(server_path)) as server:
        port = server.port
        write_client(client_path, port, secret=OTHER)
        result = cli("encrypt", "--config", str(client_path), data=b"x")
    assert result.returncode == 1
    assert b"AuthenticationError" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_watch_prints_snapshots_until_interrupted(configs: tuple[Path, Path], backend: str) -> None:
    server_path, client_path = configs
    with ServeProcess("--config", str(server_path)) as server:
        port = server.port
        write_client(client_path, port)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arraycrypto",
                "watch",
                "--config",
                str(client_path),
                "--backend",
                backend,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    ticks = [line["tick"] for line in lines]
    assert ticks == sorted(set(ticks))
    assert all(line["type"] == "snapshot" for line in lines)


def test_client_config_from_the_server_config(tmp_path: Path) -> None:
    import stat

    from arraycrypto import load_client_config, load_server_config

    server_path = tmp_path / "server_config.json"
    server = load_server_config(server_path)
    out = tmp_path / "client_config.json"
    args = (
        "client-config",
        "--server-config",
        str(server_path),
        "--url",
        "http://example.invalid:9000",
        "--output",
        str(out),
    )
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    client = load_client_config(out)
    assert client.secret_key == server.secret_key
    assert client.server_url == "http://example.invalid:9000"
    assert server.secret_key.hex() not in (result.stdout + result.stderr).decode()
    again = cli(*args)  # never overwrites a config holding a secret
    assert again.returncode == 1
    assert b"not overwriting" in again.stderr
    missing = cli(
        "client-config",
        "--server-config",
        str(tmp_path / "nope.json"),
        "--output",
        str(tmp_path / "x.json"),
    )
    assert missing.returncode == 2
    assert not (tmp_path / "x.json").exists()


def test_encrypt_with_the_server_refusing_fails_at_once(tmp_path: Path) -> None:
    # Finding 4: a refused connection used to cost snapshot_timeout (10 s by default).
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    client_path = tmp_path / "client_config.json"
    save_config(
        client_path,
        CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET, snapshot_timeout=60),
    )
    result = cli("encrypt", "--config", str(client_path), data=b"x", timeout=20)
    assert result.returncode == 1
    assert b"refused" in result.stderr
    assert b"Traceback" not in result.stderr
