"""Every CLI failure is one line on stderr and a non-zero exit; a closed stdout is quiet.

Issue 13, first item: each command below printed a traceback before. All run the real
entry point as a subprocess.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from arraycrypto import CryptoConfig, Keyring, ServerConfig, encrypt_file, save_config

from .harness.cli import cli
from .harness.constants import HOST, SECRET
from .harness.servers import ServeProcess


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single stderr line of a failed command (and that there is exactly one)."""
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("arraycrypto: "), text
    return lines[0]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Path:
    """A directory in which this user cannot create files."""
    if os.geteuid() == 0:  # root ignores file modes; sysfs refuses everyone
        return Path("/sys")
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o555)
    return path


def test_serve_with_a_config_in_a_missing_directory(tmp_path: Path) -> None:
    result = cli("serve", "--config", str(tmp_path / "nonexistent-dir" / "server_config.json"))
    assert result.returncode == 2
    line = one_line_error(result)
    assert "nonexistent-dir/server_config.json" in line
    assert "No such file or directory" in line


def test_serve_with_a_config_in_a_read_only_directory(read_only_dir: Path) -> None:
    result = cli("serve", "--config", str(read_only_dir / "server_config.json"))
    assert result.returncode == 2
    line = one_line_error(result)
    assert "cannot create" in line
    assert "Permission denied" in line


def test_client_config_into_a_missing_directory(tmp_path: Path) -> None:
    server = tmp_path / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET))
    out = tmp_path / "missing" / "client_config.json"
    result = cli("client-config", "--server-config", str(server), "--output", str(out))
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"cannot write {out}" in line
    assert "No such file or directory" in line


def test_missing_input_and_output_files(tmp_path: Path) -> None:
    config = tmp_path / "client_config.json"
    save_config(config, CryptoConfig(secret_key=SECRET))
    missing = cli("decrypt", "--config", str(config), "-i", str(tmp_path / "nope.ac"))
    assert missing.returncode == 1
    assert f"cannot read {tmp_path / 'nope.ac'}" in one_line_error(missing)
    nowhere = tmp_path / "no-dir" / "out"
    result = cli("decrypt", "--config", str(config), "-o", str(nowhere), data=b"\x01")
    assert result.returncode == 1
    assert f"cannot write {nowhere}" in one_line_error(result)
    inspect = cli("inspect", "-i", str(tmp_path / "nope.ac"))
    assert inspect.returncode == 1
    assert "cannot read" in one_line_error(inspect)


# -- a closed stdout ---------------------------------------------------------------------


def run_into_closed_pipe(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with a stdout whose reader is already gone: every write is EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "arraycrypto", *args],
            input=stdin,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 MiB envelope v2 stream under SECRET: decrypting it writes in many steps."""
    ring = Keyring(SECRET)
    cipher = ring.cipher(ring.new_snapshot(1, bytes(16), int(time.time() * 1000)))
    path = tmp_path_factory.mktemp("pipe") / "big.ac"
    with path.open("wb") as f:
        encrypt_file(cipher, io.BytesIO(os.urandom(3 << 20)), f)
    return path


@pytest.mark.parametrize("command", ["keygen", "inspect", "decrypt"])
def test_a_closed_stdout_is_a_quiet_exit(command: str, stream_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "client_config.json"
    save_config(config, CryptoConfig(secret_key=SECRET))
    args = {
        "keygen": ("keygen",),
        "inspect": ("inspect", "-i", str(stream_file)),
        "decrypt": ("decrypt", "--config", str(config), "-i", str(stream_file)),
    }[command]
    result = run_into_closed_pipe(*args)
    assert result.stderr == b""
    assert result.returncode == 0


@pytest.fixture(scope="module")
def server_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A server running for the module (ticks every 0.1 s)."""
    root = tmp_path_factory.mktemp("serve")
    server = root / "server_config.json"
    save_config(server, ServerConfig(secret_key=SECRET, tick_interval=0.1))
    with ServeProcess("--config", str(server)) as running:
        yield running.port


def client_file(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "client_config.json"
    url = f"http://{HOST}:{port}"
    save_config(path, CryptoConfig(server_url=url, secret_key=SECRET, snapshot_timeout=5))
    return path


def test_encrypt_into_a_closed_stdout_is_quiet(server_port: int, tmp_path: Path) -> None:
    config = client_file(tmp_path, server_port)
    result = run_into_closed_pipe("encrypt", "--config", str(config), stdin=b"x" * 100)
    assert result.stderr == b""
    assert result.returncode == 0


def test_watch_piped_into_head_exits_quietly(server_port: int, tmp_path: Path) -> None:
    """``arraycrypto watch | head -2``: head leaves after two lines, watch follows quietly."""
    config = client_file(tmp_path, server_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", "watch", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        for _ in range(2):
            assert proc.stdout.readline().startswith(b'{"type":"snapshot"')
        proc.stdout.close()  # as head does after its two lines
        assert proc.wait(timeout=20) == 0
        errors = proc.stderr.read()
        assert b"Traceback" not in errors
        assert b"Broken pipe" not in errors
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


# -- a backend that is not installed -------------------------------------------------------


@pytest.fixture
def without_trio(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import trio`` fails, as when it is not installed."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "trio.py").write_text("raise ImportError('No module named trio')\n")
    return {**os.environ, "PYTHONPATH": str(fake)}


def test_serve_backend_trio_without_trio(tmp_path: Path, without_trio: dict[str, str]) -> None:
    config = tmp_path / "server_config.json"
    save_config(config, ServerConfig(secret_key=SECRET))
    args = ("serve", "--config", str(config), "--port", "0", "--backend", "trio")
    result = cli(*args, env=without_trio)
    assert result.returncode == 2
    assert "pip install 'arraycrypto[trio]'" in one_line_error(result)


def test_watch_backend_trio_without_trio(tmp_path: Path, without_trio: dict[str, str]) -> None:
    config = tmp_path / "client_config.json"
    save_config(config, CryptoConfig(secret_key=SECRET))
    result = cli("watch", "--config", str(config), "--backend", "trio", env=without_trio)
    assert result.returncode == 2
    assert "pip install 'arraycrypto[trio]'" in one_line_error(result)


def test_optional_backends_are_installable_extras() -> None:
    """``pip install 'arraycrypto[trio]'`` brings trio, as the error and README say."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(req.startswith("trio") for req in extras["trio"])
    assert any(req.startswith("uvloop") for req in extras["uvloop"])
    assert any(req.startswith("trio") for req in extras["test"])  # the suite runs both
    readme = (root / "README.md").read_text()
    assert "pip install 'arraycrypto[trio]'" in readme
    assert "arraycrypto[uvloop]" in readme


@pytest.mark.parametrize(
    ("argv", "stray"),
    [
        (["keygen", "32"], "32"),
        (["keygen", "--length", "32"], "--length 32"),
        (["encrypt", "notes.txt"], "notes.txt (to read a file: -i notes.txt)"),
        (["inspect", "a.bin"], "a.bin (to read a file: -i a.bin)"),
    ],
)
def test_a_stray_argument_gets_the_commands_usage(
    argv: list[str], stray: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse blamed the top level ("usage: arraycrypto [-h] [--version] COMMAND ..."),
    # as if the command itself were unknown.
    from arraycrypto.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: arraycrypto {argv[0]}")
    assert err.rstrip().endswith(f"arraycrypto {argv[0]}: error: unrecognized arguments: {stray}")
