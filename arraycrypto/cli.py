"""The ``arraycrypto`` command line."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec

from ._crypto import generate_secret
from .config import CryptoConfig, ServerConfig, load_client_config, load_server_config
from .exceptions import ConfigError, CryptoError

logger = logging.getLogger("arraycrypto")

__all__ = ["main"]


def _keygen(_args: argparse.Namespace) -> int:
    # Printed for the operator to paste into both config files; never logged.
    print(base64.b64encode(generate_secret()).decode())
    return 0


def _setup_logging(verbose: bool, level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # one INFO line per connection is too much for a server of thousands
        logging.getLogger("arraycrypto.server.websocket").setLevel(logging.WARNING)
        logging.getLogger("arraycrypto.client.websocket").setLevel(logging.WARNING)


def _backend(name: str) -> tuple[str, dict[str, object]]:
    if name == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return name, {}


def _serve(args: argparse.Namespace) -> int:
    from .server import Server  # the server pulls in websockets; keygen does not need it

    _setup_logging(args.verbose)
    if args.backend == "uvloop" and importlib.util.find_spec("uvloop") is None:
        logger.error("--backend uvloop needs uvloop: pip install uvloop")
        return 2
    path = Path(args.config)
    created = not path.exists()
    try:
        config = load_server_config(path)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            config = ServerConfig(**{**msgspec.structs.asdict(config), **overrides})
        server = Server(config)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("%s config %s", "created" if created else "using", path.resolve())

    async def main() -> None:
        # Listen for signals before serving, so an early SIGTERM still exits cleanly.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                await tg.start(server.run)
                async for signum in signals:
                    logger.info("received %s, closing connections", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    break

    backend, options = _backend(args.backend)
    failed: BaseExceptionGroup[OSError] | None = None
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except* OSError as group:  # binding: the address is in use or not ours
        failed = group
    if failed is not None:
        reason = "; ".join(str(exc) for exc in failed.exceptions)
        logger.error("cannot listen on %s:%d: %s", config.host, config.port, reason)
        return 1
    logger.info("stopped")
    return 0


def _client_config(args: argparse.Namespace) -> int:
    """Write a client config holding the server's secret (0600, never overwritten)."""
    from .config import CryptoConfig, save_config

    try:
        server = load_server_config(args.server_config, create=False)
        config = CryptoConfig(server_url=args.url, secret_key=server.secret_key)
    except ConfigError as exc:
        print(f"arraycrypto: {exc}", file=sys.stderr)
        return 2
    try:
        save_config(args.output, config, exclusive=True)
    except FileExistsError:
        print(f"arraycrypto: {args.output} exists; not overwriting it", file=sys.stderr)
        return 1
    print(f"wrote {args.output} (mode 0600) for {args.url}", file=sys.stderr)
    return 0


def _client_main(args: argparse.Namespace) -> int:
    """Run encrypt / decrypt / watch; map our errors to a message and exit code 1."""
    _setup_logging(args.verbose, level=logging.WARNING)
    try:
        config = load_client_config(args.config)
    except ConfigError as exc:
        print(f"arraycrypto: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.client_func(args, config)
        return code
    except CryptoError as exc:
        print(f"arraycrypto: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _encrypt(args: argparse.Namespace, config: CryptoConfig) -> int:
    from .client import CryptoClient

    data = sys.stdin.buffer.read()

    async def main() -> bytes:
        async with CryptoClient(config) as client:
            return await client.encrypt_message(data, args.associated_data.encode())

    sys.stdout.buffer.write(anyio.run(main))
    return 0


def _decrypt(args: argparse.Namespace, config: CryptoConfig) -> int:
    # Offline: the keyring alone decrypts; no server is contacted.
    import time

    from ._crypto import Keyring

    keyring = Keyring(config.secret_key, old=config.old_secret_keys)
    now_ms = int(time.time() * 1000) if args.ttl is not None else None
    plaintext = keyring.decrypt(
        sys.stdin.buffer.read(),
        args.associated_data.encode(),
        ttl=args.ttl,
        now_ms=now_ms,
        max_drift=config.max_drift,
    )
    sys.stdout.buffer.write(plaintext)
    return 0


def _watch(args: argparse.Namespace, config: CryptoConfig) -> int:
    from . import messages as m
    from .client import CryptoClient

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg, CryptoClient(config) as client:

                async def stop() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop)
                async for snapshot in client.watch():
                    line = m.encode(m.SnapshotMessage.from_snapshot(snapshot))
                    sys.stdout.buffer.write(line + b"\n")
                    sys.stdout.buffer.flush()

    anyio.run(main, backend=args.backend)
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
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=_serve)

    client_config = sub.add_parser(
        "client-config", help="write a client_config.json with the server's secret (0600)"
    )
    client_config.add_argument("--server-config", default="server_config.json")
    client_config.add_argument("--url", default="http://localhost:8000", help="server_url")
    client_config.add_argument("--output", default="client_config.json")
    client_config.set_defaults(func=_client_config)

    for name, func, text in (
        ("encrypt", _encrypt, "encrypt stdin to stdout (needs the server for a snapshot)"),
        ("decrypt", _decrypt, "decrypt stdin to stdout (offline: needs only the secret)"),
        ("watch", _watch, "print each pushed snapshot as a JSON line until interrupted"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", default="client_config.json", help="client config file")
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name != "watch":
            cmd.add_argument(
                "--associated-data", default="", help="extra authenticated data (text)"
            )
        if name == "decrypt":
            cmd.add_argument("--ttl", type=float, help="reject ciphertexts older than this (s)")
        if name == "watch":
            cmd.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
        cmd.set_defaults(func=_client_main, client_func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    sys.stdout.flush()
    return code
