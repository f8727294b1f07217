"""Issue 10: after the whole e2e workload (this module runs last among those sharing the service: jobs of every
kind, chats, feedback, documents, promotions, deletions, DSPy programs, webhooks, kills and restarts), a fresh
replay of the log rebuilds read models equal to the live ones, and the operator's route shows its progress."""
from __future__ import annotations

import json


def test_verify_after_the_whole_workload_finds_no_difference_and_shows_its_progress(stack):
    r = stack.http("POST", "/api/admin/verify?progress=true", stack.admin_key, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.iter_lines() if line]
    progress, result = lines[:-1], lines[-1]
    assert result["object"] == "verify", result
    assert result["differences"] == {}, result["differences"]
    assert result["events"] > 0  # (in the suite: every e2e test's events before it)
    assert progress and all(p["object"] == "progress" for p in progress)
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert progress[-1]["done"] == result["events"] and progress[-1]["total"] >= result["events"]
