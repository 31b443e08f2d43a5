"""Rotation under load: the secret changes by reload while 1 000 clients encrypt.

    python -m scripts.chaos rotate                  # 1 000 clients
    python -m scripts.chaos rotate --clients 200 --json

The README's rotation, with no restart anywhere: ``arraycrypto serve`` runs with secret
OLD; 1 000 ``CryptoClient``s (one process) hold OLD as ``secret_key`` and NEW in
``next_secret_keys`` (step 1) and each encrypt every 100 ms. Then the server's config
file gets NEW and the server a SIGHUP (step 2): every client must follow at its next
snapshot, on the same connection. Then each client reloads its config with NEW as
``secret_key`` and OLD in ``old_secret_keys`` (step 3). Counted throughout: encrypt
failures, disconnections (a client's session id changing), and at the end every
ciphertext made before, during and after is decrypted with the final keyring.
Only 127.0.0.1; every process started is ended.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from arraycrypto import Keyring, ServerConfig, save_config
from tests.harness.constants import HOST, OTHER, SECRET
from tests.harness.light import end, raise_fd_limit, read_tagged, spawn
from tests.harness.servers import ServeProcess

MODULE = "scripts.rotate"
OLD, NEW = SECRET, OTHER

__all__ = ["main"]


async def clients(port: int, n: int) -> None:
    """Child: n clients encrypting; steps driven by the parent on stdin."""
    import contextlib

    import anyio
    import anyio.to_thread

    from arraycrypto import CryptoClient, CryptoConfig, CryptoError

    raise_fd_limit()
    config = CryptoConfig(
        server_url=f"http://{HOST}:{port}",
        secret_key=OLD,
        next_secret_keys=[NEW],
        max_drift=30,
        snapshot_timeout=60,
    )
    made: list[tuple[bytes, bytes]] = []
    failures = 0
    phase = "before"
    counts = {"before": 0, "during": 0, "after": 0}
    new_id = Keyring(NEW).primary.key_id

    async def encrypt_all(pool: list[CryptoClient]) -> None:
        nonlocal failures
        i = 0
        while True:
            for client in pool:
                data = b"%d" % i
                i += 1
                try:
                    made.append((client.encrypt(data), data))
                    counts[phase] += 1
                except CryptoError:
                    failures += 1
            await anyio.sleep(0.1)

    async with contextlib.AsyncExitStack() as stack:
        pool = [await stack.enter_async_context(CryptoClient(config)) for _ in range(n)]
        with anyio.fail_after(300):
            for client in pool:
                await client.authenticate()
        sessions = [client.session_id for client in pool]
        print("READY", flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(encrypt_all, pool)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # the server reloads now
            phase = "during"
            started = time.monotonic()
            with anyio.fail_after(60):
                while not all(c.snapshot and c.snapshot.key_id == new_id for c in pool):
                    await anyio.sleep(0.05)
            followed = time.monotonic() - started
            print("FOLLOWED", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)  # step 3: clients reload
            step3 = CryptoConfig(
                server_url=config.server_url,
                secret_key=NEW,
                old_secret_keys=[OLD],
                max_drift=30,
            )
            for client in pool:
                client.reload(step3)
            phase = "after"
            await anyio.sleep(3.0)
            tg.cancel_scope.cancel()
        disconnected = sum(c.session_id != s for c, s in zip(pool, sessions, strict=True))
    ring = Keyring(NEW, old=[OLD])
    undecryptable = sum(ring.decrypt(token) != data for token, data in made)
    result = {
        "clients": n,
        "encrypted": len(made),
        "by_phase": counts,
        "encrypt_failures": failures,
        "disconnections": disconnected,
        "undecryptable": undecryptable,
        "all_followed_s": round(followed, 2),
    }
    print("RESULT " + json.dumps(result), flush=True)


def scenario(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "server_config.json"
        save_config(path, ServerConfig(secret_key=OLD, host=HOST, port=0, tick_interval=1.0))
        server = ServeProcess("--config", str(path), log=Path(tmp) / "server.log")
        server.start()
        child = None
        try:
            child = spawn(MODULE, "_clients", str(server.port), str(n), stdin=True)
            read_tagged(child, "READY", 600)
            time.sleep(3.0)
            save_config(path, ServerConfig(secret_key=NEW, host=HOST, port=0, tick_interval=1.0))
            server.signal(signal.SIGHUP)
            _tell(child)
            read_tagged(child, "FOLLOWED", 120)
            time.sleep(2.0)
            _tell(child)  # step 3
            result: dict[str, Any] = json.loads(read_tagged(child, "RESULT", 120))
            result["server_reloaded"] = "reloaded config" in server.output()
        finally:
            end(child)
            server.stop()
    return result


def _tell(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_clients":
        import anyio

        anyio.run(clients, int(argv[1]), int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["rotate"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = scenario(args.clients)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    ok = not (result["encrypt_failures"] or result["disconnections"] or result["undecryptable"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
