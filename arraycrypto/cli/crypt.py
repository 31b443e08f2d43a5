"""``arraycrypto encrypt`` and ``decrypt``: stdin (or ``--input``) to stdout (or ``--output``).

Small inputs become one envelope (v1, or v2 single-shot with ``--expires-in``); inputs
larger than :data:`SINGLE_SHOT_LIMIT` become an envelope v2 stream, encrypted in
constant memory. ``decrypt`` tells the formats apart by their first bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

import anyio

from ..core.armor import is_armored
from ..core.config import CryptoConfig
from ..core.envelope import SnapshotCipher
from ..core.envelope2 import MAX_HEADER_SIZE
from ..core.exceptions import CryptoError, DecryptionError
from ..core.keyring import Keyring
from ..core.keys import Key
from ..core.peek import diagnose
from ..streaming import BinaryReader, BinaryWriter, decrypt_file, encrypt_file, expires_at_ms
from .common import CommandError
from .progress import known_size, progress_bar
from .textio import ArmorReader, ArmorWriter, TerminalGuard

__all__ = ["SINGLE_SHOT_LIMIT", "run_decrypt", "run_encrypt"]

#: Inputs up to this size are one AES-GCM message; larger ones a stream of segments.
SINGLE_SHOT_LIMIT: Final = 1 << 20


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[BinaryIO]:
    """Yield ``path`` opened for reading, or stdin's bytes for None (or ``-``)."""
    if path is None or path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; only the open is an input error
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        yield f


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[BinaryIO]:
    """Yield a file that becomes ``path`` only if the block succeeds (else stdout's bytes).

    The data goes to a temporary file (mode 0600) beside ``path``, renamed over it at
    the end: a failed decryption never leaves a partial plaintext under the final name.
    """
    if path is None or path == "-":
        yield sys.stdout.buffer
        return
    target = Path(path)
    try:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        try:
            os.replace(temp, target)
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _read_up_to(src: BinaryReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit and (chunk := src.read(limit - size)):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _fetch_cipher(config: CryptoConfig) -> SnapshotCipher:
    """Connect, authenticate, and return the cipher of a fresh verified snapshot."""
    from ..client import CryptoClient

    async def main() -> SnapshotCipher:
        async with CryptoClient(config) as client:
            # Waits only while the connection attempt is in progress: a refused
            # connection fails at once, saying so.
            return await client.current_cipher()

    # Return only the small cipher from anyio.run, never the ciphertext: CPython 3.11
    # and 3.12's runner build a repr() of the result (seconds for hundreds of MB).
    return anyio.run(main)


def _to_terminal(args: argparse.Namespace) -> bool:
    return args.output in (None, "-") and sys.stdout.isatty()


def run_encrypt(args: argparse.Namespace, config: CryptoConfig) -> int:
    if _to_terminal(args) and not args.armor and not args.force:
        # Before connecting: nothing to undo, and the answer is at once.
        raise CommandError(
            "refusing to write binary ciphertext to a terminal:"
            " use --armor for text, -o FILE, a pipe, or --force",
            code=2,
        )
    if args.log_level is None:
        # One attempt, and its failure is this command's error message, which says it
        # all (the reason, the last refused snapshot): the client's own log lines
        # about it would say it twice. What it learns about the config still shows.
        logging.getLogger("arraycrypto.client").setLevel(logging.CRITICAL)
        logging.getLogger("arraycrypto.client.config").setLevel(logging.WARNING)
    cipher = _fetch_cipher(config)
    associated_data = args.associated_data
    with open_input(args.input) as src, open_output(args.output) as raw:
        dst: BinaryWriter = ArmorWriter(raw) if args.armor else raw
        total = known_size(src)
        head = _read_up_to(src, SINGLE_SHOT_LIMIT + 1)
        expires_at = expires_at_ms(args.expires_in)  # the sender's clock, as late as possible
        if len(head) <= SINGLE_SHOT_LIMIT:
            dst.write(cipher.encrypt(head, associated_data, expires_at=expires_at))
        else:
            bar = progress_bar("encrypt", total)
            try:
                encrypt_file(
                    cipher,
                    src,
                    dst,
                    associated_data,
                    expires_at=expires_at,
                    progress=bar,
                    prefix=head,
                )
            finally:
                if bar is not None:
                    bar.close()
        if isinstance(dst, ArmorWriter):
            dst.finish()
    return 0


_OPAQUE_CAUSES: Final = (
    "(the ciphertext was changed or cut short, or --associated-data differs from the sender's)"
)


def _key_ids(config: CryptoConfig) -> list[bytes]:
    secrets = (config.secret_key, *config.next_secret_keys, *config.old_secret_keys)
    return [Key(secret).key_id for secret in secrets]


#: Bytes looked at before decrypting: enough to see an armor's BEGIN line after some
#: blank lines, and a whole envelope header.
_SNIFF_SIZE: Final = 1024


def run_decrypt(args: argparse.Namespace, config: CryptoConfig) -> int:
    # Offline: the keyring alone decrypts; no server is contacted. The clock is always
    # read: a ciphertext dated beyond max_drift in the future is refused, --ttl or not.
    keyring = Keyring(
        config.secret_key,
        old=config.old_secret_keys,
        next=config.next_secret_keys,
        cache_size=config.decrypt_cache_size,
    )
    with open_input(args.input) as raw, open_output(args.output) as dst:
        total = known_size(raw)
        src: BinaryReader = raw
        head = _read_up_to(raw, _SNIFF_SIZE)
        if is_armored(head):  # detected by its first line: no flag needed
            src = ArmorReader(raw, head)
            head = _read_up_to(src, MAX_HEADER_SIZE)
            # 48 bytes of envelope per 65-byte line: the bar's total, near enough.
            total = None if total is None else total * 48 // 65
        # Before any key is used: what needs no secret to tell (not an envelope at all,
        # a key id this keyring lacks). Past that, one opaque error for everything.
        problem = diagnose(head, _key_ids(config))
        if problem is not None:
            raise CommandError(problem)
        bar = progress_bar("decrypt", total)
        out: BinaryWriter = dst
        if _to_terminal(args) and not args.force:
            out = TerminalGuard(dst, "plaintext")
        written = _Counting(out)
        try:
            decrypt_file(
                keyring,
                src,
                written,
                args.associated_data,
                ttl=args.ttl,
                max_drift=config.max_drift,
                progress=bar,
                prefix=head,
            )
        except CryptoError as exc:
            if written.count and args.output in (None, "-"):
                print(
                    "arraycrypto: the stream failed after some verified plaintext was"
                    " written: that output is incomplete, discard it",
                    file=sys.stderr,
                )
            if isinstance(exc, DecryptionError):
                # The same words whatever failed: they name every cause, tell none apart.
                raise CommandError(f"DecryptionError: {exc} {_OPAQUE_CAUSES}") from None
            raise
        finally:
            if bar is not None:
                bar.close()
    return 0


class _Counting:
    """A writer that counts what went through (to say whether partial output exists)."""

    def __init__(self, dst: BinaryWriter) -> None:
        self.dst = dst
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int | None:
        self.count += len(data)
        return self.dst.write(data)
