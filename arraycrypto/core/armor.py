"""ASCII armor: any envelope as text that survives terminals, email and copy-paste.

The format (PROTOCOL.md, section 3a, "Armor"), the shape of PEM and of age's armor::

    -----BEGIN ARRAYCRYPTO MESSAGE-----
    AgECAwQFBgcIAAAAAAAAAAEAAAGL...      base64 (standard alphabet, padded),
    ...                                   64 characters a line, the last line 1..64
    -----END ARRAYCRYPTO MESSAGE-----

Lines end with LF (CRLF is accepted). Whitespace before the first line and after the
last is ignored; anything else is an :class:`ArmorError`. The reader is strict (every
line but the last exactly 64 characters, padding only at the very end) so one envelope
has one armored form, and garbage is refused early rather than decoded.

:class:`ArmorEncoder` and :class:`ArmorDecoder` work a piece at a time in constant
memory, so a stream of any size can be armored and de-armored on the fly. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from .exceptions import ArmorError

__all__ = [
    "BEGIN",
    "END",
    "LINE_LENGTH",
    "ArmorDecoder",
    "ArmorEncoder",
    "ArmorError",
    "armor",
    "dearmor",
    "is_armored",
]

BEGIN: Final = b"-----BEGIN ARRAYCRYPTO MESSAGE-----"
END: Final = b"-----END ARRAYCRYPTO MESSAGE-----"
#: Base64 characters per line: 48 bytes of envelope.
LINE_LENGTH: Final = 64
_LINE_BYTES: Final = LINE_LENGTH // 4 * 3
#: The longest line a reader holds while waiting for its end (CR, and the END line).
_MAX_LINE: Final = max(LINE_LENGTH, len(BEGIN)) + 2
_WHITESPACE: Final = b" \t\r\n"


def is_armored(prefix: bytes | bytearray | memoryview) -> bool | None:
    """Whether ``prefix`` starts an armored envelope; None if it is too short to tell.

    Leading whitespace is skipped; then the text must begin with the BEGIN line.
    """
    text = bytes(prefix).lstrip(_WHITESPACE)
    if len(text) < len(BEGIN):
        return None if BEGIN.startswith(text) else False
    return text.startswith(BEGIN)


class ArmorEncoder:
    """Envelope bytes in, armored text out, a piece at a time (constant memory)."""

    __slots__ = ("_pending", "_started")

    def __init__(self) -> None:
        self._pending = b""  # fewer than 48 bytes not yet encoded
        self._started = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encode ``data``; return the complete lines it makes (the BEGIN line first)."""
        out = b"" if self._started else BEGIN + b"\n"
        self._started = True
        data = self._pending + bytes(data)
        whole = len(data) - len(data) % _LINE_BYTES
        self._pending = data[whole:]
        return out + _lines(data[:whole])

    def finish(self) -> bytes:
        """Return the last line and the END line."""
        out = self.update(b"")
        if self._pending:
            out += _lines(self._pending)
            self._pending = b""
        return out + END + b"\n"


def _lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(
        encoded[i : i + LINE_LENGTH] + b"\n" for i in range(0, len(encoded), LINE_LENGTH)
    )


class ArmorDecoder:
    """Armored text in, envelope bytes out, a piece at a time (constant memory).

    Feed text with :meth:`update` (any split), then call :meth:`finish`, which fails
    unless the END line was seen. Raises :class:`ArmorError` at the first problem.
    """

    __slots__ = ("_buffer", "_data_lines", "_done", "_last", "_line", "_started")

    def __init__(self) -> None:
        self._buffer = b""  # text after the last complete line
        self._started = False  # the BEGIN line was seen
        self._done = False  # the END line was seen
        self._last = False  # a short or padded data line was seen: no data may follow
        self._line = 0  # lines read, for error messages
        self._data_lines = 0

    def update(self, text: bytes | bytearray | memoryview) -> bytes:
        """Decode ``text``; return the envelope bytes of its complete lines."""
        data = self._buffer + bytes(text)
        cut = data.rfind(b"\n") + 1
        self._buffer = data[cut:]
        if len(self._buffer) > _MAX_LINE and not self._done:
            raise ArmorError(f"line {self._line + 1}: longer than {LINE_LENGTH} characters")
        return self._decode(data[:cut].split(b"\n")[:-1]) if cut else b""

    def finish(self) -> bytes:
        """Decode what is left; fail if the armor is incomplete."""
        rest = self._buffer
        self._buffer = b""
        if self._started and not self._done and rest.rstrip(b"\r") != END:
            raise ArmorError("no END line: the armored text is cut short")
        out = self._decode([rest]) if rest.strip(_WHITESPACE) else b""
        if not self._started:
            raise ArmorError("no BEGIN line: not armored")
        if not self._done:
            raise ArmorError("no END line: the armored text is cut short")
        return out

    def _decode(self, lines: list[bytes]) -> bytes:
        body: list[bytes] = []
        first = self._line + 1  # the number of the first data line in ``body``
        for raw in lines:
            self._line += 1
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if self._done:
                if line.strip(_WHITESPACE):
                    raise ArmorError(f"line {self._line}: text after the END line")
            elif not self._started:
                if line.strip(_WHITESPACE):  # blank lines before BEGIN are skipped
                    if line.lstrip(_WHITESPACE) != BEGIN:
                        raise ArmorError(f"line {self._line}: expected {BEGIN.decode()}")
                    self._started = True
                first = self._line + 1
            elif line == END:
                if not self._data_lines:
                    raise ArmorError(f"line {self._line}: no data between BEGIN and END")
                self._done = True
            else:
                self._check(line)
                body.append(line)
        if not body:
            return b""
        try:
            # One call for all the lines: the alphabet and the padding are checked
            # over the whole (padding can only be at its very end).
            return base64.b64decode(b"".join(body), validate=True)
        except binascii.Error:
            last = first + len(body) - 1
            raise ArmorError(f"lines {first}..{last}: not base64") from None

    def _check(self, line: bytes) -> None:
        if self._last:
            raise ArmorError(f"line {self._line}: data after a short or padded line")
        if not line or len(line) > LINE_LENGTH or len(line) % 4:
            raise ArmorError(
                f"line {self._line}: {len(line)} characters"
                f" (lines hold {LINE_LENGTH}, the last a multiple of 4)"
            )
        self._last = len(line) < LINE_LENGTH or line.endswith(b"=")
        self._data_lines += 1


def armor(envelope: bytes | bytearray | memoryview) -> bytes:
    """Return ``envelope`` in its armored text form (ASCII bytes)."""
    encoder = ArmorEncoder()
    return encoder.update(envelope) + encoder.finish()


def dearmor(text: bytes | str) -> bytes:
    """Return the envelope an armored text holds; raise ArmorError if it is malformed."""
    decoder = ArmorDecoder()
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    return decoder.update(data) + decoder.finish()
