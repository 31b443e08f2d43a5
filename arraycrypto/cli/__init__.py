"""The ``arraycrypto`` command line: one module per command, this one parses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import CommandError, client_main, quiet_exit_on_closed_stdout
from .crypt import run_decrypt, run_encrypt
from .peek import run_inspect
from .serve import run_serve
from .setup import run_client_config, run_keygen
from .watch import run_watch

__all__ = ["build_parser", "main"]

_MAX_ASSOCIATED_DATA = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``arraycrypto`` command."""
    parser = argparse.ArgumentParser(
        prog="arraycrypto",
        description="Authenticated encryption with server-pushed key epochs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="print a fresh random base64 secret_key")
    keygen.set_defaults(func=run_keygen)

    serve = sub.add_parser("serve", help="run the snapshot push server")
    serve.add_argument(
        "--config",
        default="server_config.json",
        help="server config file; created with a fresh secret (0600) if missing",
    )
    serve.add_argument("--host", help="override the config's host")
    serve.add_argument("--port", type=int, help="override the config's port (0: any free)")
    serve.add_argument(
        "--backend",
        choices=["asyncio", "trio", "uvloop"],
        default="asyncio",
        help="event loop (uvloop: asyncio on uvloop, if installed)",
    )
    serve.add_argument(
        "--workers",
        default="1",
        help="worker processes on the one port (auto: one per core); default 1",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # Set by the supervisor of --workers for each worker it starts.
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--metrics-dir", help=argparse.SUPPRESS)
    serve.set_defaults(func=run_serve)

    client_config = sub.add_parser(
        "client-config", help="write a client_config.json with the server's secret (0600)"
    )
    client_config.add_argument(
        "--server-config",
        default="server_config.json",
        metavar="FILE",
        help="the server's config: its secret, port and path (default: %(default)s)",
    )
    client_config.add_argument(
        "--url",
        help="the client's server_url (default: the server config's port and path on"
        " localhost, e.g. http://localhost:8000)",
    )
    client_config.add_argument(
        "--output",
        default="client_config.json",
        metavar="FILE",
        help="where to write it, mode 0600; never overwritten (default: %(default)s)",
    )
    client_config.set_defaults(func=run_client_config)

    for name, func, text in (
        (
            "encrypt",
            run_encrypt,
            "encrypt stdin to stdout (needs the server for a snapshot); above 1 MiB, as a"
            " stream of 64 KiB segments in constant memory",
        ),
        (
            "decrypt",
            run_decrypt,
            "decrypt stdin to stdout (offline: needs only the secret); any format",
        ),
        ("watch", run_watch, "print each pushed snapshot as a JSON line until interrupted"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", default="client_config.json", help="client config file")
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name != "watch":
            data = cmd.add_mutually_exclusive_group()
            data.add_argument(
                "--associated-data",
                type=str.encode,
                default=b"",
                metavar="TEXT",
                help="extra authenticated data, not stored: decrypt needs the same (UTF-8)",
            )
            data.add_argument(
                "--associated-data-hex",
                dest="associated_data",
                type=_hex,
                metavar="HEX",
                help="the same, binary, given in hexadecimal",
            )
            data.add_argument(
                "--associated-data-file",
                dest="associated_data",
                type=_file_bytes,
                metavar="FILE",
                help="the same, binary, read from FILE",
            )
            cmd.add_argument(
                "--force",
                action="store_true",
                help="write binary output even to a terminal",
            )
            cmd.add_argument("-i", "--input", help="read this file instead of stdin")
            cmd.add_argument(
                "-o",
                "--output",
                help="write this file (mode 0600, replaced only on success) instead of stdout",
            )
        if name == "encrypt":
            cmd.add_argument(
                "-a",
                "--armor",
                action="store_true",
                help="ASCII-armored text (-----BEGIN ARRAYCRYPTO MESSAGE-----) instead of"
                " binary; decrypt recognises it by itself",
            )
            cmd.add_argument(
                "--expires-in",
                type=_positive_seconds,
                metavar="SECONDS",
                help="every decrypt refuses the ciphertext after this long (plus max_drift)",
            )
        if name == "decrypt":
            cmd.add_argument(
                "--ttl",
                type=_positive_seconds,
                metavar="SECONDS",
                help="also refuse ciphertexts made longer ago than this",
            )
        if name == "watch":
            cmd.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
        cmd.set_defaults(func=client_main, client_func=func)

    inspect = sub.add_parser(
        "inspect",
        help="show an envelope's header (no config, no secret: nothing is verified)",
    )
    inspect.add_argument("-i", "--input", help="read this file instead of stdin")
    inspect.add_argument("--json", action="store_true", help="one JSON object")
    inspect.set_defaults(func=run_inspect)
    return parser


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not hexadecimal") from None


def _file_bytes(path: str) -> bytes:
    # Associated data is held whole, next to every segment's AAD: keep it small.
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_ASSOCIATED_DATA + 1)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_ASSOCIATED_DATA:
        raise argparse.ArgumentTypeError(f"{path} is larger than 1 MiB")
    return data


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 2**31:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code.

    Every failure is one line on stderr (``arraycrypto: ...``) and a non-zero exit: 2
    for usage and configuration errors, 1 for failures at run time. A closed stdout
    (``arraycrypto watch | head -2``) ends the command quietly with 0.
    """
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_exit_on_closed_stdout()
        return 0
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT; the user knows why
    except OSError as exc:  # the last resort: a file or the system refused something
        return _fail(_os_error(exc), 1)
    return code


def _fail(message: str, code: int) -> int:
    print(f"arraycrypto: {message}", file=sys.stderr)
    return code


def _os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__
