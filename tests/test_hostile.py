"""Hostile input against a live server: documented outcomes, others unharmed, no leaks."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import anyio
import pytest

from arraycrypto.core import messages as m

from .harness.hostile import Runner, generate
from .harness.peers import RawClient
from .harness.servers import running_server, server_config, with_tls

pytestmark = pytest.mark.anyio


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_hostile_cases_get_documented_outcomes_and_leak_nothing(
    tls: bool, tmp_path: Path
) -> None:
    # The deadlines bound the whole pre-authentication phase (TLS handshake included):
    # 1 s, not less, so a loaded machine cannot turn a case's answer into a timeout.
    config = server_config(
        tick_interval=0.2, handshake_timeout=1.0, http_read_timeout=1.0, max_frame_size=4096
    )
    context = None
    if tls:  # the same cases through the server's own TLS layer
        config, context = with_tls(config, tmp_path)
    cases = generate(random.Random(2026), 22 * 12)  # every class, 12 times
    async with running_server(config) as server:
        assert server.port
        # Settle first (the listener starts its accept tasks lazily), then count.
        settle = await RawClient.connect(server.port, ssl_context=context)
        await settle.aclose()
        with anyio.fail_after(5):
            while server.metrics.connections:
                await anyio.sleep(0.01)
        fds_before = open_fds()
        tasks_before = len(anyio.get_running_tasks())
        witness = await RawClient.connect(server.port, ssl_context=context)
        await witness.handshake()
        ticks_seen: list[int] = []

        async def watch() -> None:
            while True:
                msg = await witness.recv_message(timeout=5)
                assert isinstance(msg, m.SnapshotMessage)
                ticks_seen.append(msg.tick)

        runner = Runner(server.port, ssl_context=context)
        outcomes: Counter[tuple[str, str]] = Counter()
        wrong = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            ticks_before = server.metrics.ticks_total
            skipped_before = server.metrics.ticks_skipped_total
            limit = anyio.Semaphore(20)

            async def one(case_index: int) -> None:
                case = cases[case_index]
                async with limit:
                    outcome = await runner.run(case)
                outcomes[(case.kind, outcome)] += 1
                if outcome not in case.expect:
                    wrong.append((case.kind, outcome, sorted(case.expect)))

            async with anyio.create_task_group() as runs:
                for i in range(len(cases)):
                    runs.start_soon(one, i)
            made = server.metrics.ticks_total - ticks_before
            skipped = server.metrics.ticks_skipped_total - skipped_before
            tg.cancel_scope.cancel()
        assert not wrong, wrong[:10]
        assert sum(outcomes.values()) == len(cases)
        # The witness got every snapshot made while the cases ran, in order. A gap in
        # tick numbers is allowed only where the server itself skipped a tick (its loop
        # stalled past a whole interval on a loaded machine), never a lost push.
        assert len(ticks_seen) >= made - 1
        assert ticks_seen == sorted(set(ticks_seen))
        assert ticks_seen[-1] - ticks_seen[0] - (len(ticks_seen) - 1) <= skipped
        await witness.aclose()
        with anyio.move_on_after(5):
            while server.metrics.connections or len(anyio.get_running_tasks()) > tasks_before:
                await anyio.sleep(0.05)
        left = [str(t.name) for t in anyio.get_running_tasks()]
        assert server.metrics.connections == 0
        assert len(left) <= tasks_before, "\n".join(left)
        assert open_fds() <= fds_before
        assert server.metrics.value("subscribed_clients") == 0
