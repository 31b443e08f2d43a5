"""The README's Python examples run as written (keeps the README true)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import arraycrypto
from arraycrypto import CryptoConfig, ServerConfig, save_config

from .harness.constants import HOST, SECRET
from .harness.servers import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert ".venv/bin/arraycrypto serve" in text
    assert ".venv/bin/python -m pytest" in text


def test_the_package_pip_installs_is_whole(tmp_path: Path) -> None:
    # The quick start's `pip install .` installs a wheel, not this source tree (the suite
    # itself runs from an editable install, which sees every file). A wheel holding only
    # the top-level package made the first command end in ModuleNotFoundError.
    # Built from a copy of what a clean clone holds: building in this tree would let a
    # stale build/lib (left by an earlier build) fill in what the package list misses.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "arraycrypto", source / "arraycrypto", ignore=skip)
    # --no-build-isolation: the test environment has the setuptools the build-system asks
    # for (the test extra); an isolated build installs it afresh each run, about 4 s.
    wheel_command = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    build = subprocess.run(
        [sys.executable, "-m", *wheel_command, "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("arraycrypto-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "arraycrypto").rglob("*.py")}
    assert sources - shipped == set()
    assert "arraycrypto/py.typed" in shipped
    # And it runs from the wheel alone (pure Python: importable from the zip).
    where = tmp_path / "elsewhere"
    where.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import arraycrypto.cli as c; print(c.__file__); c.main(['--version'])",
        ],
        cwd=where,
        env={**os.environ, "PYTHONPATH": str(wheel)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(wheel)), result.stdout
    assert result.stdout.endswith(f"arraycrypto {arraycrypto.__version__}\n"), result.stdout


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
