"""Text-safe output for the CLI: armored files, and no binary on a terminal.

File adapters around the pure :mod:`~arraycrypto.core.armor` codec, so the streaming
helpers armor and de-armor on the fly, in constant memory.
"""

from __future__ import annotations

import codecs
from typing import BinaryIO, Final

from ..core.armor import ArmorDecoder, ArmorEncoder, ArmorError
from ..streaming import BinaryReader
from .common import CommandError

__all__ = ["ArmorReader", "ArmorWriter", "TerminalGuard", "looks_binary"]

_SNIFF: Final = 4096  # bytes of plaintext looked at to tell text from binary


class ArmorWriter:
    """A binary file that armors what it is given; :meth:`finish` writes the END line."""

    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._encoder = ArmorEncoder()

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Armor ``data`` and write the complete lines it makes."""
        self._dst.write(self._encoder.update(data))
        return len(data)

    def finish(self) -> None:
        """Write the last line and the END line."""
        self._dst.write(self._encoder.finish())


class ArmorReader:
    """A binary file of the envelope inside the armored text ``src`` yields.

    ``prefix`` is text already read from ``src``. Malformed armor is a one-line
    :class:`CommandError` saying where.
    """

    def __init__(self, src: BinaryReader, prefix: bytes = b"") -> None:
        self._src = src
        self._decoder = ArmorDecoder()
        self._ready = bytearray()
        self._pending = prefix  # text not yet decoded
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` envelope bytes (all with -1); b"" at the end of the armor."""
        while not self._ended and (size < 0 or len(self._ready) < size):
            text = self._pending or self._src.read(1 << 16)
            self._pending = b""
            try:
                if text:
                    self._ready += self._decoder.update(text)
                else:
                    self._ready += self._decoder.finish()
                    self._ended = True
            except ArmorError as exc:
                raise CommandError(f"invalid armor: {exc}") from None
        size = len(self._ready) if size < 0 else min(size, len(self._ready))
        out = bytes(self._ready[:size])
        del self._ready[:size]
        return out


def looks_binary(data: bytes) -> bool:
    """Whether ``data`` (the start of some output) is not UTF-8 text for a terminal."""
    sample = data[:_SNIFF]
    if b"\0" in sample:
        return True
    try:
        # final=False: a multi-byte character cut at the sample's end is still text.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


class TerminalGuard:
    """A writer for a terminal: refuses output whose first bytes are not text."""

    def __init__(self, dst: BinaryIO, what: str) -> None:
        self._dst = dst
        self._what = what
        self._checked = False

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None:
        """Write ``data``; the first time, refuse it (CommandError) unless it is text."""
        if not self._checked and len(data):
            self._checked = True
            if looks_binary(bytes(data[:_SNIFF])):
                raise CommandError(
                    f"refusing to write binary {self._what} to a terminal:"
                    " use -o FILE, a pipe, or --force",
                    code=2,
                )
        return self._dst.write(data)
