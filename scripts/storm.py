"""Reconnect storm: 10 000 clients, the server killed and restarted under them.

    python -m scripts.chaos storm                # 10 000 clients, one worker
    python -m scripts.chaos storm --workers 2    # the same against two workers

``arraycrypto serve`` (as an operator runs it) with 10 000 clients connected; it is
SIGKILLed and started again on the same port, and every client reconnects the way
``CryptoClient``'s connector does: at once after losing an authenticated connection,
then after each failed attempt a delay from the client's own backoff (full jitter,
``arraycrypto.client.connector.backoff``, capped at 30 s). Reported: seconds from the
restart (the log's "listening" line) to the first and to the last client authenticated
again, how long the server took to start, and what the server's admission did meanwhile
(handshakes evicted from the pending pool, accept pauses).

The clients are the benchmarks' epoll clients (tests/harness/epoll_clients.py): one
process, about half the CPU of asyncio clients, so that on a small machine the server
rather than the load generator is what the storm waits for. Only 127.0.0.1; every
process started is ended.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness.epoll_clients import StormClients
from tests.harness.light import end, raise_fd_limit, read_tagged, spawn
from tests.harness.servers import fetch_metric, serve_process

MODULE = "scripts.storm"


def storm_clients(port: int, n: int) -> None:
    """The child process: connect ``n``, report READY, then the storm's RESULT."""
    raise_fd_limit()
    clients = StormClients(port)
    started = time.time()
    clients.until(lambda: len(clients) == n, 300, start=n)
    print(f"READY {time.time() - started:.3f}", flush=True)
    # This process stands in for 10 000 separate clients: keep its own full
    # collections (a good part of a second at this size) out of the figure.
    gc.freeze()
    clients.auth_times.clear()
    clients.until(lambda: len(clients) == 0, 300)  # the kill: every connection lost
    clients.until(lambda: len(clients) == n, 300)  # and every client back
    result = {
        "clients": n,
        "first_auth": min(clients.auth_times),
        "last_auth": max(clients.auth_times),
    }
    print("RESULT " + json.dumps(result), flush=True)
    clients.closing = True
    clients.close()


def scenario_storm(n: int = 10_000, workers: int = 1) -> dict[str, Any]:
    """Kill and restart the server under ``n`` connected clients; time their return."""
    with tempfile.TemporaryDirectory() as tmp:
        server = serve_process(
            Path(tmp),
            workers,
            tick_interval=1.0,
            max_connections=raise_fd_limit() - 100,
            ping_interval=60,
            ping_timeout=60,
        )
        server.start()
        clients = None
        try:
            clients = spawn(MODULE, "_clients", str(server.port), str(n))
            initial = float(read_tagged(clients, "READY", 600))
            time.sleep(2)
            server.kill()
            restarting = time.time()
            server.start()
            # When the log says it listens (read every 20 ms): the first client can be
            # back a few hundredths "before" it.
            restarted = time.time()
            result: dict[str, Any] = json.loads(read_tagged(clients, "RESULT", 600))
            # After the restart: handshakes cut short to make room, and waits for room.
            evicted = fetch_metric(server.port, "arraycrypto_pending_evicted_total")
            paused = fetch_metric(server.port, "arraycrypto_accept_paused_total")
        finally:
            end(clients)
            server.kill()
    return {
        "clients": n,
        "workers": workers,
        "pending_evicted_after_restart": int(evicted),
        "accept_paused_after_restart": int(paused),
        "initial_connect_s": round(initial, 2),
        "server_start_s": round(restarted - restarting, 2),
        "all_reauthenticated_s_after_restart": round(result["last_auth"] - restarted, 2),
        "first_reauthenticated_s_after_restart": round(result["first_auth"] - restarted, 2),
    }


if __name__ == "__main__" and sys.argv[1:2] == ["_clients"]:
    storm_clients(int(sys.argv[2]), int(sys.argv[3]))
