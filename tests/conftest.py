"""Shared fixtures. Every I/O test runs under asyncio and trio."""

from __future__ import annotations

import compileall
from pathlib import Path

import pytest

# A missing trio must fail the run, not skip half of it: import it unconditionally.
import trio  # noqa: F401


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Parametrise every anyio test over both backends (anyio's own default may skip trio)."""
    return str(request.param)


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package once, before any test starts a process that imports it.

    The suite starts some 300 interpreters (the CLI, ``serve``, the scripts). Where the
    environment sets ``PYTHONDONTWRITEBYTECODE`` (this project's CI machines do), none of
    them may cache what it compiled, so each one compiled every module it imported
    again: about 50 ms of CPU per process, 15 s per run. ``compileall`` writes the
    ``__pycache__`` files a normal run would have left (they are git-ignored).
    """
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller has done it
    root = Path(__file__).resolve().parent.parent
    for package in ("arraycrypto", "scripts", "tests/harness"):
        # quiet=1: only errors print; a read-only tree just goes without the cache.
        compileall.compile_dir(root / package, quiet=1)
