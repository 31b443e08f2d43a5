"""Admission, pure: the pending pool, eviction of the oldest, refusal only when full."""

from __future__ import annotations

import pytest

from arraycrypto.core.admission import Admission


def test_pending_pool_evicts_its_oldest() -> None:
    admission = Admission(max_connections=10, max_pending=3)
    tickets = []
    for _ in range(3):
        got = admission.arrive()
        assert got is not None
        tickets.append(got[0])
        assert got[1] is None
    got = admission.arrive()  # the pool is full: the oldest pending goes
    assert got is not None
    assert got[1] == tickets[0]
    assert admission.pending == 3
    assert admission.total == 3
    admission.done(tickets[0])  # its task ends later: counted once only
    assert admission.total == 3


def test_authenticated_clients_leave_the_pool_and_fill_the_server() -> None:
    admission = Admission(max_connections=3, max_pending=2)
    for _ in range(3):
        got = admission.arrive()
        assert got is not None
        admission.authenticated(got[0])
    assert admission.pending == 0
    assert admission.arrive() is None  # full of authenticated clients: refused (503)


def test_a_full_server_evicts_a_pending_connection_before_refusing() -> None:
    admission = Admission(max_connections=3, max_pending=3)
    first = admission.arrive()
    assert first is not None
    for _ in range(2):
        got = admission.arrive()
        assert got is not None
        admission.authenticated(got[0])
    got = admission.arrive()  # full, one pending: it goes, the newcomer comes in
    assert got is not None
    assert got[1] == first[0]
    assert admission.total == 3
    admission.done(got[0])
    assert admission.total == 2


def test_bounds() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        Admission(max_connections=3, max_pending=4)
