"""The README's Python examples run as written (keeps the README true)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from arraycrypto import CryptoConfig, ServerConfig, save_config

from .harness.constants import HOST, SECRET
from .harness.servers import ServeProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert ".venv/bin/arraycrypto serve" in text
    assert ".venv/bin/python -m pytest" in text


def run(source: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_core_example_runs(tmp_path: Path) -> None:
    (core,) = [b for b in python_blocks() if "Keyring(generate_secret())" in b]
    result = run(core, tmp_path)
    assert result.returncode == 0, result.stderr


def test_streaming_example_runs(tmp_path: Path) -> None:
    (example,) = [b for b in python_blocks() if "encrypt_file(cipher" in b]
    result = run(example, tmp_path)
    assert result.returncode == 0, result.stderr


def test_client_example_runs(tmp_path: Path) -> None:
    (example,) = [b for b in python_blocks() if 'CryptoClient("client_config.json")' in b]
    server_path = tmp_path / "server_config.json"
    save_config(server_path, ServerConfig(secret_key=SECRET, tick_interval=0.2))
    with ServeProcess("--config", str(server_path)) as server:
        port = server.port
        save_config(
            tmp_path / "client_config.json",
            CryptoConfig(server_url=f"http://{HOST}:{port}", secret_key=SECRET),
        )
        result = run(example, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "b'Your secret message'"
    assert lines[1].isdigit()  # a tick number from watch()
