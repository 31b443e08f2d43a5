"""``arraycrypto inspect``: what an envelope's header says, with no config and no secret."""

from __future__ import annotations

import argparse
import json
import time

from ..core.armor import is_armored
from ..core.envelope2 import MAX_HEADER_SIZE
from ..core.isotime import iso8601_utc
from ..core.peek import NOT_AUTHENTICATED, describe, diagnose, peek
from ..streaming import BinaryReader
from .common import CommandError, setup_logging
from .crypt import _SNIFF_SIZE, _read_up_to, open_input
from .progress import known_size
from .textio import ArmorReader

__all__ = ["run_inspect"]


def run_inspect(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "warning")
    with open_input(args.input) as raw:
        total = known_size(raw)
        src: BinaryReader = raw
        head = _read_up_to(raw, _SNIFF_SIZE)
        armored = bool(is_armored(head))
        if armored:  # the envelope is inside: its size is known only by decoding it all
            src = ArmorReader(raw, head)
            head = b""
            total = None
        rest = len(head) - MAX_HEADER_SIZE
        if rest < 0:
            head += _read_up_to(src, -rest)
        if total is None:  # a pipe or armor: count the rest, in constant memory
            total = len(head)
            while chunk := src.read(1 << 20):
                total += len(chunk)
    now_ms = int(time.time() * 1000)
    if not head:
        raise CommandError("empty input: no envelope to inspect")
    try:
        info = peek(head, total_size=total)
    except ValueError:
        # Say what it looks like instead (base64, text, another format): no key needed.
        raise CommandError(diagnose(head, ()) or "not an arraycrypto envelope") from None
    if args.json:
        doc = {
            "version": info.version,
            "armored": armored,
            "mode": info.mode,
            "key_id": info.key_id.hex(),
            "tick": info.tick,
            "timestamp": info.timestamp,
            "created": iso8601_utc(info.timestamp),
            "age_seconds": (now_ms - info.timestamp) / 1000,
            "expires_at": info.expires_at,
            "expires": None if info.expires_at is None else iso8601_utc(info.expires_at),
            "signature_size": info.signature_size,
            "header_size": info.header_size,
            "segment_size": info.segment_size,
            "segments": info.segments,
            "total_size": info.total_size,
            "plaintext_size": info.plaintext_size,
            "problem": info.problem,
            "authenticated": False,
            "note": NOT_AUTHENTICATED,
        }
        print(json.dumps(doc, indent=2))
    else:
        text = describe(info, now_ms)
        if armored:
            first, _, others = text.partition("\n")
            text = f"{first} (armored)\n{others}"
        print(text)
    return 0
