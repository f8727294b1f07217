"""Issue 10: a log holding events in an older shape stays readable. An upcaster (domain/events.UPCASTERS)
turns each old event into today's shape on read, so replay, verify and every reader see one shape, and the
stored events are never rewritten. The old shapes here are what an earlier version of the registry could have
written: `ModelAdded` (base/kind/job/path/at) and `AliasSet` (without a previous target)."""
from __future__ import annotations

import pytest

from domain import events
from eventlog.db import pool
from eventlog.runner import catch_up, replay, verify
from eventlog.store import EventStore, NewEvent


@pytest.fixture
def old_shapes(monkeypatch):
    monkeypatch.setitem(events.UPCASTERS, "ModelAdded", lambda d: ("ModelRegistered", {
        "id": d["id"], "project": d["project"], "base_model": d["base"], "backend": {"lora": "hf-lora"}[d["kind"]],
        "job_id": d["job"], "artifact_path": d["path"], "created_at": d["at"],
        "lineage": {"upcast_from": "ModelAdded"}}))
    monkeypatch.setitem(events.UPCASTERS, "AliasSet", lambda d: ("AliasPromoted", {
        "project": d["project"], "alias": d["alias"], "model": d["model"], "previous": None,
        "reason": d.get("why") or "(set before reasons were recorded)", "at": d["at"]}))


def test_a_log_with_old_event_shapes_replays_and_verifies_as_todays(settings, old_shapes):
    store = EventStore(pool(settings.database_url))
    store.append("model-ft:m:p::old", 0, [NewEvent("ModelAdded", {
        "id": "ft:m:p::old", "project": "p", "base": "smollm2-135m-instruct", "kind": "lora",
        "job": "ftjob-old", "path": "artifacts/ftjob-old/model", "at": 1_600_000_000})])
    store.append("alias-p/tutor", 0, [NewEvent("AliasSet", {"project": "p", "alias": "tutor",
                                                             "model": "ft:m:p::old", "at": 1_600_000_001})])
    catch_up(store.pool)
    with store.pool.connection() as c:
        assert c.execute("SELECT backend, lineage FROM models WHERE id = 'ft:m:p::old'").fetchone() == {
            "backend": "hf-lora", "lineage": {"upcast_from": "ModelAdded"}}
        assert c.execute("SELECT model FROM aliases WHERE project = 'p' AND alias = 'tutor'").fetchone() == {
            "model": "ft:m:p::old"}
        stored = c.execute("SELECT type FROM events ORDER BY global_position").fetchall()
    assert [r["type"] for r in stored] == ["ModelAdded", "AliasSet"]  # the log itself is never rewritten
    assert [e.type for e in store.read_all()] == ["ModelRegistered", "AliasPromoted"]  # readers see today's
    assert replay(store.pool)["differences"] == {}
    assert verify(store.pool)["differences"] == {}
