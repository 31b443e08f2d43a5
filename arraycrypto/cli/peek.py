"""``arraycrypto inspect``: what an envelope's header says, with no config and no secret."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..core.envelope2 import MAX_HEADER_SIZE
from ..core.isotime import iso8601_utc
from ..core.peek import NOT_AUTHENTICATED, describe, peek
from .crypt import _read_up_to, open_input
from .progress import known_size

__all__ = ["run_inspect"]


def run_inspect(args: argparse.Namespace) -> int:
    with open_input(args.input) as src:
        total = known_size(src)
        head = _read_up_to(src, MAX_HEADER_SIZE)
        if total is None:  # a pipe: count the rest, in constant memory
            total = len(head)
            while chunk := src.read(1 << 20):
                total += len(chunk)
    now_ms = int(time.time() * 1000)
    try:
        info = peek(head, total_size=total)
    except ValueError as exc:
        print(f"arraycrypto: {exc}", file=sys.stderr)
        return 1
    if args.json:
        doc = {
            "version": info.version,
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
        print(describe(info, now_ms))
    return 0
