"""The ``arraycrypto`` command line."""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence

from ._crypto import generate_secret

__all__ = ["main"]


def _keygen(_args: argparse.Namespace) -> int:
    # Printed for the operator to paste into both config files; never logged.
    print(base64.b64encode(generate_secret()).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``arraycrypto`` command."""
    parser = argparse.ArgumentParser(
        prog="arraycrypto",
        description="Authenticated encryption with server-pushed key epochs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="print a fresh random base64 secret_key")
    keygen.set_defaults(func=_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    sys.stdout.flush()
    return code
