"""Admission, pure: the pending pool, eviction of the old, waiting for the young."""

from __future__ import annotations

import pytest

from arraycrypto.core.admission import Admission

OLD = 10.0  # seconds: well past evict_after (1 s)


def test_pending_pool_evicts_its_oldest_once_old() -> None:
    admission = Admission(max_connections=10, max_pending=3)
    tickets = []
    for _ in range(3):
        got = admission.arrive(0.0)
        assert got is not None
        tickets.append(got[0])
        assert got[1] is None
    assert admission.wait_until(OLD) is None  # room: the oldest may go
    got = admission.arrive(OLD)  # the pool is full: the oldest pending goes
    assert got is not None
    assert got[1] == tickets[0]
    assert admission.pending == 3
    assert admission.total == 3
    admission.done(tickets[0])  # its task ends later: counted once only
    assert admission.total == 3


def test_a_full_pool_of_young_connections_makes_newcomers_wait() -> None:
    # A reconnect storm: every pending connection is a client mid-handshake.
    admission = Admission(max_connections=10, max_pending=2)
    first = admission.arrive(0.0)
    second = admission.arrive(0.5)
    assert first is not None
    assert second is not None
    assert admission.wait_until(0.6) == 1.0  # when the oldest is evict_after old
    assert admission.wait_until(1.0) is None
    # A pending connection that finishes makes room at once, without evicting anyone.
    admission.authenticated(first[0])
    assert admission.wait_until(0.6) is None
    third = admission.arrive(0.6)
    assert third is not None
    assert third[1] is None


def test_connections_accepted_but_not_yet_admitted_count() -> None:
    admission = Admission(max_connections=10, max_pending=3)
    admission.arrive(0.0)
    assert admission.wait_until(0.1, incoming=1) is None
    # With them the pool would be full: let them be admitted first, then look again.
    assert admission.wait_until(0.1, incoming=2) == 0.1


def test_newcomers_past_a_young_full_pool_grow_it_instead_of_evicting() -> None:
    # Accepted in one batch before the pool filled: they are admitted, nobody evicted.
    admission = Admission(max_connections=10, max_pending=1)
    admission.arrive(0.0)
    got = admission.arrive(0.1)
    assert got is not None
    assert got[1] is None
    assert admission.pending == 2


def test_authenticated_clients_leave_the_pool_and_fill_the_server() -> None:
    admission = Admission(max_connections=3, max_pending=2)
    for _ in range(3):
        got = admission.arrive(0.0)
        assert got is not None
        admission.authenticated(got[0])
    assert admission.pending == 0
    assert admission.wait_until(0.0) is None  # no waiting: refused at once
    assert admission.arrive(0.0) is None  # full of authenticated clients: refused (503)


def test_a_full_server_evicts_an_old_pending_connection_before_refusing() -> None:
    admission = Admission(max_connections=3, max_pending=3)
    first = admission.arrive(0.0)
    assert first is not None
    for _ in range(2):
        got = admission.arrive(0.0)
        assert got is not None
        admission.authenticated(got[0])
    assert admission.wait_until(0.5) == 1.0  # full, its one pending still young
    assert admission.arrive(0.5) is None  # never beyond max_connections
    got = admission.arrive(OLD)  # full, one old pending: it goes, the newcomer comes in
    assert got is not None
    assert got[1] == first[0]
    assert admission.total == 3
    admission.done(got[0])
    assert admission.total == 2


def test_bounds() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        Admission(max_connections=3, max_pending=4)


def test_a_busy_server_evicts_only_what_is_slower_than_its_real_clients() -> None:
    # A reconnect storm on a busy server: real clients take 1.5 s from accept to their
    # proof. A pool of them, all past 1 s, is not evicted: only connections pending
    # twice as long as the recent handshakes (a slow-loris never proves anything).
    admission = Admission(max_connections=100, max_pending=2)
    done = admission.arrive(0.0)
    assert done is not None
    admission.authenticated(done[0], now=1.5)  # a client that proved itself after 1.5 s
    assert admission.evict_age == 3.0
    first = admission.arrive(1.5)
    second = admission.arrive(1.6)
    assert first is not None
    assert second is not None
    assert admission.wait_until(2.6) == 4.5  # 1 s old, as real clients are now: wait
    got = admission.arrive(2.6)  # accepted already: the pool grows, nobody evicted
    assert got is not None
    assert got[1] is None
    got = admission.arrive(4.5)
    assert got is not None
    assert got[1] == first[0]  # 3 s: slower than any real client lately


def test_the_recent_handshake_time_falls_back_as_clients_get_fast() -> None:
    admission = Admission(max_connections=100, max_pending=10)
    now = 0.0
    slow = admission.arrive(now)
    assert slow is not None
    admission.authenticated(slow[0], now=2.0)
    assert admission.evict_age == 4.0
    for _ in range(60):  # fast handshakes (10 ms) pull it back down to the floor
        now += 1.0
        got = admission.arrive(now)
        assert got is not None
        admission.authenticated(got[0], now=now + 0.01)
    assert admission.evict_age == 1.0
    # Answered HTTP requests (no proof: an attacker can drip those) do not count.
    http = admission.arrive(now)
    assert http is not None
    admission.authenticated(http[0])
    assert admission.evict_age == 1.0


def test_a_second_authentication_changes_nothing() -> None:
    # The room authenticates a connection when it hands it over, its task again: the
    # second call must neither free a second place nor learn a second time.
    admission = Admission(max_connections=10, max_pending=2)
    admitted = admission.arrive(0.0)
    assert admitted is not None
    ticket, _ = admitted
    assert admission.authenticated(ticket, now=0.2) is True
    learned = admission.handshake_time
    assert admission.authenticated(ticket, now=5.0) is False
    assert (admission.handshake_time, admission.pending) == (learned, 0)
