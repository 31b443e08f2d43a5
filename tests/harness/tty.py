"""The real entry point with stdout or stderr on a pseudo-terminal, as a person sees it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Literal

__all__ = ["cli_on_tty"]


def cli_on_tty(
    *args: str,
    on: Literal["stdout", "stderr"] = "stdout",
    data: bytes = b"",
    timeout: float = 60,
) -> tuple[int, bytes, bytes]:
    """Run ``python -m arraycrypto ARGS`` with ``on`` a terminal and the other a pipe.

    Returns the exit code, what reached the terminal, and what reached the pipe.
    """
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "arraycrypto", *args],
        stdin=subprocess.PIPE,
        stdout=slave if on == "stdout" else subprocess.PIPE,
        stderr=slave if on == "stderr" else subprocess.PIPE,
    )
    os.close(slave)
    try:
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.close()
        shown = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown.append(chunk)
        piped = proc.stderr if on == "stdout" else proc.stdout
        assert piped is not None
        other = piped.read()
        piped.close()
        code = proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(shown), other
