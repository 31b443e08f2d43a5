"""Fixed values every test and script shares: the loopback host and test secrets."""

from __future__ import annotations

from typing import Final

__all__ = ["HOST", "OTHER", "RFC_6455_KEY", "SECRET", "T0"]

HOST: Final = "127.0.0.1"
SECRET: Final = bytes(range(32))
OTHER: Final = bytes(range(1, 33))
#: A fixed wall-clock instant (ms) for tests of the pure core.
T0: Final = 1_700_000_000_000
#: RFC 6455's example Sec-WebSocket-Key (section 1.3); its accept value is
#: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=.
RFC_6455_KEY: Final = "dGhlIHNhbXBsZSBub25jZQ=="
