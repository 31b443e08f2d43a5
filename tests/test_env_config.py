"""Configuration as services are deployed: environment variables and a secret file.

Precedence, highest first: a command-line flag, the environment (``ARRAYCRYPTO_*``),
the config file, the default. The loaders take the environment as an argument (the CLI
and the clients pass ``os.environ``), so most of this runs with no process at all.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from arraycrypto import (
    ConfigError,
    CryptoClient,
    CryptoConfig,
    ServerConfig,
    load_client_config,
    load_server_config,
    save_config,
)

from .harness.cli import cli
from .harness.constants import HOST, OTHER, SECRET
from .harness.servers import ServeProcess

SECRET_B64 = base64.b64encode(SECRET).decode()
OTHER_B64 = base64.b64encode(OTHER).decode()


def test_every_field_can_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "ARRAYCRYPTO_SECRET_KEY": SECRET_B64,
        "ARRAYCRYPTO_PORT": "9100",
        "ARRAYCRYPTO_TICK_INTERVAL": "0.5",
        "ARRAYCRYPTO_CORS_ORIGINS": "https://a.example, https://b.example",
        "ARRAYCRYPTO_MAX_PENDING": "10",
        "ARRAYCRYPTO_TLS_CERTFILE": "/etc/c.pem",
        "ARRAYCRYPTO_TLS_KEYFILE": "/etc/k.pem",
        "UNRELATED": "x",
    }
    server = load_server_config(tmp_path / "none.json", env=env)
    assert server.secret_key == SECRET
    assert (server.port, server.tick_interval, server.max_pending) == (9100, 0.5, 10)
    assert server.cors_origins == ["https://a.example", "https://b.example"]
    assert server.tls_certfile == "/etc/c.pem"
    assert not (tmp_path / "none.json").exists()  # the secret came from the environment
    client = load_client_config(
        None,
        env={
            "ARRAYCRYPTO_SECRET_KEY": SECRET_B64,
            "ARRAYCRYPTO_SERVER_URL": "http://h:9100",
            "ARRAYCRYPTO_SERVER_URLS": '["http://a:1", "http://b:2"]',
            "ARRAYCRYPTO_OLD_SECRET_KEYS": OTHER_B64,
            "ARRAYCRYPTO_MAX_DRIFT": "30",
        },
    )
    assert client.server_url == "http://h:9100"
    assert client.server_urls == ["http://a:1", "http://b:2"]
    assert client.old_secret_keys == [OTHER]
    assert client.max_drift == 30


def test_the_environment_wins_over_the_file_and_the_file_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, ServerConfig(secret_key=SECRET, port=9000, tick_interval=2.0))
    config = load_server_config(path, env={"ARRAYCRYPTO_PORT": "9100"})
    assert config.port == 9100  # environment over file
    assert config.tick_interval == 2.0  # file over default
    assert config.hash_size == 16  # default
    assert load_server_config(path, env={}).port == 9000
    assert load_server_config(path).port == 9000  # no environment unless given one


def test_the_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET_B64 + "\n")  # as `arraycrypto keygen > secret` writes it
    secret.chmod(0o400)
    path = tmp_path / "client_config.json"
    path.write_text(json.dumps({"server_url": "http://h:1", "secret_key_file": str(secret)}))
    config = load_client_config(path)
    assert config.secret_key == SECRET
    via_env = load_client_config(None, env={"ARRAYCRYPTO_SECRET_KEY_FILE": str(secret)})
    assert via_env.secret_key == SECRET
    # the environment's secret_key_file replaces the file's secret_key: one setting
    save_config(path, CryptoConfig(secret_key=OTHER))
    assert (
        load_client_config(path, env={"ARRAYCRYPTO_SECRET_KEY_FILE": str(secret)}).secret_key
        == SECRET
    )


def test_secret_key_and_secret_key_file_are_exclusive(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET_B64)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"secret_key": SECRET_B64, "secret_key_file": str(secret)}))
    with pytest.raises(ConfigError) as info:
        load_client_config(path)
    assert str(info.value) == (f"{path}: give `secret_key` or `secret_key_file`, not both")
    env = {"ARRAYCRYPTO_SECRET_KEY": SECRET_B64, "ARRAYCRYPTO_SECRET_KEY_FILE": str(secret)}
    with pytest.raises(ConfigError, match="ARRAYCRYPTO_SECRET_KEY or ARRAYCRYPTO_SECRET_KEY_FILE"):
        load_client_config(None, env=env)


def test_errors_name_the_variable_or_the_secret_file_never_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_server_config(
            None, env={"ARRAYCRYPTO_SECRET_KEY": SECRET_B64, "ARRAYCRYPTO_PORT": "x"}
        )
    assert str(info.value).startswith("ARRAYCRYPTO_PORT: Expected `int`")
    with pytest.raises(ConfigError) as info:
        load_server_config(
            None, env={"ARRAYCRYPTO_SECRET_KEY": SECRET_B64, "ARRAYCRYPTO_PORT": "70000"}
        )
    assert "`port` must be between 0 and 65535" in str(info.value)
    assert "ARRAYCRYPTO_PORT" in str(info.value)
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        load_client_config(None, env={"ARRAYCRYPTO_SECRET_KEY_FILE": str(missing)})
    assert str(info.value) == (
        f"`secret_key_file` {missing}: cannot read it (No such file or directory)"
    )
    bad = tmp_path / "bad"
    bad.write_text("not base64 at all " + SECRET_B64[:10])
    with pytest.raises(ConfigError) as info:
        load_client_config(None, env={"ARRAYCRYPTO_SECRET_KEY_FILE": str(bad)})
    assert str(info.value) == (
        f"`secret_key_file` {bad}: not valid base64 (arraycrypto keygen makes one)"
    )
    assert SECRET_B64[:10] not in str(info.value)


def test_without_a_secret_anywhere_a_client_config_file_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_client_config(tmp_path / "missing.json", env={})
    with pytest.raises(ConfigError, match="`secret_key`"):
        load_client_config(None, env={})


def test_an_open_secret_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="arraycrypto")
    secret = tmp_path / "secret"
    secret.write_text(SECRET_B64)
    secret.chmod(0o644)
    load_client_config(None, env={"ARRAYCRYPTO_SECRET_KEY_FILE": str(secret)})
    assert [r.getMessage() for r in caplog.records] == [
        f"permissions 0644 for {secret} are too open: it holds a secret that others on"
        f" this machine can read; chmod 600 {secret}"
    ]


@pytest.mark.anyio
async def test_a_client_from_a_path_reads_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "client_config.json"
    save_config(path, CryptoConfig(secret_key=SECRET))
    monkeypatch.setenv("ARRAYCRYPTO_SERVER_URL", "http://from-env:1")
    assert CryptoClient(path).config.server_url == "http://from-env:1"
    built = CryptoConfig(secret_key=SECRET)
    assert CryptoClient(built).config.server_url == "http://localhost:8000"  # as given


# -- the command line ----------------------------------------------------------------------


def test_serve_from_the_environment_alone_and_flags_win(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET_B64)
    secret.chmod(0o600)
    env = {
        **os.environ,
        "ARRAYCRYPTO_SECRET_KEY_FILE": str(secret),
        "ARRAYCRYPTO_TICK_INTERVAL": "0.1",
        "ARRAYCRYPTO_PORT": "1",  # the --port flag that ServeProcess passes wins
        "ARRAYCRYPTO_PATH": "/crypto/ws",
    }
    missing = tmp_path / "server_config.json"
    with ServeProcess("--config", str(missing), env=env) as server:
        # no config file: run from the environment, and create none
        assert f"listening on ws://127.0.0.1:{server.port}/crypto/ws " in server.output()
        assert f"no config file {missing}: using the environment" in server.output()
        client_env = {
            **os.environ,
            "ARRAYCRYPTO_SECRET_KEY": SECRET_B64,
            "ARRAYCRYPTO_SERVER_URL": f"http://{HOST}:{server.port}/crypto",
        }
        enc = cli("encrypt", "--force", data=b"from env", env=client_env, cwd=tmp_path)
        assert enc.returncode == 0, enc.stderr
    dec = cli("decrypt", data=enc.stdout, env=client_env, cwd=tmp_path)
    assert dec.stdout == b"from env"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]
