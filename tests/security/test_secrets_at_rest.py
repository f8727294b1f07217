"""No secret at rest: after a workload that touches every kind of write (keys made with and without an
Idempotency-Key and retried, files, a job, a document, a chat, settings), no API key in plain text and
no database password is found in any table, any event, or any file the processes wrote (logs included)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import DATA

pytestmark = pytest.mark.slow


def _workload(stack) -> list[str]:
    secrets = [stack.admin_key]
    admin = stack.new_key("admin")
    secrets.append(admin["key"])
    project = admin["project"]
    # an Idempotency-Key retry: the first response carries the key, the stored one must not
    h = {"Idempotency-Key": "make-a-trainer-1"}
    first = stack.http("POST", "/api/keys", admin["key"], json={"role": "trainer", "project": project}, headers=h)
    assert first.status_code == 201 and first.json()["key"].startswith("tl-")
    secrets.append(first.json()["key"])
    again = stack.http("POST", "/api/keys", admin["key"], json={"role": "trainer", "project": project}, headers=h)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["key"] is None
    trainer = first.json()["key"]
    viewer = stack.new_key("viewer", project)["key"]
    secrets.append(viewer)
    f = stack.http("POST", "/v1/files", trainer, files={"file": ("t.jsonl", (DATA / "tiny_train.jsonl").read_bytes())},
                   data={"purpose": "fine-tune"}, headers={"Idempotency-Key": "f1"})
    assert f.status_code == 200
    job = stack.http("POST", "/v1/fine_tuning/jobs", trainer, json={
        "model": "smollm2-135m-instruct", "training_file": f.json()["id"]}).json()
    stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", trainer)
    doc = stack.http("POST", "/api/documents", trainer, json={"title": "Rules", "text": "Be kind. " * 20}).json()
    deadline = time.monotonic() + 120
    while stack.http("GET", f"/api/documents/{doc['id']}", trainer).json()["status"] == "processing":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    stack.http("PUT", "/api/settings", admin["key"], json={"store_chat_text": True})
    chat = stack.http("POST", "/v1/chat/completions", viewer, json={
        "model": "tutor", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200, chat.text
    stack.wait_job(trainer, job["id"], {"cancelled", "succeeded", "failed"}, timeout=120)
    stack.http("DELETE", f"/api/keys/{first.json()['id']}", admin["key"])
    return secrets


def test_no_api_key_or_password_in_any_table_event_or_log_after_a_full_workload(stack):
    secrets = _workload(stack)
    db_url = stack.env["DATABASE_URL"]
    if ":" in db_url.split("@")[0].split("//", 1)[1]:  # the embedded server's generated password
        from urllib.parse import unquote, urlsplit

        secrets.append(unquote(urlsplit(db_url).password or ""))
    secrets = [s for s in secrets if s]
    tables = [r["table_name"] for r in stack.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    assert {"events", "commands", "api_keys", "blobs"} <= set(tables)
    found = []
    for t in tables:
        for s in secrets:
            rows = stack.sql(f'SELECT count(*) AS n FROM "{t}" AS x WHERE strpos(x::text, %s) > 0', (s,))
            if rows[0]["n"]:
                found.append((t, s[:8] + "..."))
    assert not found, f"secrets stored in tables: {found}"
    files = [p for p in Path(stack.data_dir).rglob("*") if p.is_file()]
    assert any(p.name.endswith(".log") for p in files)
    for p in files:
        data = p.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"a secret ({s[:8]}...) is written in {p}"
