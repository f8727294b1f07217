"""An admin's audit: "what answered this question last Tuesday, and trained on what?"

    TUNELOG_URL=... TUNELOG_API_KEY=... python examples/audit.py "What is 2 times 3?" [SINCE ISO TIME]

Finds the answers to the question in the log (the project must store chat text), then for each: the model and
alias that answered, the sampling settings and documents used, what the alias pointed at then, and the files and
job that trained the model.
"""
from __future__ import annotations

import datetime
import sys

import httpx
from _env import URL, key

question = sys.argv[1] if len(sys.argv) > 1 else "What is 2 times 3?"
since = sys.argv[2] if len(sys.argv) > 2 else (datetime.datetime.now(datetime.UTC)
                                               - datetime.timedelta(days=8)).isoformat()
api = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {key()}"}, timeout=60)
found, after = [], 0
while True:  # the log, paged by position, ChatAnswered events only, from `since` on
    page = api.get("/api/events", params={"type": "ChatAnswered", "since": since, "after": after, "limit": 1000}).json()
    for e in page["data"]:
        if any(m.get("content") == question for m in e["data"].get("messages") or []):
            found.append(e)
    if len(page["data"]) < 1000:
        break
    after = page["next_after"]
if not found:
    raise SystemExit(f"no answer to {question!r} since {since} (does the project store chat text?)")
for e in found:
    record = api.get(f"/api/chats/{e['data']['id']}").json()
    model = record["model"]
    print(f"{record['at']}: answered by {model['id']} (alias {model['alias']}, {model['kind']}, "
          f"content {model['content_sha256']}) with {record['sampling']}")
    for c in record["chunks"]:
        print(f"  used {c['title']} (document {c['document_id']}, version {c['document_sha256']})")
    then = api.get("/api/registry", params={"as_of": record["position"]}).json()
    print("  the aliases then:", {a["alias"]: a["model"] for a in then["aliases"]})
    if model["kind"] != "base":
        lineage = api.get(f"/api/models/{model['id']}/lineage").json()
        for n in lineage["nodes"]:
            if n["kind"] in ("file", "job"):
                print(f"  trained from {n['kind']} {n.get('file') or n.get('job')}"
                      + (f" (sha256 {n['sha256']}, {n.get('source') or 'uploaded'})" if n["kind"] == "file" else ""))
