"""The real ``arraycrypto serve`` process: config creation, answering, SIGTERM/SIGINT."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from arraycrypto import CloseCode, load_server_config

from .harness.http import http_get
from .harness.peers import RawClient
from .harness.servers import ServeProcess

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_creates_config_answers_and_stops_cleanly(
    tmp_path: Path, signum: signal.Signals, anyio_backend: str
) -> None:
    config_path = tmp_path / "server_config.json"
    with ServeProcess("--config", str(config_path), "--backend", anyio_backend) as server:
        port = server.port
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
        config = load_server_config(config_path, create=False)
        assert len(config.secret_key) == 32
        status, _, body = await http_get(port, "/health")
        assert status == 200
        assert json.loads(body)["status"] == "healthy"

        from arraycrypto import Keyring

        client = await RawClient.connect(port)
        await client.handshake(Keyring(config.secret_key))
        server.signal(signum)
        close = await client.wait_closed(timeout=5)
        assert close is not None
        assert close.code == CloseCode.GOING_AWAY
        started = time.monotonic()
        with anyio.fail_after(5):
            while server.returncode is None:
                await anyio.sleep(0.02)
        assert server.returncode == 0
        assert time.monotonic() - started < 3
        output = server.output()
    secret_b64 = json.loads(config_path.read_text())["secret_key"]
    assert secret_b64 not in output
    assert f"created config {config_path}" in output


def test_serve_keeps_an_existing_config(tmp_path: Path) -> None:
    config_path = tmp_path / "c.json"
    first = load_server_config(config_path)
    with ServeProcess("--config", str(config_path)) as server:
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    assert load_server_config(config_path).secret_key == first.secret_key


def serve_once(config_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``arraycrypto serve`` expecting it to refuse to start (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "arraycrypto", "serve", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_rejects_a_broken_config(tmp_path: Path) -> None:
    config_path = tmp_path / "c.json"
    config_path.write_text('{"secret_key": "AAAA", "port": "x"}')
    result = serve_once(config_path)
    assert result.returncode == 2
    assert "c.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_keygen_prints_a_fresh_32_byte_secret() -> None:
    import base64

    out = [
        subprocess.run(
            [sys.executable, "-m", "arraycrypto", "keygen"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert out[0] != out[1]
    assert all(len(base64.b64decode(o, validate=True)) == 32 for o in out)


def test_serve_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "arraycrypto",
                "serve",
                "--config",
                str(tmp_path / "c.json"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_a_missing_certificate(tmp_path: Path) -> None:
    config_path = tmp_path / "c.json"
    config = load_server_config(config_path)
    data = json.loads(config_path.read_text())
    data.update(tls_certfile=str(tmp_path / "no.pem"), tls_keyfile=str(tmp_path / "no.pem"))
    config_path.write_text(json.dumps(data))
    result = serve_once(config_path)
    assert result.returncode == 2
    assert "tls_certfile" in result.stderr
    assert "Traceback" not in result.stderr
    assert base64.b64encode(config.secret_key).decode() not in result.stderr


def _low_fd_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


async def test_running_out_of_descriptors_slows_accepting_but_never_crashes(
    tmp_path: Path,
) -> None:
    import socket

    config_path = tmp_path / "c.json"
    load_server_config(config_path)
    data = json.loads(config_path.read_text())
    data.update(http_read_timeout=0.3, max_connections=1000)
    config_path.write_text(json.dumps(data))
    with ServeProcess("--config", str(config_path), preexec_fn=_low_fd_limit) as server:
        port = server.port
        assert "open file limit 64 is below" in server.output()
        hogs = []
        for _ in range(120):  # more than the 64 descriptors the server may hold
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            hogs.append(s)
        await anyio.sleep(1.0)
        for s in hogs:
            s.close()
        with anyio.fail_after(20):
            while True:
                try:
                    status, _, body = await http_get(port, "/metrics")
                except OSError:
                    status = 0
                if status == 200:
                    break
                await anyio.sleep(0.1)
        assert server.returncode is None
        errors = [
            line
            for line in body.decode().splitlines()
            if line.startswith("arraycrypto_accept_errors_total ")
        ]
        assert float(errors[0].split()[1]) > 0
