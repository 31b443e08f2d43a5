"""Replicas behind the real HAProxy, running the shipped deploy/haproxy.cfg.

Two ``arraycrypto serve`` processes with one secret, HAProxy in front of them, and
``CryptoClient``\\ s whose only URL is HAProxy's. A replica SIGKILLed: its clients fail
over through HAProxy and never fail to encrypt. A rolling restart with drain (SIGTERM,
exit 0, start again on the same port, wait until HAProxy has it UP, next): no client
fails to encrypt, every ciphertext decrypts, and each drained replica's clients come back
spread out, not all at once. The figures at scale are from ``python -m scripts.lb``
(docs/reliability.md).

HAProxy comes from the distribution (``.ci/run`` installs it): without it these tests
fail in CI (``CI`` set) and are skipped elsewhere.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from arraycrypto import CryptoClient

from .harness.http import http_get
from .harness.lb import SHIPPED, Fleet, Workload, haproxy_binary, health, spread
from .harness.servers import client_config

pytestmark = pytest.mark.anyio

CLIENTS = 16
MAX_DRIFT = 10.0  # a cached snapshot stays fresh this long: far beyond any outage here
DRAIN_SECONDS = 2.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two replicas and HAProxy, shared by the tests of this module (each leaves it whole)."""
    if haproxy_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed: .ci/run installs it (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    directory = tmp_path_factory.mktemp("haproxy")
    with Fleet(directory, 2, tick_interval=0.1, drain_seconds=DRAIN_SECONDS) as fleet:
        yield fleet


@asynccontextmanager
async def encrypting(fleet: Fleet) -> AsyncIterator[Workload]:
    """CLIENTS clients through HAProxy, spread over the replicas, encrypting every 50 ms."""
    await fleet.all_up()
    config = client_config(
        fleet.lb.port,
        max_drift=MAX_DRIFT,
        connect_timeout=2.0,
        reconnect_max_delay=0.5,
    )
    assert config.server_url == fleet.lb.url
    async with anyio.create_task_group() as tg:
        clients = [CryptoClient(config) for _ in range(CLIENTS)]
        for client in clients:
            await tg.start(_enter, client)
        with anyio.fail_after(15):
            for client in clients:
                await client.authenticate()
        # leastconn: every replica got its share (the previous test's clients are gone).
        # Half each when every first connection succeeds; on a loaded machine a client
        # whose first try timed out (connect_timeout) retries, and its retry may land on
        # the other replica: 8/8 was missed once in a dozen full runs. A share, then.
        counts: list[int] = []
        with anyio.move_on_after(10):
            while not (sum(counts) == CLIENTS and min(counts) >= CLIENTS // 4):
                await anyio.sleep(0.05)
                counts = await fleet.subscribed()
        assert sum(counts) == CLIENTS, counts
        assert min(counts) >= CLIENTS // 4, counts
        workload = Workload(clients, max_drift=MAX_DRIFT)
        await tg.start(workload.run)
        yield workload
        tg.cancel_scope.cancel()


async def _enter(client: CryptoClient, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async with client:
        task_status.started()
        await anyio.sleep_forever()


def test_the_shipped_config_is_valid_as_shipped_and_as_run(fleet: Fleet) -> None:
    binary = haproxy_binary()
    assert binary is not None
    shipped = subprocess.run(
        [binary, "-c", "-f", str(SHIPPED)], capture_output=True, text=True, check=False
    )
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    fleet.lb.check()
    # What the test changed, and nothing else: bind, servers, stats socket, identity.
    ours = fleet.lb.config.read_text().splitlines()
    theirs = SHIPPED.read_text().splitlines()
    changed = set(theirs) - set(ours)
    assert {line.split()[0] for line in changed} == {
        "bind",
        "server",
        "stats",
        "user",
        "group",
        "chroot",
    }


async def test_health_and_metrics_through_haproxy(fleet: Fleet) -> None:
    await fleet.all_up()
    status, _, body = await http_get(fleet.lb.port, "/health", connection="close")
    assert status == 200
    assert b'"healthy"' in body
    # Per-replica metrics are scraped from each replica, never through the balancer.
    status, _, _ = await http_get(fleet.lb.port, "/metrics", connection="close")
    assert status == 403
    assert (await fleet.lb.server("replica1"))["check_status"] == "L7OK"


async def test_sigkill_a_replica_its_clients_fail_over_through_haproxy(fleet: Fleet) -> None:
    async with encrypting(fleet) as work:
        await anyio.sleep(0.3)
        counts = await fleet.subscribed()
        victim = counts.index(max(counts))
        survivor = 1 - victim
        killed = time.monotonic()
        fleet.replicas[victim].kill()
        # HAProxy has not noticed yet: reconnections first reach the dead replica, are
        # refused, and are redispatched (option redispatch) to the live one.
        await work.wait_back(killed, counts[victim], timeout=15)
        assert (await health(fleet.replicas[survivor].port))["subscribed"] == CLIENTS
        await fleet.lb.wait_status(fleet.names[victim], "DOWN", timeout=10)
        await anyio.sleep(0.3)  # go on encrypting on the survivor
    await fleet.restart(victim)
    assert work.failures_fresh == 0, work.errors[:3]
    assert work.failures_expired == 0  # no outage came near max_drift
    assert len(work.since(killed)) == counts[victim]  # only the victim's clients moved
    assert len(work.made) > CLIENTS * 10
    assert work.undecryptable() == 0


async def test_rolling_restart_with_drain_through_haproxy(fleet: Fleet) -> None:
    async with encrypting(fleet) as work:
        for i, replica in enumerate(fleet.replicas):
            before = (await health(replica.port))["subscribed"]
            started = time.monotonic()
            assert await fleet.drain(i) == 0  # SIGTERM: drained, then exit 0
            assert "drained" in replica.output()
            # The last goodbyes may still be reconnecting when the replica exits.
            moved = await work.wait_back(started, before)
            # Each of its clients reconnected once, to the other replica: none was let
            # back onto the draining one (it answers new clients 503; HAProxy retries
            # them on the other), or it would have been closed and counted again.
            assert len(moved) == before
            assert len({r.client for r in moved}) == before
            # Spread, not a storm: no 100 ms holds more than half of them (with
            # drain_seconds 0 all of them land in one; docs/reliability.md).
            shape = spread([r.back for r in moved], started)
            assert shape["max_per_bucket"] <= math.ceil(before / 2), shape
            await fleet.restart(i)
        await anyio.sleep(0.3)
        assert work.connected
    assert work.failures_fresh == 0, work.errors[:3]
    assert work.failures_expired == 0
    assert len(work.made) > CLIENTS * 20
    assert work.undecryptable() == 0


def test_ci_installs_haproxy() -> None:
    # The HAProxy tests must never skip in CI: .ci/run installs it when it is missing.
    script = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert "command -v haproxy" in script
    assert "apt-get install -y -q haproxy" in script
