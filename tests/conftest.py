"""Shared fixtures. Every I/O test runs under asyncio and trio."""

from __future__ import annotations

import pytest

# A missing trio must fail the run, not skip half of it: import it unconditionally.
import trio  # noqa: F401


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Parametrise every anyio test over both backends (anyio's own default may skip trio)."""
    return str(request.param)
