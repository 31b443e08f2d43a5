"""Configuration: seed field names, file loading, validation naming the field, 0600."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from arraycrypto import (
    ConfigError,
    CryptoConfig,
    CryptoError,
    ServerConfig,
    load_client_config,
    load_server_config,
    save_config,
)
from arraycrypto.core.config import convert

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def write(tmp_path: Path, data: Any) -> Path:
    p = tmp_path / "config.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_seed_client_file_loads(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        {
            "server_url": "http://localhost:8000",
            "secret_key": KEY_B64,
            "max_drift": 60,
            "handshake_points": 8,
            "hash_size": 16,
        },
    )
    c = load_client_config(p)
    assert c.secret_key == KEY
    assert c.max_drift == 60
    assert c.server_urls == []


def test_seed_server_file_loads(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        {
            "secret_key": KEY_B64,
            "tick_interval": 1.0,
            "host": "0.0.0.0",
            "port": 8000,
            "hash_size": 16,
        },
    )
    c = load_server_config(p)
    assert (c.secret_key, c.tick_interval, c.port, c.hash_size) == (KEY, 1.0, 8000, 16)


def test_secret_as_bytes_or_base64() -> None:
    assert CryptoConfig(secret_key=KEY).secret_key == KEY
    assert CryptoConfig(secret_key=KEY_B64).secret_key == KEY  # type: ignore[arg-type]
    # the seed's example: raw bytes that are not base64 at all
    assert CryptoConfig(secret_key=b"your_secret_key!").secret_key == b"your_secret_key!"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"secret_key": base64.b64encode(b"short").decode()}, "secret_key"),
        ({"secret_key": "not base64!"}, "secret_key"),
        ({"secret_key": 12}, "secret_key"),
        ({"max_drift": -1}, "max_drift"),
        ({"max_drift": "60"}, "max_drift"),
        ({"hash_size": 8}, "hash_size"),
        ({"hash_size": 33}, "hash_size"),
        ({"handshake_points": 0}, "handshake_points"),
        ({"server_url": "ftp://x"}, "server URLs"),
        ({"sever_url": "http://x"}, "sever_url"),
        ({"old_secret_keys": ["AAAA"]}, "old_secret_keys[0]"),
    ],
)
def test_client_errors_name_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    data: dict[str, Any] = {"secret_key": KEY_B64, **change}
    with pytest.raises(ConfigError) as info:
        load_client_config(write(tmp_path, data))
    assert field in str(info.value)
    assert KEY_B64 not in str(info.value)
    assert isinstance(info.value, CryptoError)
    with pytest.raises(ConfigError):
        convert(data, CryptoConfig)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ({"tick_interval": 0}, "tick_interval"),
        ({"hash_size": 15}, "hash_size"),
        ({"path": "ws"}, "path"),
        ({"tls_certfile": "c.pem"}, "tls_keyfile"),
        ({"max_frame_size": 10}, "max_frame_size"),
        ({"host": 5}, "host"),
    ],
)
def test_server_errors_name_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_server_config(write(tmp_path, {"secret_key": KEY_B64, **change}))


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match="secret_key"):
        CryptoConfig(secret_key=b"short")
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(secret_key=KEY, port=-1)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"secret_key": "' + KEY_B64 + '"'])
def test_broken_json(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_client_config(write(tmp_path, text))


def test_missing_client_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_client_config(tmp_path / "nope.json")


def test_oversize_file(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_bytes(b" " * (2 << 20))
    with pytest.raises(ConfigError, match="1 MiB"):
        load_client_config(p)


def test_missing_server_file_is_created_0600_and_kept(tmp_path: Path) -> None:
    p = tmp_path / "server_config.json"
    first = load_server_config(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(first.secret_key) == 32
    assert first.port == 8000
    assert first.host == "0.0.0.0"
    assert load_server_config(p).secret_key == first.secret_key  # never overwritten
    raw = json.loads(p.read_text())
    assert base64.b64decode(raw["secret_key"]) == first.secret_key
    assert load_server_config(tmp_path / "other.json").secret_key != first.secret_key


def test_save_config_is_0600_even_over_a_wider_file(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text("{}")
    os.chmod(p, 0o644)
    save_config(p, CryptoConfig(secret_key=KEY))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert load_client_config(p).secret_key == KEY
    with pytest.raises(FileExistsError):
        save_config(p, CryptoConfig(secret_key=KEY), exclusive=True)


def test_repr_hides_secrets_and_pickle_refused() -> None:
    c = CryptoConfig(secret_key=KEY, old_secret_keys=[bytes(range(1, 33))])
    s = ServerConfig(secret_key=KEY)
    for obj in (c, s):
        text = repr(obj)
        assert KEY_B64 not in text
        assert repr(KEY) not in text
        assert "<hidden>" in text
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(obj)
    assert "bytes(range(1" not in repr(c)
    assert "server_url='http://localhost:8000'" in repr(c)
