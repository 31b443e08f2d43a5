"""Signals a new operator needs: true, said once, and never missing.

Issue 13: the fd-limit warning (once, what it needs, how to raise it); --ttl nan / -1;
a wrong secret reported twice; watch silent when its server goes and comes back; a
max_drift shorter than the tick interval; config files with a secret readable by others.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from arraycrypto import (
    ConnectionState,
    CryptoClient,
    CryptoConfig,
    Keyring,
    ServerConfig,
    load_client_config,
    load_server_config,
    save_config,
)

from .harness.cli import cli
from .harness.clock import wait_for
from .harness.constants import HOST, OTHER, SECRET
from .harness.servers import ServeProcess, client_config, running_server, server_config


def _low_fd_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_the_fd_limit_warning_says_what_is_needed_and_how_once(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, max_connections=1000))
    with ServeProcess(
        "--config", str(path), "--workers", "2", preexec_fn=_low_fd_limit
    ) as server:  # fmt: skip
        # both workers are up once both have said where they listen
        deadline = time.monotonic() + 30
        while server.output().count("listening on") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        output = server.output()
    lines = [line for line in output.splitlines() if "open file limit" in line]
    assert len(lines) == 1, output  # one limit for the process group: said once
    assert "open file limit 256 is below the 1064 that max_connections 1000 needs" in lines[0]
    assert "ulimit -n 1064" in lines[0]
    assert "LimitNOFILE=" in lines[0]


@pytest.mark.parametrize("ttl", ["nan", "-1", "0", "inf", "soon"])
def test_ttl_must_be_a_positive_number_of_seconds(tmp_path: Path, ttl: str) -> None:
    config = tmp_path / "client_config.json"
    save_config(config, CryptoConfig(secret_key=SECRET))
    result = cli("decrypt", "--config", str(config), "--ttl", ttl, data=b"x")
    assert result.returncode == 2
    assert b"--ttl" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_wrong_secret_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, tick_interval=0.2))
    with ServeProcess("--config", str(path)) as server:
        config = tmp_path / "client_config.json"
        url = f"http://{HOST}:{server.port}"
        save_config(config, CryptoConfig(server_url=url, secret_key=OTHER))
        result = cli("encrypt", "--config", str(config), data=b"x")
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("arraycrypto: AuthenticationError: server uses key id")


# -- watch says when its server goes away and comes back -----------------------------------


class Lines:
    """Lines of a child's pipe, read with a bound on every wait."""

    def __init__(self, pipe: object) -> None:
        self.selector = selectors.DefaultSelector()
        self.selector.register(pipe, selectors.EVENT_READ)  # type: ignore[arg-type]
        self.fd = pipe.fileno()  # type: ignore[attr-defined]
        self.buffer = b""
        self.seen: list[str] = []

    def until(self, text: str, timeout: float = 30) -> list[str]:
        """Read until a line containing ``text``; return the lines read meanwhile."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while time.monotonic() < deadline:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                self.seen.append(line.decode())
                if text in self.seen[-1]:
                    return self.seen[start:]
            if self.selector.select(max(deadline - time.monotonic(), 0)):
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.buffer += chunk
        raise AssertionError(f"no line with {text!r} in {self.seen[start:]}")


def test_watch_logs_lost_and_reconnected_once_each(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, tick_interval=0.1))
    server = ServeProcess("--config", str(path))
    server.start()
    config = tmp_path / "client_config.json"
    url = f"http://{HOST}:{server.port}"
    save_config(config, CryptoConfig(server_url=url, secret_key=SECRET, reconnect_max_delay=0.2))
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", "watch", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        errors = Lines(proc.stderr)
        output = Lines(proc.stdout)
        assert "INFO" in errors.until(f"connected to {url}")[-1]
        output.until('"type":"snapshot"')
        server.stop()
        lost = errors.until("lost connection")[-1]
        assert "WARNING" in lost
        assert url in lost
        time.sleep(1.0)  # an outage with several failed attempts (retries every <= 0.2 s)
        server.start()
        during = errors.until(f"reconnected to {url}")
        assert during[-1].split(" after ")[1].endswith(" s")
        assert not any("lost connection" in line for line in during)  # no flood
        assert not any("cannot connect" in line for line in during)
        output.until('"type":"snapshot"')
    finally:
        proc.kill()
        proc.wait()
        server.stop()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_watch_says_when_the_server_cannot_be_reached_at_all(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    config = tmp_path / "client_config.json"
    url = f"http://{HOST}:{port}"
    save_config(config, CryptoConfig(server_url=url, secret_key=SECRET, reconnect_max_delay=0.1))
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", "watch", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        line = Lines(proc.stderr).until("cannot connect")[-1]
        assert f"cannot connect to {url}: connection refused; retrying" in line
        assert "WARNING" in line
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


# -- max_drift shorter than the tick interval ----------------------------------------------


@pytest.mark.anyio
async def test_a_max_drift_shorter_than_the_tick_interval_is_warned_at_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="arraycrypto.client")
    async with running_server(server_config(tick_interval=0.5)) as server:
        assert server.port
        config = client_config(server.port, max_drift=0.2)
        async with CryptoClient(config) as client:
            await wait_for(lambda: client.state is ConnectionState.CONNECTED)
        drift = [r for r in caplog.records if "the server ticks every" in r.getMessage()]
        assert len(drift) == 1
        assert drift[0].getMessage() == (
            f"http://{HOST}:{server.port}: the server ticks every 0.5 s but max_drift is"
            " 0.2 s: each snapshot may encrypt only for 0.2 s, so encryption stalls"
            " until the next one; set max_drift to at least 0.5 (60 is the default)"
        )
        caplog.clear()
        async with CryptoClient(client_config(server.port, max_drift=1.0)) as client:
            await client.authenticate()
        assert not [r for r in caplog.records if "the server ticks every" in r.getMessage()]


@pytest.mark.anyio
async def test_the_encrypt_command_says_max_drift_is_too_short(tmp_path: Path) -> None:
    # The one-shot command silences the client's connection lines (its own error message
    # says it all), and that hid this warning too: a config that stalls encryption for
    # most of every tick went unsaid. It is about the config, not the connection.
    async with running_server(server_config(tick_interval=0.5)) as server:
        assert server.port
        path = tmp_path / "client.json"
        save_config(path, client_config(server.port, max_drift=0.2))
        result = await anyio.to_thread.run_sync(
            lambda: cli("encrypt", "--config", str(path), data=b"hello")
        )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    drift = [line for line in lines if "the server ticks every 0.5 s but max_drift is" in line]
    assert len(drift) == 1, lines
    assert "WARNING" in drift[0]
    assert len(lines) == 1, lines  # and nothing else: the connection's lines stay quiet


# -- config files holding a secret, readable by others -------------------------------------


def test_a_config_readable_by_others_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="arraycrypto")
    path = tmp_path / "client_config.json"
    save_config(path, CryptoConfig(secret_key=SECRET))
    load_client_config(path)
    assert not caplog.records  # 0600: nothing to say
    path.chmod(0o644)
    load_client_config(path)
    load_client_config(path)  # said once per file
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"permissions 0644 for {path} are too open: it holds a secret that others on this"
        f" machine can read; chmod 600 {path}"
    )
    caplog.clear()
    server = tmp_path / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET))
    server.chmod(0o640)
    load_server_config(server)
    assert "permissions 0640" in caplog.records[0].getMessage()


def test_the_cli_warns_about_an_open_config_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "client_config.json"
    save_config(path, CryptoConfig(secret_key=SECRET))
    path.chmod(0o604)
    ring = Keyring(SECRET)
    token = ring.encrypt(ring.new_snapshot(1, bytes(16), int(time.time() * 1000)), b"ok")
    result = cli("decrypt", "--config", str(path), data=token)
    assert result.returncode == 0
    assert result.stdout == b"ok"
    text = result.stderr.decode()
    assert "permissions 0604" in text
    assert f"chmod 600 {path}" in text
    assert base64.b64encode(SECRET).decode() not in text
    assert json.loads(path.read_text())["secret_key"] not in text
