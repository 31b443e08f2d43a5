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
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller has done it
    root = Path(__file__).resolve().parent.parent
    for package in ("arraycrypto", "scripts", "tests/harness"):
        # quiet=1: only errors print; a read-only tree just goes without the cache.
        compileall.compile_dir(root / package, quiet=1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    """In an xdist worker, first share out pytest's assertion rewriting (below).

    At collection, not at configure time: after every plugin's configure (hypothesis
    reads its profile options there, before a module's ``@settings`` is made), and
    under the warnings filters that collection runs with.
    """
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is not None:
        share_the_rewriting(named_modules(session.config), workerinput)


def named_modules(config: pytest.Config) -> list[Path]:
    """The test modules this run collects, from its arguments (``tests``, files, ids)."""
    tests = Path(__file__).resolve().parent
    found: set[Path] = set()
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
        if path.is_dir() and (path == tests or path in tests.parents):
            found.update(tests.glob("test_*.py"))
        elif path.parent == tests and path.name.startswith("test_"):
            found.add(path)
    return sorted(found)


def share_the_rewriting(modules: list[Path], workerinput: dict[str, Any]) -> None:
    """Import ``modules`` in this worker's own order, caching what pytest rewrote.

    pytest rewrites every test module's asserts when it imports it, about 1.4 s of CPU
    for this suite, and caches the result beside it unless ``PYTHONDONTWRITEBYTECODE``
    is set; then every worker did all of it again, every run. Here each worker starts at
    its own share of the modules and writes what it rewrote (pytest writes each cache
    file atomically, and reads one only if it matches the source): the others find most
    of it done, and the next run all of it. A module that fails to import (or skips
    itself) is left to collection, which imports it again and reports it.
    """
    if not modules:
        return
    workers = int(workerinput["workercount"])
    start = len(modules) * int(workerinput["workerid"].removeprefix("gw")) // workers
    writes = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        for module in modules[start:] + modules[:start]:
            try:
                importlib.import_module(f"{module.parent.name}.{module.stem}")
            except (Exception, pytest.skip.Exception):  # noqa: S112 - collection reports it
                continue
    finally:
        sys.dont_write_bytecode = writes
