"""Shared fixtures. Every I/O test runs under asyncio and trio."""

from __future__ import annotations

import compileall
import importlib
import sys
from pathlib import Path
from typing import Any

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
    root = Path(__file__).resolve().parent.parent
    if hasattr(config, "workerinput"):
        share_the_rewriting(root / "tests", config.workerinput)
        return  # an xdist worker: the controller compiled the package
    for package in ("arraycrypto", "scripts", "tests/harness"):
        # quiet=1: only errors print; a read-only tree just goes without the cache.
        compileall.compile_dir(root / package, quiet=1)


def share_the_rewriting(tests: Path, workerinput: dict[str, Any]) -> None:
    """Import the test modules in this worker's own order, caching what pytest rewrote.

    pytest rewrites every test module's asserts when it imports it, about 1.4 s of CPU
    for this suite, and caches the result beside it unless ``PYTHONDONTWRITEBYTECODE``
    is set; then every worker did all of it again, every run. Here each worker starts at
    its own share of the modules and writes what it rewrote (pytest writes each cache
    file atomically, and reads one only if it matches the source): the others find most
    of it done, and the next run all of it. A module that fails to import is left to
    collection, which reports it.
    """
    modules = sorted(tests.glob("test_*.py"))
    workers = int(workerinput["workercount"])
    start = len(modules) * int(workerinput["workerid"].removeprefix("gw")) // workers
    writes = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        for module in modules[start:] + modules[:start]:
            try:
                importlib.import_module(f"{tests.name}.{module.stem}")
            except Exception:  # noqa: S112 - collection reports it
                continue
    finally:
        sys.dont_write_bytecode = writes
