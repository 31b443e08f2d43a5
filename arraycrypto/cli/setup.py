"""``arraycrypto keygen`` and ``client-config``: secrets and config files."""

from __future__ import annotations

import argparse
import base64
import os
import sys

from ..core.config import CryptoConfig, server_url_for
from ..core.exceptions import ConfigError
from ..core.keys import generate_secret
from ..core.loading import load_server_config, save_config
from .common import CommandError, setup_logging

__all__ = ["run_client_config", "run_keygen"]


def run_keygen(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "warning")
    # Printed for the operator to paste into both config files; never logged.
    print(base64.b64encode(generate_secret()).decode())
    return 0


def run_client_config(args: argparse.Namespace) -> int:
    """Write a client config holding the server's secret (0600, never overwritten)."""
    setup_logging(args.log_level, "warning")
    try:
        server = load_server_config(args.server_config, create=False, env=os.environ)
        url = args.url or server_url_for(server)
        config = CryptoConfig(server_url=url, secret_key=server.secret_key)
    except ConfigError as exc:
        raise CommandError(str(exc), code=2) from None
    try:
        save_config(args.output, config, exclusive=True)
    except FileExistsError:
        raise CommandError(f"{args.output} exists; not overwriting it") from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror}") from None
    if args.log_level != "error":  # -q: errors only
        print(f"wrote {args.output} (mode 0600) for {url}", file=sys.stderr)
    return 0
