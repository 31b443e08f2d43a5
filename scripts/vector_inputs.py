"""The fixed inputs of the test vectors, shared by scripts/gen_vectors.py and vectors_v2.py.

Every value here is a constant (or built only from constants), so the vectors are the
same on every run.
"""

from __future__ import annotations

from typing import Any

from arraycrypto import Keyring, Snapshot

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(0x40, 0x60))
SECRET_SHORT = b"0123456789abcdef"  # the minimum, 16 bytes
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def snap(secret: bytes, tick: int = 7, ts: int = T0, size: int = 16) -> Snapshot:
    """A snapshot of ``secret`` with a fixed seed."""
    return Keyring(secret).new_snapshot(tick, bytes(range(16, 32)), ts, size)


def invalid_rows(invalid: list[tuple[str, bytes, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Vectors that must fail with the opaque DecryptionError (keyring: SECRET_A unless said)."""
    return [
        {
            "description": d,
            "envelope": t.hex(),
            "keyring": extra.get("keyring", [SECRET_A.hex()]),
            "associated_data": extra.get("associated_data", ""),
            "error": "DecryptionError",
        }
        for d, t, extra in invalid
    ]


def flip(data: bytes, i: int, bit: int = 1) -> bytes:
    """``data`` with bit ``bit`` of byte ``i`` flipped."""
    return data[:i] + bytes([data[i] ^ bit]) + data[i + 1 :]


def set_byte(data: bytes, i: int, value: int) -> bytes:
    """``data`` with byte ``i`` set to ``value``."""
    return data[:i] + bytes([value]) + data[i + 1 :]
