"""A config mistake gets an error that says what to do, and leaves nothing behind.

Found by following the README as a new user would (a field name mistyped, a client's
config given to the server, a CA file that is not there, a bad port that still left a
new secret on disk).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from arraycrypto import ConfigError, load_client_config, load_server_config

from .harness.cli import cli


def write(path: Path, **fields: object) -> Path:
    path.write_text(json.dumps(fields))
    path.chmod(0o600)
    return path


def test_a_mistyped_field_gets_the_name_it_was_meant_to_be(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", server_url="http://127.0.0.1:1", secret="x")
    with pytest.raises(ConfigError, match=r"unknown field `secret`.*did you mean `secret_key`"):
        load_client_config(path)
    path = write(tmp_path / "s.json", secret_key="QUJDREVGR0hJSktMTU5PUA==", tick_intervl=1)
    with pytest.raises(ConfigError, match="did you mean `tick_interval`"):
        load_server_config(path)


def test_a_config_of_the_other_side_is_named_as_such(tmp_path: Path) -> None:
    server = write(
        tmp_path / "server_config.json", secret_key="QUJDREVGR0hJSktMTU5PUA==", tick_interval=1
    )
    with pytest.raises(
        ConfigError,
        match=r"`tick_interval` is a server setting: is this a server's config.*client-config",
    ):
        load_client_config(server)
    client = write(
        tmp_path / "client_config.json",
        secret_key="QUJDREVGR0hJSktMTU5PUA==",
        server_url="http://h:1",
    )
    with pytest.raises(
        ConfigError, match=r"`server_url` is a client setting: is this a client's config"
    ):
        load_server_config(client, create=False)


def test_a_missing_ca_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        server_url="https://127.0.0.1:1",
        secret_key="QUJDREVGR0hJSktMTU5PUA==",
        ca_file=str(tmp_path / "nope.pem"),
    )
    with pytest.raises(ConfigError, match=r"`ca_file`.*nope.pem.*(no such file|No such file)"):
        load_client_config(path)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        ((), {"ARRAYCRYPTO_PORT": "abc"}),
        (("--port", "99999"), {}),
        ((), {"ARRAYCRYPTO_PORT": "0x"}),
    ],
    ids=["bad variable", "bad flag", "bad number"],
)
def test_a_serve_that_fails_on_its_settings_creates_no_config(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = cli("serve", *args, cwd=tmp_path, env={**os.environ, **env}, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr.decode()
    assert "SECRET_KEY" not in result.stderr.decode()  # a variable nobody set: not named
    # A new secret written by a command that then refused to run is a secret nobody
    # asked for, and the next start would use it silently.
    assert not (tmp_path / "server_config.json").exists()


def test_a_phrase_for_a_secret_says_how_to_make_one(tmp_path: Path) -> None:
    # The original project's example secret, as a user copies it into a JSON file.
    path = write(tmp_path / "c.json", server_url="http://127.0.0.1:1", secret_key="your_secret_key")
    with pytest.raises(ConfigError, match=r"secret_key.*base64.*arraycrypto keygen"):
        load_client_config(path)


def test_a_missing_client_config_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No such file.*arraycrypto client-config"):
        load_client_config(tmp_path / "client_config.json")


def test_a_server_config_without_its_secret_says_why_it_is_needed(tmp_path: Path) -> None:
    # The README's table gives secret_key the default "fresh random": that is for a
    # missing file, which serve creates; a file without one is refused, saying so.
    path = write(tmp_path / "server_config.json", port=8001)
    with pytest.raises(ConfigError, match=r"secret_key.*only a missing file.*keygen"):
        load_server_config(path)


def test_malformed_json_is_placed_by_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n  "server_url": "http://h:1",\n  "secret_key": "x",,\n}\n')
    with pytest.raises(ConfigError, match=r"not valid JSON.*line 3, column 21"):
        load_client_config(path)


def test_a_mistyped_variable_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An unknown field in a file is an error; in the environment, other programs'
    # variables may share the prefix (the Kubernetes manifest's ARRAYCRYPTO_WORKERS), so
    # one close to a real setting is warned about, and the others are left alone.
    path = write(
        tmp_path / "c.json", server_url="http://h:1", secret_key="QUJDREVGR0hJSktMTU5PUA=="
    )
    env = {"ARRAYCRYPTO_MAX_DRIF": "5", "ARRAYCRYPTO_WORKERS": "2"}
    with caplog.at_level("WARNING", logger="arraycrypto"):
        load_client_config(path, env=env)
    messages = [r.getMessage() for r in caplog.records]
    assert any("ARRAYCRYPTO_MAX_DRIF" in m and "ARRAYCRYPTO_MAX_DRIFT" in m for m in messages), (
        messages
    )
    assert not any("WORKERS" in m for m in messages), messages


def test_bare_command_shows_the_commands() -> None:
    result = cli()
    assert result.returncode == 2
    err = result.stderr.decode()
    for command in ("serve", "encrypt", "decrypt", "client-config", "keygen"):
        assert command in err, err


def test_quiet_client_config_is_quiet(tmp_path: Path) -> None:
    server = write(tmp_path / "server_config.json", secret_key="QUJDREVGR0hJSktMTU5PUA==")
    out = tmp_path / "client_config.json"
    result = cli("client-config", "--server-config", str(server), "--output", str(out), "-q")
    assert result.returncode == 0, result.stderr
    assert out.exists()
    assert result.stderr == b""
