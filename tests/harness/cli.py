"""The real ``arraycrypto`` entry point, run as a subprocess (bounded in time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["cli"]


def cli(
    *args: str,
    data: bytes = b"",
    cwd: Path | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m arraycrypto ARGS`` with ``data`` on stdin; capture everything."""
    return subprocess.run(
        [sys.executable, "-m", "arraycrypto", *args],
        input=data,
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=env,
    )
