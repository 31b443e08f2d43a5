"""The benchmarks' epoll clients do the whole exchange a real client does, and come back.

``scripts/bench_fanout.py`` and ``scripts/bench_split.py`` measure the server with
them, so a client that skipped a step (no handshake, no pongs, pushes not read)
would make every figure wrong without failing anything else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from arraycrypto import save_config

from .harness import frames
from .harness.epoll_clients import EpollClients, StormClients
from .harness.servers import ServeProcess, fetch_metric, server_config

CLIENTS = 40


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_epoll_clients_authenticate_record_pushes_and_answer_pings(
    tmp_path: Path, backend: str
) -> None:
    path = tmp_path / "server_config.json"
    # A ping every 0.1 s, and a generous timeout: the pongs are counted, not inferred
    # from clients surviving a deadline a loaded machine could miss.
    save_config(path, server_config(tick_interval=0.2, ping_interval=0.1, ping_timeout=5))
    with ServeProcess("--config", str(path), "--backend", backend) as server:
        clients = EpollClients(server.port)
        try:
            clients.connect(CLIENTS, timeout=20)
            assert fetch_metric(server.port, "arraycrypto_handshakes_ok_total") == CLIENTS
            clients.bench.recording = True
            clients.run(time.time() + 2.0)  # 10 ticks, up to 20 pings each
            assert fetch_metric(server.port, "arraycrypto_subscribed_clients") == CLIENTS
            assert min(clients.pongs()) >= 5
            latencies = clients.bench.latencies
            # Every client, every tick (a tick of slack at either end).
            assert len(latencies) >= CLIENTS * 8
            assert all(-50 < ms < 5000 for ms in latencies)  # arrival minus the snapshot's time
        finally:
            clients.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_storm_clients_come_back_once_each_after_a_restart(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "server_config.json"
    save_config(path, server_config(tick_interval=0.2))
    with ServeProcess("--config", str(path), "--backend", backend) as server:
        clients = StormClients(server.port, max_delay=0.5)
        try:
            clients.until(lambda: len(clients) == CLIENTS, 20, start=CLIENTS)
            clients.auth_times.clear()
            server.kill()
            clients.until(lambda: len(clients) == 0, 10)  # every connection lost
            server.start()  # the same port
            clients.until(lambda: len(clients) == CLIENTS, 20)
            assert len(clients.auth_times) == CLIENTS  # each back once, none twice
            assert fetch_metric(server.port, "arraycrypto_handshakes_ok_total") == CLIENTS
        finally:
            clients.closing = True
            clients.close()


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 70_000])
def test_the_frame_codecs_mask_is_the_rfcs(size: int) -> None:
    payload = os.urandom(size)
    frame = frames.encode(frames.TEXT, payload)
    offset = 2 if size < 126 else 4 if size < 65536 else 10
    key, masked = frame[offset : offset + 4], frame[offset + 4 :]
    # RFC 6455, section 5.3: octet i is XORed with octet i MOD 4 of the key.
    assert bytes(b ^ key[i % 4] for i, b in enumerate(masked)) == payload
