"""The ``arraycrypto`` command line: one module per command, this one parses."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

# The package's own constant (pyproject reads it too), not importlib.metadata, whose
# import alone was a quarter of every command's start-up.
from ..core import __version__
from ..core.config import LOG_LEVELS
from .common import CommandError, client_main, fail, quiet_exit_on_closed_stdout

#: server.tuning.GC_POLICIES, without importing the server for every command.
GC_POLICY_NAMES = ("default", "raised", "frozen", "paced")

__all__ = ["build_parser", "main"]

_MAX_ASSOCIATED_DATA = 1 << 20


def _later(module: str, name: str) -> Callable[..., int]:
    """A command's function, imported only when that command runs.

    ``decrypt`` and ``inspect`` need neither the server nor the client: importing them
    for every command cost about 0.2 s of start-up (docs/benchmarks.md, streaming).
    """

    def run(*args: Any) -> int:
        function = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        code: int = function(*args)
        return code

    return run


run_keygen = _later("setup", "run_keygen")
run_client_config = _later("setup", "run_client_config")
run_serve = _later("serve", "run_serve")
run_encrypt = _later("crypt", "run_encrypt")
run_decrypt = _later("crypt", "run_decrypt")
run_watch = _later("watch", "run_watch")
run_inspect = _later("peek", "run_inspect")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``arraycrypto`` command.

    The main help is one screen: a line per command. Each command's ``--help`` says
    the rest.
    """
    parser = argparse.ArgumentParser(
        prog="arraycrypto",
        description="Authenticated encryption with server-pushed key epochs.",
        epilog="'arraycrypto COMMAND --help' for a command's options; README.md for more.",
    )
    parser.add_argument("--version", action="version", version=f"arraycrypto {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        command_parser = sub.add_parser(name, help=summary, description=description)
        # For main(): a stray argument is this command's usage error, not the top level's.
        command_parser.set_defaults(command_parser=command_parser)
        return command_parser

    keygen = command(
        "keygen",
        "print a fresh random secret_key",
        "Print a fresh random 32-byte secret, base64, for secret_key (or a secret_key_file).",
    )
    keygen.set_defaults(func=run_keygen)
    _log_options(keygen)

    serve = command(
        "serve",
        "run the snapshot push server",
        "Run the server: it signs a snapshot every tick_interval and pushes it to every"
        " client. SIGHUP reloads the config, SIGTERM drains then stops.",
    )
    serve.add_argument(
        "--config",
        default="server_config.json",
        metavar="FILE",
        help="server config; created with a fresh secret (0600) if missing, unless the"
        " environment holds the secret (default: %(default)s)",
    )
    serve.add_argument("--host", help="listen on this address (over the config and environment)")
    serve.add_argument(
        "--port", type=int, help="listen on this port, 0 for any free one (over the config)"
    )
    serve.add_argument(
        "--backend",
        choices=["asyncio", "trio", "uvloop"],
        default="asyncio",
        help="event loop; trio and uvloop need arraycrypto[trio] / arraycrypto[uvloop]",
    )
    serve.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="worker processes on the one port (auto: one per core; default 1)",
    )
    _log_options(serve, formats=True)
    # Set by the supervisor of --workers for each worker it starts.
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--metrics-dir", help=argparse.SUPPRESS)
    # For measurements (scripts/soak.py), not for operators: "paced" is the measured best
    # (docs/benchmarks.md, "The garbage collector at 10 000 connections").
    serve.add_argument(
        "--gc-policy", default="paced", choices=GC_POLICY_NAMES, help=argparse.SUPPRESS
    )
    serve.add_argument("--debug-objects", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=run_serve)

    client_config = command(
        "client-config",
        "write a client config from the server's",
        "Write a client config holding the server's secret (mode 0600, never overwritten),"
        " with a server_url for the server's port and path.",
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
    _log_options(client_config)
    client_config.set_defaults(func=run_client_config)

    for name, func, summary, description in (
        (
            "encrypt",
            run_encrypt,
            "encrypt stdin to stdout (needs the server)",
            "Encrypt stdin (or -i FILE) to stdout (or -o FILE) under a fresh snapshot from"
            " the server. Above 1 MiB, a stream of 64 KiB segments in constant memory.",
        ),
        (
            "decrypt",
            run_decrypt,
            "decrypt stdin to stdout (offline)",
            "Decrypt stdin (or -i FILE) to stdout (or -o FILE) with the secret alone, no"
            " server: any format, binary or armored.",
        ),
        (
            "watch",
            run_watch,
            "print each pushed snapshot as a JSON line",
            "Print each verified snapshot as a JSON line until interrupted; connection"
            " changes go to stderr. SIGHUP re-reads the config.",
        ),
    ):
        cmd = command(name, summary, description)
        cmd.add_argument(
            "--config",
            default="client_config.json",
            metavar="FILE",
            help="client config (default: %(default)s); optional when the environment"
            " holds the secret",
        )
        if name != "watch":
            _crypt_options(cmd)
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
            cmd.add_argument(
                "--backend",
                choices=["asyncio", "trio"],
                default="asyncio",
                help="event loop; trio needs arraycrypto[trio] (default: %(default)s)",
            )
        _log_options(cmd)
        cmd.set_defaults(func=client_main, client_func=func)

    inspect = command(
        "inspect",
        "show an envelope's header (no secret)",
        "Show what an envelope's header says (version, key id, times, sizes), binary or"
        " armored, with no config and no secret: nothing is verified.",
    )
    inspect.add_argument("-i", "--input", metavar="FILE", help="read FILE instead of stdin")
    inspect.add_argument("--json", action="store_true", help="one JSON object")
    _log_options(inspect)
    inspect.set_defaults(func=run_inspect)
    return parser


def _crypt_options(cmd: argparse.ArgumentParser) -> None:
    """What encrypt and decrypt share: associated data, files, --force."""
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
        help="the same, binary, read from FILE (at most 1 MiB)",
    )
    cmd.add_argument("-i", "--input", metavar="FILE", help="read FILE instead of stdin")
    cmd.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE (mode 0600, replaced only on success) instead of stdout",
    )
    cmd.add_argument("--force", action="store_true", help="write binary output even to a terminal")


def _log_options(cmd: argparse.ArgumentParser, *, formats: bool = False) -> None:
    """-q, -v and --log-level on every command (and --log-format where it serves)."""
    group = cmd.add_argument_group("logging, on stderr")
    level = group.add_mutually_exclusive_group()
    level.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="the least severe level shown (over a config's log_level)",
    )
    level.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const="error",
        help="errors only: --log-level error",
    )
    level.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="debug",
        help="everything: --log-level debug",
    )
    if formats:
        group.add_argument(
            "--log-format",
            choices=["text", "json"],
            default="text",
            help="json: one object per line (time, level, logger, message, worker)",
        )


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
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        # No command at all: the commands, not only "the following arguments are required".
        parser.print_help(sys.stderr)
        return 2
    args, stray = parser.parse_known_args(argv)
    if stray:
        message = f"unrecognized arguments: {' '.join(stray)}"
        if hasattr(args, "input") and not stray[0].startswith("-"):
            # `arraycrypto encrypt notes.txt` is the first thing people type.
            message += f" (to read a file: -i {stray[0]})"
        args.command_parser.error(message)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_exit_on_closed_stdout()
        return 0
    except CommandError as exc:
        return fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT; the user knows why
    except OSError as exc:  # the last resort: a file or the system refused something
        return fail(_os_error(exc), 1)
    return code


def _os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc) or type(exc).__name__
