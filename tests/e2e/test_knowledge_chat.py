"""The knowledge base and chat over HTTP, with the openai SDK and DSPy as clients: documents are chunked
and embedded into pgvector, the promoted model answers with sources, every answer is an event."""
import json
import os
import time

import pytest
from openai import OpenAI

from tests.conftest import DATA
from tests.helpers import pdf_bytes

pytestmark = pytest.mark.slow

PHOTOSYNTHESIS = (
    "Photosynthesis is how green plants make their food. In the leaves, chlorophyll captures energy from "
    "sunlight. The plant takes in carbon dioxide from the air through tiny pores called stomata and water "
    "from the soil through its roots. Using the light energy, it turns these into glucose, a sugar it uses "
    "for energy and growth, and releases oxygen as a by-product. ")
RULES = ("Riverside School library rules. The library opens at 8:15 every school day and closes at 16:30. "
         "Pupils may borrow up to three books for two weeks. Late books cost nothing, but a reminder is sent "
         "home after one week. Food and drinks are not allowed near the computers. ")


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, built by hand (no PDF writer is a dependency)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    return pdf_bytes(objs)


def wait_indexed(stack, key, doc_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = stack.http("GET", f"/api/documents/{doc_id}", key).json()
        if d["status"] != "processing":
            return d
        time.sleep(0.3)
    raise AssertionError(f"document {doc_id} not indexed in {timeout}s")


@pytest.fixture(scope="module")
def kb(stack):
    """A project with two indexed documents."""
    key = stack.new_key("trainer")
    k = key["key"]
    r = stack.http("POST", "/api/documents", k, json={"title": "Photosynthesis", "text": PHOTOSYNTHESIS * 6})
    assert r.status_code == 201, r.text
    photo = r.json()
    assert photo["status"] == "processing" and photo["id"].startswith("doc-")
    r = stack.http("POST", "/api/documents", k, files={"file": ("library-rules.md", RULES.encode())})
    assert r.status_code == 201, r.text
    rules = r.json()
    for d in (photo, rules):
        assert wait_indexed(stack, k, d["id"])["status"] == "indexed"
    return {"key": key, "photo": photo["id"], "rules": rules["id"]}


@pytest.fixture(scope="module")
def trained(stack, kb):
    """A fine-tuned model in the kb project (tiny data, with a validation file so it has an eval score)."""
    k = kb["key"]["key"]
    ids = []
    for name in ("tiny_train.jsonl", "tiny_valid.jsonl"):
        r = stack.http("POST", "/v1/files", k, files={"file": (name, (DATA / name).read_bytes())},
                       data={"purpose": "fine-tune"})
        ids.append(r.json()["id"])
    job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={
        "model": "smollm2-135m-instruct", "training_file": ids[0], "validation_file": ids[1], "suffix": "kb",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 6, "learning_rate_multiplier": 5}}}}).json()
    job = stack.wait_job(k, job["id"], {"succeeded", "failed"}, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    return job["fine_tuned_model"]


def client(stack, key) -> OpenAI:
    return OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_documents_are_listed_chunked_and_searchable(stack, kb):
    k = kb["key"]["key"]
    docs = stack.http("GET", "/api/documents", k).json()["data"]
    assert {d["id"] for d in docs} == {kb["photo"], kb["rules"]}
    photo = stack.http("GET", f"/api/documents/{kb['photo']}", k).json()
    assert photo["n_chunks"] >= 2 and photo["title"] == "Photosynthesis"
    chunks = stack.http("GET", f"/api/documents/{kb['photo']}/chunks", k).json()["data"]
    assert len(chunks) == photo["n_chunks"] and all(c["text"] for c in chunks)
    assert chunks[1]["char_start"] < chunks[0]["char_end"]  # overlapping windows
    rows = stack.sql("SELECT count(*) AS n FROM chunks WHERE document_id = %s", (kb["photo"],))
    assert rows[0]["n"] == photo["n_chunks"]
    other = stack.new_key("trainer")
    assert stack.http("GET", f"/api/documents/{kb['photo']}", other["key"]).status_code == 404


def test_a_pdf_is_read_and_unreadable_files_are_400_with_nothing_recorded(stack, kb):
    k = kb["key"]["key"]
    r = stack.http("POST", "/api/documents", k,
                   files={"file": ("volcano.pdf", tiny_pdf("Volcanoes erupt when magma rises to the surface."))})
    assert r.status_code == 201, r.text
    assert r.json()["media_type"] == "application/pdf"
    d = wait_indexed(stack, k, r.json()["id"])
    assert d["status"] == "indexed" and d["n_chunks"] == 1
    stack.http("DELETE", f"/api/documents/{d['id']}", k)
    before = stack.sql("SELECT max(global_position) AS p FROM events")[0]["p"]
    for name, content, code in [("broken.pdf", b"%PDF-1.4 this is not a pdf", "unreadable_document"),
                                ("latin1.txt", "caf\xe9".encode("latin-1"), "unreadable_document"),
                                ("essay.docx", b"PK\x03\x04", "unsupported_document"),
                                ("empty.txt", b"   ", "unreadable_document")]:
        r = stack.http("POST", "/api/documents", k, files={"file": (name, content)})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["error"]["code"] == code and name in r.json()["error"]["message"]
    r = stack.http("POST", "/api/documents", k, json={"title": "no text"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    appended = stack.sql("SELECT type FROM events WHERE global_position > %s AND metadata->>'actor' = %s",
                         (before, kb["key"]["id"]))
    assert appended == []


def test_the_tutor_alias_exists_from_the_start(stack):
    k = stack.new_key("viewer")["key"]
    assert stack.http("GET", "/api/aliases/tutor", k).json()["model"] == "smollm2-135m-instruct"
    listed = {m["id"]: m for m in stack.http("GET", "/v1/models", k).json()["data"]}
    assert listed["tutor"]["kind"] == "alias" and listed["tutor"]["target"] == "smollm2-135m-instruct"
    assert stack.http("GET", "/v1/models/tutor", k).json()["target"] == "smollm2-135m-instruct"
    history = stack.http("GET", "/api/aliases/tutor/history", k).json()["data"]
    assert history[0]["model"] == "smollm2-135m-instruct" and history[0]["actor"] == "system"


def test_chat_answers_with_sources_through_the_openai_sdk(stack, kb):
    c = client(stack, kb["key"]["key"])
    r = c.chat.completions.create(model="tutor", temperature=0, max_tokens=24,
                                  messages=[{"role": "user", "content": "How do plants make their food?"}])
    assert r.object == "chat.completion" and r.model == "smollm2-135m-instruct"
    assert r.choices[0].message.content.strip()
    assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 50
    sources = r.model_extra["sources"]
    assert sources and sources[0]["document_id"] == kb["photo"]
    assert {"document_id", "chunk", "score", "title", "text"} <= set(sources[0])
    assert sources[0]["score"] >= sources[-1]["score"]
    answered = stack.sql("SELECT data FROM events WHERE stream_id = %s", (f"chat-{r.id}",))[0]["data"]
    assert answered["model"] == "smollm2-135m-instruct" and answered["alias"] == "tutor"
    assert answered["chunk_ids"] == [s["chunk_id"] for s in sources]
    assert answered["completion_tokens"] == r.usage.completion_tokens and answered["latency_ms"] > 0
    assert answered["messages"] is None and answered["answer"] is None  # not stored unless the project allows

    off = c.chat.completions.create(model="tutor", temperature=0, max_tokens=8, extra_body={"retrieval": False},
                                    messages=[{"role": "user", "content": "How do plants make their food?"}])
    assert off.model_extra["sources"] == []
    library = c.chat.completions.create(model="tutor", temperature=0, max_tokens=8,
                                        messages=[{"role": "user", "content": "When does the library open?"}])
    assert library.model_extra["sources"][0]["document_id"] == kb["rules"]


def test_chat_streams_in_openai_chunks(stack, kb):
    c = client(stack, kb["key"]["key"])
    stream = c.chat.completions.create(model="tutor", temperature=0, max_tokens=16, stream=True,
                                       stream_options={"include_usage": True},
                                       messages=[{"role": "user", "content": "What do stomata do?"}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["sources"]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage.completion_tokens >= 1
    chat_id = chunks[0].id
    assert stack.sql("SELECT 1 FROM events WHERE stream_id = %s AND type = 'ChatAnswered'", (f"chat-{chat_id}",))


def test_bad_chat_requests_are_4xx(stack, kb):
    k = kb["key"]["key"]
    for body, param in [({"messages": [{"role": "user", "content": "hi"}]}, "model"),
                        ({"model": "tutor", "messages": []}, "messages"),
                        ({"model": "tutor", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
                        ({"model": "tutor", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
                         "max_tokens"),
                        ({"model": "tutor", "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
                         "temperature")]:
        r = stack.http("POST", "/v1/chat/completions", k, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = stack.http("POST", "/v1/chat/completions", k, json={"model": "no-such-model",
                                                            "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_promotion_switches_the_answering_model_at_once_with_history(stack, kb, trained):
    k = kb["key"]["key"]
    viewer = stack.new_key("viewer", project=kb["key"]["project"])
    r = stack.http("POST", "/api/aliases/tutor", viewer["key"], json={"model": trained, "reason": "x"})
    assert r.status_code == 403
    r = stack.http("POST", "/api/aliases/tutor", k, json={"model": trained})
    assert r.status_code == 400 and r.json()["error"]["param"] == "reason"
    r = stack.http("POST", "/api/aliases/tutor", k, json={"model": trained, "reason": "better on tiny eval"})
    assert r.status_code == 200, r.text
    assert r.json()["previous"] == "smollm2-135m-instruct"
    t0 = time.monotonic()
    chat = client(stack, k).chat.completions.create(model="tutor", temperature=0, max_tokens=8,
                                                    messages=[{"role": "user", "content": "What is a noun?"}])
    assert chat.model == trained and chat.model_extra["tunelog"]["alias"] == "tutor"
    assert time.monotonic() - t0 < 60
    history = stack.http("GET", "/api/aliases/tutor/history", k).json()["data"]
    assert [h["model"] for h in history] == ["smollm2-135m-instruct", trained]
    assert history[-1]["reason"] == "better on tiny eval" and history[-1]["actor"] == kb["key"]["id"]
    assert history[-1]["at"] > 0
    # the base model and the adapter are served side by side
    base = client(stack, k).chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=8,
                                                    messages=[{"role": "user", "content": "What is a noun?"}])
    assert base.model == "smollm2-135m-instruct"
    answers = stack.http("GET", f"/api/chat/answers?model={trained}", stack.admin_key).json()["data"]
    assert answers == []  # the admin's own project saw none; the kb project's are its own
    stack.http("POST", "/api/aliases/tutor", k, json={"model": "smollm2-135m-instruct", "reason": "reset"})


def test_the_promotion_gate_refuses_a_model_that_does_not_beat_the_target(stack, kb, trained):
    admin = stack.new_key("admin", project=kb["key"]["project"])
    k = kb["key"]["key"]
    r = stack.http("PUT", "/api/settings", admin["key"], json={"promotion_requires_better_eval": True})
    assert r.status_code == 200 and r.json()["promotion_requires_better_eval"] is True
    assert stack.http("PUT", "/api/settings", k, json={"store_chat_text": True}).status_code == 403
    try:
        r = stack.http("POST", "/api/aliases/gated", k, json={"model": "smollm2-135m-instruct", "reason": "base"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "promotion_refused"
        assert "no evaluation score" in r.json()["error"]["message"]
        r = stack.http("POST", "/api/aliases/gated", k, json={"model": trained, "reason": "has an eval"})
        assert r.status_code == 200, r.text
        r = stack.http("POST", "/api/aliases/gated", k, json={"model": trained, "reason": "again"})
        assert r.status_code == 409 and "not better than" in r.json()["error"]["message"]
    finally:
        stack.http("PUT", "/api/settings", admin["key"], json={"promotion_requires_better_eval": False})


def test_feedback_corrections_become_a_training_file(stack, kb):
    admin = stack.new_key("admin", project=kb["key"]["project"])
    k = kb["key"]["key"]
    assert stack.http("PUT", "/api/settings", admin["key"], json={"store_chat_text": True}).status_code == 200
    try:
        chat = client(stack, k).chat.completions.create(
            model="tutor", temperature=0, max_tokens=8, messages=[{"role": "user", "content": "What is glucose?"}])
        stored = stack.sql("SELECT data FROM events WHERE stream_id = %s", (f"chat-{chat.id}",))[0]["data"]
        assert stored["messages"][0]["content"] == "What is glucose?" and stored["answer"] is not None
        fb = stack.http("POST", "/api/chat/feedback", k, json={
            "chat_id": chat.id, "rating": 2,
            "corrected_answer": "Glucose is a sugar that plants make in photosynthesis."})
        assert fb.status_code == 201 and fb.json()["approved"] is True
        viewer = stack.new_key("viewer", project=kb["key"]["project"])
        pending = stack.http("POST", "/api/chat/feedback", viewer["key"], json={
            "chat_id": chat.id, "rating": 3, "corrected_answer": "A sugar."})
        assert pending.status_code == 201 and pending.json()["approved"] is False
        bad = stack.http("POST", "/api/chat/feedback", k, json={"chat_id": chat.id, "rating": 9})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
        missing = stack.http("POST", "/api/chat/feedback", k, json={"chat_id": "chatcmpl-nope", "rating": 3})
        assert missing.status_code == 404

        made = stack.http("POST", "/api/datasets/from-feedback", k)
        assert made.status_code == 200, made.text
        assert made.json()["examples"] == 1 and made.json()["purpose"] == "fine-tune"
        approve = stack.http("POST", f"/api/chat/feedback/{pending.json()['id']}/approve", k)
        assert approve.status_code == 200
        made2 = stack.http("POST", "/api/datasets/from-feedback", k).json()
        assert made2["examples"] == 2
        lines = stack.http("GET", f"/v1/files/{made2['id']}/content", k).text.splitlines()
        first = json.loads(lines[0])["messages"]
        assert first[-2] == {"role": "user", "content": "What is glucose?"}
        assert first[-1] == {"role": "assistant",
                             "content": "Glucose is a sugar that plants make in photosynthesis."}
    finally:
        stack.http("PUT", "/api/settings", admin["key"], json={"store_chat_text": False})


def test_deleting_a_document_removes_it_from_retrieval(stack, kb):
    k = kb["key"]["key"]
    r = stack.http("POST", "/api/documents", k, json={"title": "Volcanoes", "text": "Volcanoes erupt lava. " * 20})
    doc = wait_indexed(stack, k, r.json()["id"])
    ask = {"model": "tutor", "max_tokens": 4, "temperature": 0,
           "messages": [{"role": "user", "content": "Why do volcanoes erupt lava?"}]}
    first = stack.http("POST", "/v1/chat/completions", k, json=ask).json()
    assert first["sources"][0]["document_id"] == doc["id"]
    assert stack.http("DELETE", f"/api/documents/{doc['id']}", k).json()["deleted"] is True
    assert stack.http("GET", f"/api/documents/{doc['id']}", k).status_code == 404
    assert stack.sql("SELECT count(*) AS n FROM chunks WHERE document_id = %s", (doc["id"],))[0]["n"] == 0
    after = stack.http("POST", "/v1/chat/completions", k, json=ask).json()
    assert all(s["document_id"] != doc["id"] for s in after["sources"])


def test_dspy_uses_tunelog_as_its_language_model(stack, kb):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy

    lm = dspy.LM("openai/tutor", api_base=stack.base_url + "/v1", api_key=kb["key"]["key"], max_tokens=12,
                 temperature=0.0, cache=False, num_retries=0)
    out = lm("Name one thing plants need for photosynthesis.")
    assert isinstance(out, list) and out and isinstance(out[0], str) and out[0].strip()
    chats = stack.sql("SELECT data FROM events WHERE type = 'ChatAnswered' AND data->>'project' = %s "
                      "ORDER BY global_position DESC LIMIT 1", (kb["key"]["project"],))
    assert chats[0]["data"]["alias"] == "tutor" and chats[0]["data"]["completion_tokens"] <= 12
