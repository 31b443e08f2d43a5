"""The command line's surface: --version, help on every option, log level and format."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytest

import arraycrypto
from arraycrypto import CryptoConfig, Keyring, ServerConfig, save_config
from arraycrypto.cli import build_parser

from .harness.cli import cli
from .harness.constants import SECRET
from .harness.servers import ServeProcess


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode() == f"arraycrypto {arraycrypto.__version__}\n"


def test_the_main_help_fits_one_screen() -> None:
    result = cli("--help", env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) <= 24, "\n".join(lines)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    for command in ("keygen", "serve", "client-config", "encrypt", "decrypt", "watch", "inspect"):
        assert f"\n    {command} " in text or f"\n    {command}\n" in text


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_option_of_every_command_has_help() -> None:
    commands = _subparsers(build_parser())
    assert set(commands) == {
        "keygen", "serve", "client-config", "encrypt", "decrypt", "watch", "inspect"
    }  # fmt: skip
    for name, parser in commands.items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        options = {opt for action in parser._actions for opt in action.option_strings}
        assert {"-q", "--log-level"} <= options, name  # on every command


def test_quiet_hides_warnings_but_not_errors(tmp_path: Path) -> None:
    config = tmp_path / "client_config.json"
    save_config(config, CryptoConfig(secret_key=SECRET))
    config.chmod(0o644)  # a warning on every load
    ring = Keyring(SECRET)
    token = ring.encrypt(ring.new_snapshot(1, bytes(16), int(time.time() * 1000)), b"ok")
    loud = cli("decrypt", "--config", str(config), data=token)
    assert b"permissions 0644" in loud.stderr
    quiet = cli("decrypt", "-q", "--config", str(config), data=token)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"ok", b"")
    failing = cli("decrypt", "-q", "--config", str(config), data=b"")
    assert failing.returncode == 1
    assert failing.stderr.decode().strip() == (
        "arraycrypto: empty input: there is nothing to decrypt"
    )
    also = cli("decrypt", "--log-level", "error", "--config", str(config), data=token)
    assert also.stderr == b""


def test_the_log_level_flag_wins_over_the_config(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, log_level="warning"))
    # ServeProcess reads the port from an INFO line: the flag must win for it to start
    with ServeProcess("--config", str(path), "--log-level", "info") as server:
        assert "listening on" in server.output()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_serve_logs_json_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET))
    with ServeProcess("--config", str(path), "--log-format", "json") as server:
        output = server.output()
    records = json_lines(output)  # every line is JSON
    listening = [r for r in records if "listening on" in str(r["message"])]
    assert len(listening) == 1
    record = listening[0]
    assert set(record) == {"time", "level", "logger", "message"}
    assert record["level"] == "INFO"
    assert record["logger"] == "arraycrypto.server"
    assert str(record["time"]).endswith("Z")


def test_serve_json_logs_name_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET))
    with ServeProcess("--config", str(path), "--log-format", "json", "--workers", "2") as server:
        deadline = time.monotonic() + 30
        while server.output().count("listening on") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        output = server.output()
    records = json_lines(output)
    workers = {r.get("worker") for r in records if "listening on" in str(r["message"])}
    assert workers == {0, 1}
    assert any(r["logger"] == "arraycrypto.supervisor" and "worker" not in r for r in records)


def test_a_fatal_error_in_json_mode_is_json_too(tmp_path: Path) -> None:
    result = cli("serve", "--log-format", "json", "--config", str(tmp_path / "no" / "c.json"))
    assert result.returncode == 2
    (record,) = json_lines(result.stderr.decode())
    assert record["level"] == "ERROR"
    assert "cannot create config file" in str(record["message"])


@pytest.mark.parametrize("command", ["keygen", "inspect", "client-config", "watch"])
def test_log_options_are_accepted_everywhere(command: str, tmp_path: Path) -> None:
    result = cli(command, "--log-level", "nonsense")
    assert result.returncode == 2
    assert b"invalid choice" in result.stderr
