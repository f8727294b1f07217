"""Issue 10, audit and time travel, over HTTP against the running service: the registry as it stood before and
after a promotion and a deletion (folded from the log), a model's history, the lineage of a model trained
from feedback back to the model whose answers were corrected, what produced a chat answer (model, sampling,
chunks with their document versions), and the audit log's filters and what a pupil's key may read there."""
from __future__ import annotations

import datetime
import time

import pytest

from tests.helpers import register_model, wait_for

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def admin(stack):
    return stack.new_key("admin", project="audit-school")


def position(stack) -> int:
    return stack.sql("SELECT max(global_position) AS p FROM events")[0]["p"]


def promote(stack, key: str, model: str, reason: str) -> None:
    r = stack.http("POST", "/api/aliases/tutor", key, json={"model": model, "reason": reason})
    assert r.status_code == 200, r.text


def registry(stack, key: str, as_of) -> dict:
    r = stack.http("GET", "/api/registry", key, params={"as_of": str(as_of)})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_registry_as_of_any_point_across_a_promotion_and_a_deletion(stack, admin):
    k, project = admin["key"], admin["project"]
    before = position(stack)
    time.sleep(1.1)
    t_before = datetime.datetime.now(datetime.UTC).isoformat()
    m1 = register_model(stack, project)
    m2 = register_model(stack, project)
    promote(stack, k, m1, "first tutor")
    p_first = position(stack)
    promote(stack, k, m2, "better answers")
    p_second = position(stack)
    assert stack.http("DELETE", f"/v1/models/{m1}", k).status_code == 200
    wait_for(lambda: stack.sql("SELECT deleted_at FROM models WHERE id = %s", (m1,))[0]["deleted_at"], 30,
             what="the deletion projected")
    p_deleted = position(stack)

    def state(as_of):
        reg = registry(stack, k, as_of)
        return {m["id"] for m in reg["models"]}, {a["alias"]: a["model"] for a in reg["aliases"]}

    assert state(before) == (set(), {"tutor": BASE})
    assert state(t_before) == (set(), {"tutor": BASE})  # a time works as well as a position
    assert state(p_first) == ({m1, m2}, {"tutor": m1})
    assert state(p_second) == ({m1, m2}, {"tutor": m2})
    assert state(p_deleted) == ({m2}, {"tutor": m2})
    reg = registry(stack, k, p_second)
    tutor = next(a for a in reg["aliases"] if a["alias"] == "tutor")
    assert tutor["reason"] == "better answers" and tutor["actor"] and reg["as_of"]["position"] == p_second
    # another project's registry at the same point holds none of this
    other = stack.new_key("admin", project="audit-other")["key"]
    assert {m["id"] for m in registry(stack, other, p_deleted)["models"]} == set()
    # the model's history: registered, promoted, demoted, deleted; with actors and reasons
    r = stack.http("GET", f"/api/models/{m1}/history", k)
    assert r.status_code == 200, r.text
    steps = [(e["type"], e.get("change")) for e in r.json()["data"]]
    assert steps == [("ModelRegistered", None), ("AliasPromoted", "promoted"), ("AliasPromoted", "demoted"),
                     ("ModelDeleted", None)], steps
    assert r.json()["data"][2]["reason"] == "better answers" and all(e["actor"] for e in r.json()["data"])
    assert stack.http("GET", f"/api/models/{m1}/history", other).status_code == 404
    for bad in ("yesterday", "", "2026-13-45"):
        r = stack.http("GET", "/api/registry", k, params={"as_of": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "as_of"


def test_a_chat_record_names_the_model_the_sampling_and_the_document_versions(stack, admin):
    k = admin["key"]
    r = stack.http("POST", "/api/documents", k, json={"title": "Library hours",
                                                      "text": "The school library opens at 8:15 every weekday."})
    assert r.status_code == 201, r.text
    doc = r.json()["id"]
    wait_for(lambda: stack.http("GET", f"/api/documents/{doc}", k).json()["status"] == "indexed", 120,
             what="the document indexed")
    r = stack.http("POST", "/v1/chat/completions", k, json={
        "model": BASE, "max_tokens": 2, "temperature": 0, "seed": 5,
        "messages": [{"role": "user", "content": "When does the library open?"}]})
    assert r.status_code == 200, r.text
    chat_id = r.json()["id"]
    wait_for(lambda: stack.http("GET", f"/api/chats/{chat_id}", k).status_code == 200, 30, what="the chat recorded")
    rec = stack.http("GET", f"/api/chats/{chat_id}", k).json()
    assert rec["model"]["id"] == BASE and rec["model"]["kind"] == "base" and rec["model"]["alias"] is None
    assert rec["sampling"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 2, "seed": 5, "retrieval": True,
                               "top_k": 4}
    sha = stack.sql("SELECT sha256 FROM documents WHERE id = %s", (doc,))[0]["sha256"]
    assert any(c["document_id"] == doc and c["document_sha256"] == sha and c["title"] == "Library hours"
               for c in rec["chunks"]), rec["chunks"]
    other = stack.new_key("viewer", project="audit-other")["key"]
    assert stack.http("GET", f"/api/chats/{chat_id}", other).status_code == 404


def test_the_lineage_of_a_model_trained_from_feedback_reaches_the_model_it_corrected(stack, admin):
    k, project = admin["key"], admin["project"]
    chats = []
    for i in range(10):
        r = stack.http("POST", "/v1/chat/completions", k, json={
            "model": BASE, "max_tokens": 1, "temperature": 0, "retrieval": False,
            "messages": [{"role": "user", "content": f"What is {i} + 1?"}]})
        assert r.status_code == 200, r.text
        chats.append(r.json()["id"])
    wait_for(lambda: len(stack.sql("SELECT id FROM chat_answers WHERE id = ANY(%s)", (chats,))) == 10, 30,
             what="the chats projected")
    for i, cid in enumerate(chats):
        r = stack.http("POST", "/api/chat/feedback", k, json={
            "chat_id": cid, "rating": 2, "corrected_answer": f"{i} + 1 = {i + 1}.",
            "messages": [{"role": "user", "content": f"What is {i} + 1?"}]})
        assert r.status_code == 201, r.text
    wait_for(lambda: len(stack.sql("SELECT 1 FROM chat_feedback WHERE chat_id = ANY(%s) AND approved",
                                   (chats,))) == 10, 30, what="the feedback projected")
    r = stack.http("POST", "/api/datasets/from-feedback", k)
    assert r.status_code == 200, r.text
    dataset = r.json()["id"]
    job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": BASE, "training_file": dataset}).json()
    stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
    trained = register_model(stack, project, job_id=job["id"])  # the model that job would have produced
    r = stack.http("GET", f"/api/models/{trained}/lineage", k)
    assert r.status_code == 200, r.text
    graph = r.json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    edges = {(e["from"], e["to"], e["kind"]) for e in graph["edges"]}
    assert (f"job:{job['id']}", f"model:{trained}", "produced") in edges
    assert (f"file:{dataset}", f"job:{job['id']}", "training_file") in edges
    assert nodes[f"file:{dataset}"]["source"] == "feedback" and nodes[f"file:{dataset}"]["sha256"]
    for c in chats:  # each corrected answer -> its feedback -> the dataset
        fb = [b for (a, b, kind) in edges if a == f"chat:{c}" and kind == "feedback"]
        assert len(fb) == 1 and (fb[0], f"file:{dataset}", "dataset") in edges, (c, fb)
    assert (f"model:{BASE}", f"chat:{chats[0]}", "answered") in edges  # the previous model
    assert nodes[f"model:{BASE}"]["previous"] is True
    # and from the previous model's side: its chats -> feedback -> the dataset -> the job
    r = stack.http("GET", f"/api/models/{trained}/history", k)
    assert [e["type"] for e in r.json()["data"]][:1] == ["JobCreated"]


def test_the_audit_log_filters_by_type_and_time_and_hides_chat_text_from_pupils(stack, admin):
    k, project = admin["key"], admin["project"]
    assert stack.http("PUT", "/api/settings", k, json={"store_chat_text": True}).status_code == 200
    wait_for(lambda: (stack.sql("SELECT settings FROM project_settings WHERE project = %s", (project,)) or [{}])[0]
             .get("settings", {}).get("store_chat_text"), 30, what="the setting projected")
    promote(stack, k, BASE, "the audit log test")
    r = stack.http("POST", "/v1/chat/completions", k, json={
        "model": BASE, "max_tokens": 1, "retrieval": False, "messages": [{"role": "user", "content": "Secret?"}]})
    assert r.status_code == 200
    since = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)).isoformat()

    def page():  # the audit log shows events once their stream's owner is projected (never skipping one)
        r = stack.http("GET", "/api/events", k, params={"type": "ChatAnswered,AliasPromoted", "since": since,
                                                         "limit": 1000})
        assert r.status_code == 200, r.text
        return r if any(e["data"].get("messages") for e in r.json()["data"]) else None

    r = wait_for(page, 30, what="the chat in the audit log")
    types = {e["type"] for e in r.json()["data"]}
    assert types == {"ChatAnswered", "AliasPromoted"}, types
    answered = [e for e in r.json()["data"] if e["type"] == "ChatAnswered"]
    assert any(e["data"]["messages"] for e in answered), (
        [e["data"] for e in answered][-2:], stack.sql("SELECT settings FROM project_settings WHERE project = %s",
                                                       (project,)),
        stack.sql("SELECT data->>'answer' AS a, data->'messages' AS m FROM events WHERE type = 'ChatAnswered' "
                  "ORDER BY global_position DESC LIMIT 1"))
    pupil = stack.new_key("viewer", project=project)["key"]
    r = stack.http("GET", "/api/events?type=ChatAnswered&limit=1000", pupil)
    assert r.status_code == 200 and r.json()["data"]
    assert all(e["data"]["messages"] is None and e["data"]["answer"] is None for e in r.json()["data"])
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).isoformat()
    assert stack.http("GET", "/api/events", k, params={"since": future}).json()["data"] == []
    assert stack.http("GET", "/api/events?until=not-a-time", k).status_code == 400
    assert stack.http("GET", "/api/events?type=Bad%20Type", k).status_code == 400
