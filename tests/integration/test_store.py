"""The event store against a real Postgres: versions, conflicts, idempotency, order, notifications."""
import threading

import pytest

from domain.errors import ConcurrencyConflict, IdempotencyMismatch
from eventlog.db import connect, pool
from eventlog.store import CHANNEL, Append, Command, EventStore, NewEvent


@pytest.fixture
def store(db_url):
    return EventStore(pool(db_url))


def test_append_assigns_stream_versions_and_global_positions(store):
    r1 = store.append("s-1", 0, [NewEvent("A", {"n": 1}), NewEvent("B", {"n": 2})])
    r2 = store.append("s-2", 0, [NewEvent("A", {"n": 3})])
    assert r2.positions[0] > r1.positions[-1]
    events = store.read_stream("s-1")
    assert [(e.stream_version, e.type, e.data) for e in events] == [(1, "A", {"n": 1}), (2, "B", {"n": 2})]
    assert [e.global_position for e in store.read_all(0)] == r1.positions + r2.positions


def test_an_append_with_a_stale_expected_version_is_a_clear_conflict(store):
    store.append("s-1", 0, [NewEvent("A", {})])
    with pytest.raises(ConcurrencyConflict) as e:
        store.append("s-1", 0, [NewEvent("B", {})])
    assert (e.value.stream_id, e.value.expected, e.value.actual) == ("s-1", 0, 1)
    assert "stream s-1 is at version 1, expected 0" in str(e.value)
    assert [e.type for e in store.read_stream("s-1")] == ["A"]


def test_a_multi_stream_append_is_atomic(store):
    store.append("s-2", 0, [NewEvent("A", {})])
    with pytest.raises(ConcurrencyConflict):
        store.append_many([Append("s-1", 0, [NewEvent("X", {})]), Append("s-2", 0, [NewEvent("Y", {})])])
    assert store.read_stream("s-1") == []


def test_a_retried_command_returns_the_first_response_and_appends_nothing(store):
    first = store.append("s-1", 0, [NewEvent("A", {})], command=Command("key:abc", "h1", {"status": 200, "body": 1}))
    again = store.append("s-1", 1, [NewEvent("A", {})], command=Command("key:abc", "h1", {"status": 200, "body": 2}))
    assert not first.duplicate and again.duplicate and again.response == {"status": 200, "body": 1}
    assert store.stream_version("s-1") == 1
    with pytest.raises(IdempotencyMismatch):
        store.append("s-1", 1, [NewEvent("A", {})], command=Command("key:abc", "other", {}))


def test_concurrent_retries_of_one_command_append_once(store):
    results = []

    def go():
        results.append(store.append("s-1", None, [NewEvent("A", {})],
                                    command=Command("key:race", "h", {"status": 200, "body": "x"})))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1
    assert store.stream_version("s-1") == 1


def test_each_append_notifies_listeners(store, db_url):
    listener = connect(db_url)
    listener.execute(f"LISTEN {CHANNEL}")
    r = store.append("s-1", 0, [NewEvent("A", {})])
    got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert got == [str(r.positions[-1])]
    listener.close()


def test_events_carry_metadata(store):
    meta = {"actor": "key_1", "request_id": "r1", "correlation_id": "c1", "causation_id": "k1"}
    store.append("s-1", 0, [NewEvent("A", {}, meta)])
    assert store.read_stream("s-1")[0].metadata == meta
