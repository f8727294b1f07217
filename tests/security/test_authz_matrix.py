"""Issue 6: the authorization matrix. Every route of the app x (anonymous, viewer, trainer, project admin,
operator) x (own project's object, another project's object), each cell asserted against the table below,
over HTTP against the real stack. The table must cover every rule of `app.url_map`, so a new route
without a row fails `test_the_table_covers_every_route_of_the_app`.

The rules (DESIGN §3): a key never sees another project's jobs, files, models, events or keys (404, not
403); a project admin administers its own project only (keys for another project: 403); only the
operator's key crosses projects (keys of any project, every project's audit log, replay, verify, dead
letters); viewers only read, chat and give feedback; trainers create files, jobs, documents and aliases,
not keys or settings; anonymous requests get 401 except on /, /healthz, /metrics, /openapi.json, /ui/*.

Columns: "own" probes objects of the caller's project (project A for the viewer, trainer and admin keys;
the operator's own project, `default`, for the operator); "other" probes project A's objects with keys of
project B (and with the operator's key, whose project is not A). Routes without an object id run the same
request from project B, and the answer must not show any of A's objects. A write that succeeds consumes
a fresh object, so no cell depends on the order of the others.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from eventlog.keys import hash_key, key_id_for
from tests.conftest import DATA
from tests.helpers import program_state, register_model

GOOD = (DATA / "tiny_train.jsonl").read_bytes()
BASE = "smollm2-135m-instruct"
ROLES = ("anon", "viewer", "trainer", "admin", "operator")
SIDES = ("own", "other")


@dataclass
class Objects:
    """One project's objects, made by `creator` (project A's trainer, or the operator in `default`)."""

    project: str
    creator: str
    file: str = ""
    job: str = ""
    doc: str = ""
    alias: str = ""  # read by the matrix
    walias: str = ""  # promoted by the matrix's writes
    chat: str = ""
    feedback: str = ""
    eval: str = ""
    run: str = ""
    item: str = ""
    key_ids: set[str] = field(default_factory=set)

    def secrets(self) -> set[str]:
        """What another project's key must never see."""
        return {self.file, self.job, self.doc, self.alias, self.chat, self.feedback, self.eval, self.run, self.item,
                *self.key_ids}


@dataclass
class World:
    stack: Any
    a: Objects
    d: Objects  # the operator's own project
    b_project: str
    b_file: str  # older than A's file (the cursor oracle of GET /v1/files?after=)
    keys: dict[tuple[str, str], dict[str, Any]]


@dataclass
class Probe:
    world: World
    role: str
    side: str
    fresh_docs: list[str] = field(default_factory=list)

    @property
    def stack(self):
        return self.world.stack

    @property
    def key(self) -> str | None:
        if self.role == "anon":
            return None
        if self.role == "operator":
            return self.stack.admin_key
        return self.world.keys[(self.role, self.side)]["key"]

    @property
    def target(self) -> Objects:
        """The objects probed: the operator's own are in its project; every other cell probes A's."""
        return self.world.d if (self.role, self.side) == ("operator", "own") else self.world.a

    def fresh(self, kind: str) -> str:
        """A new object of the target's project, for a cell whose success would consume it."""
        t, s = self.target, self.stack
        if kind == "file":
            r = s.http("POST", "/v1/files", t.creator, files={"file": ("f.jsonl", GOOD)}, data={"purpose": "fine-tune"})
        elif kind == "doc":
            r = s.http("POST", "/api/documents", t.creator, json={"title": "fresh", "text": "A fresh document."})
        elif kind == "key":
            r = s.http("POST", "/api/keys", s.admin_key, json={"role": "viewer", "project": t.project})
        elif kind == "model":  # a registered fine-tuned model, as a succeeded job leaves it (no weights needed)
            return register_model(s, t.project)
        elif kind == "webhook":  # made by the target project's admin (the operator's own: by the operator)
            creator = s.admin_key if t is self.world.d else self.world.keys[("admin", "own")]["key"]
            r = s.http("POST", "/api/webhooks", creator, json=WEBHOOK)
        elif kind == "program":  # a DSPy program, imported
            r = s.http("POST", "/api/programs", t.creator, json={"model": BASE, "program": program_state()})
        elif kind == "eval":
            r = s.http("POST", "/v1/evals", t.creator, json=EVAL)
        elif kind == "run":  # a jsonl run of the target's eval (graded in moments, or still queued: either works)
            r = s.http("POST", f"/v1/evals/{t.eval}/runs", t.creator, json=EVAL_RUN)
        else:
            raise ValueError(kind)
        assert r.status_code in (200, 201), r.text
        if kind == "doc":
            self.fresh_docs.append(r.json()["id"])
        return r.json()["id"]


Build = Callable[[Probe], "str | tuple[str, dict[str, Any]]"]
Check = Callable[[Probe, Any], None]


@dataclass(frozen=True)
class Route:
    method: str
    rule: str
    expect: str  # "anon | viewer own other | trainer own other | admin own other | operator own other"
    build: Build
    cross_ok: bool = False  # the operator may see project A's objects here
    check: Check | None = None
    cleanup: Callable[[Probe, Any], None] | None = None

    def expected(self) -> dict[tuple[str, str], int | None]:
        cols = [c.split() for c in self.expect.split("|")]
        assert len(cols) == 5 and len(cols[0]) == 1 and all(len(c) == 2 for c in cols[1:]), self.expect
        out: dict[tuple[str, str], int | None] = {("anon", "own"): int(cols[0][0])}
        for role, col in zip(ROLES[1:], cols[1:]):
            for side, v in zip(SIDES, col):
                out[(role, side)] = None if v == "-" else int(v)
        return out


def _body(path: str, **kw: Any):
    return path, kw


def _job_body(p: Probe) -> dict[str, Any]:
    return {"model": BASE, "training_file": p.target.file,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 12}}}}


def _cancel_created_job(p: Probe, r) -> None:
    """A job created by a cell is cancelled at once: the cpu workers are shared with other tests."""
    if r.status_code == 200:
        p.stack.http("POST", f"/v1/fine_tuning/jobs/{r.json()['id']}/cancel", p.key)


def _delete_created_document(p: Probe, r) -> None:
    """Each document costs the shared cpu workers an indexing; a deleted one's is skipped."""
    if r.status_code == 201:
        p.stack.http("DELETE", f"/api/documents/{r.json()['id']}", p.key)


def _empty_for_other(p: Probe, r) -> None:
    """Another project's cursor positions nothing: B's older objects are not listed 'after' A's id."""
    if p.side == "other":
        assert r.json()["data"] == [], "a cursor naming another project's object must select nothing"


def _operator_sees_a(what: str) -> Check:
    def check(p: Probe, r) -> None:
        if (p.role, p.side) == ("operator", "other"):
            assert what_of(p, what) in r.text, f"the operator crosses projects: it sees project A's {what}"
    return check


def what_of(p: Probe, what: str) -> str:
    a = p.world.a
    return {"key": next(iter(sorted(a.key_ids))), "job": a.job}[what]


def _no_job_for_other(p: Probe, r) -> None:
    if p.side == "other" and p.role != "operator":
        assert r.json()["data"] == [], "another project's audit log stream must show nothing"


WEBHOOK = {"url": "http://127.0.0.1:9/hook", "event_types": ["model.exported"]}  # never delivered: no exports here
CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1, "retrieval": False,
        "temperature": 0}
OVER_WINDOW = {"messages": [{"role": "user", "content": "hi " * 7000}], "max_tokens": 2048, "retrieval": False}


def _chat_body(p: Probe) -> dict[str, Any]:
    if p.role == "viewer" or p.side == "other":
        return {**CHAT, "model": p.target.alias}
    return {**OVER_WINDOW, "model": p.target.alias}


ALL_200 = "200 | 200 200 | 200 200 | 200 200 | 200 200"
EVAL = {"data_source_config": {"type": "custom", "item_schema": {"type": "object", "properties": {
    "answer": {"type": "string"}}}}, "testing_criteria": [{"type": "string_check", "name": "exact",
                                                           "input": "{{sample.output_text}}",
                                                           "reference": "{{item.answer}}", "operation": "eq"}]}
EVAL_RUN = {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": [
    {"item": {"answer": "4"}, "sample": {"output_text": "4"}}]}}}
READ = "401 | 200 404 | 200 404 | 200 404 | 200 404"  # an object of the caller's project, or of another
LIST = "401 | 200 200 | 200 200 | 200 200 | 200 200"  # the caller's own project's list, whoever calls
OPERATOR_ONLY = "401 | 403 403 | 403 403 | 403 403 | 200 200"

TABLE: list[Route] = [
    # ---- public
    Route("GET", "/", ALL_200, lambda p: "/"),
    Route("GET", "/ui/<path:name>", ALL_200, lambda p: "/ui/app.js"),
    Route("GET", "/healthz", ALL_200, lambda p: "/healthz"),
    Route("GET", "/metrics", ALL_200, lambda p: "/metrics"),
    Route("GET", "/openapi.json", ALL_200, lambda p: "/openapi.json"),
    # ---- files
    Route("POST", "/v1/files", "401 | 403 403 | 200 200 | 200 200 | 200 200",
          lambda p: _body("/v1/files", files={"file": ("m.jsonl", GOOD)}, data={"purpose": "fine-tune"})),
    Route("GET", "/v1/files", LIST,
          lambda p: f"/v1/files?after={p.target.file}" if p.side == "other" else "/v1/files",
          check=_empty_for_other),
    Route("GET", "/v1/files/<file_id>", READ, lambda p: f"/v1/files/{p.target.file}"),
    Route("GET", "/v1/files/<file_id>/content", READ, lambda p: f"/v1/files/{p.target.file}/content"),
    Route("DELETE", "/v1/files/<file_id>", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/v1/files/{p.fresh('file')}"),
    # ---- fine-tuning (naming another project's file in a job is a 400, as OpenAI answers an unknown file)
    Route("POST", "/v1/fine_tuning/jobs", "401 | 403 403 | 200 400 | 200 400 | 200 400",
          lambda p: _body("/v1/fine_tuning/jobs", json=_job_body(p)), cleanup=_cancel_created_job),
    Route("GET", "/v1/fine_tuning/jobs", LIST,
          lambda p: f"/v1/fine_tuning/jobs?after={p.target.job}" if p.side == "other" else "/v1/fine_tuning/jobs",
          check=_empty_for_other),
    Route("GET", "/v1/fine_tuning/jobs/<job_id>", READ, lambda p: f"/v1/fine_tuning/jobs/{p.target.job}"),
    Route("POST", "/v1/fine_tuning/jobs/<job_id>/cancel", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/v1/fine_tuning/jobs/{p.target.job}/cancel"),
    Route("POST", "/v1/fine_tuning/jobs/<job_id>/rerun", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: _body(f"/v1/fine_tuning/jobs/{p.target.job}/rerun", json={"model": "smollm2-135m-instruct"}),
          cleanup=_cancel_created_job),
    # the fixture's job is cancelled: pausing or resuming it is a conflict, answered after the project check
    Route("POST", "/v1/fine_tuning/jobs/<job_id>/pause", "401 | 403 403 | 409 404 | 409 404 | 409 404",
          lambda p: f"/v1/fine_tuning/jobs/{p.target.job}/pause"),
    Route("POST", "/v1/fine_tuning/jobs/<job_id>/resume", "401 | 403 403 | 409 404 | 409 404 | 409 404",
          lambda p: f"/v1/fine_tuning/jobs/{p.target.job}/resume"),
    Route("GET", "/v1/fine_tuning/jobs/<job_id>/events", READ,
          lambda p: f"/v1/fine_tuning/jobs/{p.target.job}/events"),
    Route("GET", "/v1/fine_tuning/jobs/<job_id>/checkpoints", READ,
          lambda p: f"/v1/fine_tuning/jobs/{p.target.job}/checkpoints"),
    # read to its end (a cancelled job's stream ends by itself): an open stream holds one of the few slots
    # for long requests, which the chat cells need too
    Route("GET", "/api/jobs/<job_id>/stream", READ, lambda p: f"/api/jobs/{p.target.job}/stream"),
    # ---- models and chat
    Route("GET", "/v1/models", LIST, lambda p: "/v1/models"),
    Route("GET", "/v1/models/<path:model_id>", READ, lambda p: f"/v1/models/{p.target.alias}"),
    Route("DELETE", "/v1/models/<path:model_id>", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/v1/models/{p.fresh('model')}"),
    Route("POST", "/api/models/<path:model_id>/export", "401 | 403 403 | 202 404 | 202 404 | 202 404",
          lambda p: _body(f"/api/models/{p.fresh('model')}/export", json={"format": "safetensors"})),
    Route("GET", "/api/models/<path:model_id>/exports", READ, lambda p: f"/api/models/{p.fresh('model')}/exports"),
    Route("GET", "/api/models/<path:model_id>/exports/<export_id>/files/<path:name>",
          "401 | 404 404 | 404 404 | 404 404 | 404 404",
          lambda p: f"/api/models/{p.fresh('model')}/exports/export-{'0' * 24}/files/merged/config.json"),
    Route("GET", "/api/models/<path:model_id>/history", READ, lambda p: f"/api/models/{p.fresh('model')}/history"),
    Route("GET", "/api/models/<path:model_id>/lineage", READ, lambda p: f"/api/models/{p.fresh('model')}/lineage"),
    Route("GET", "/api/registry", LIST, lambda p: f"/api/registry?as_of={2**40}"),
    Route("GET", "/api/chats/<chat_id>", READ, lambda p: f"/api/chats/{p.target.chat}"),
    Route("GET", "/api/models/<path:model_id>/program", READ,
          lambda p: f"/api/models/{p.fresh('program')}/program"),
    Route("POST", "/api/programs", "401 | 403 403 | 201 201 | 201 201 | 201 201",
          lambda p: _body("/api/programs", json={"model": BASE, "program": program_state(), "suffix": "matrix"})),
    # Generation is slow on the shared CPUs (seconds per token), so only the viewer's own cell generates (one
    # token); the other own cells ask for more than the context window: 400 context_length_exceeded is
    # answered after authentication, the role check and the model's resolution in the caller's project
    # (another project's alias is a 404 before that), and before any generation. The fixture's chats (a
    # trainer's and the operator's) generate too.
    Route("POST", "/v1/chat/completions", "401 | 200 404 | 400 404 | 400 404 | 400 404",
          lambda p: _body("/v1/chat/completions", json=_chat_body(p))),
    Route("GET", "/api/chat/answers", "401 | 403 403 | 403 403 | 200 200 | 200 200", lambda p: "/api/chat/answers"),
    Route("POST", "/api/chat/feedback", "401 | 201 404 | 201 404 | 201 404 | 201 404",
          lambda p: _body("/api/chat/feedback", json={"chat_id": p.target.chat, "rating": 4})),
    Route("POST", "/api/chat/feedback/<feedback_id>/approve", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/api/chat/feedback/{p.target.feedback}/approve"),
    Route("POST", "/api/datasets/from-feedback", "401 | 403 403 | 200 400 | 200 400 | 200 200",
          lambda p: "/api/datasets/from-feedback"),
    # ---- keys, the audit log, the operator's tools
    Route("POST", "/api/keys", "401 | 403 403 | 403 403 | 201 403 | 201 201",
          lambda p: _body("/api/keys", json={"role": "viewer", "project": p.target.project, "name": "matrix"})),
    Route("GET", "/api/keys", "401 | 403 403 | 403 403 | 200 200 | 200 200",
          lambda p: f"/api/keys?project={p.target.project}" if p.side == "other" else "/api/keys",
          cross_ok=True, check=_operator_sees_a("key")),
    Route("DELETE", "/api/keys/<key_id>", "401 | 403 403 | 403 403 | 200 404 | 200 200",
          lambda p: f"/api/keys/{p.fresh('key')}", cross_ok=True),
    Route("GET", "/api/events", "401 | 200 200 | 200 200 | 200 200 | 200 200",
          lambda p: f"/api/events?stream=job-{p.target.job}&limit=1000", cross_ok=True,
          check=lambda p, r: (_no_job_for_other(p, r), _operator_sees_a("job")(p, r))),
    Route("POST", "/api/admin/replay", "401 | 403 403 | 403 403 | 403 403 | 200 -", lambda p: "/api/admin/replay"),
    Route("POST", "/api/admin/verify", "401 | 403 403 | 403 403 | 403 403 | 200 -", lambda p: "/api/admin/verify"),
    Route("GET", "/api/admin/dead-letters", OPERATOR_ONLY, lambda p: "/api/admin/dead-letters"),
    Route("POST", "/api/webhooks", "401 | 403 403 | 403 403 | 201 201 | 201 201",
          lambda p: _body("/api/webhooks", json=WEBHOOK)),
    Route("GET", "/api/webhooks", "401 | 403 403 | 403 403 | 200 200 | 200 200", lambda p: "/api/webhooks"),
    Route("GET", "/api/webhooks/<webhook_id>", "401 | 403 403 | 403 403 | 200 404 | 200 404",
          lambda p: f"/api/webhooks/{p.fresh('webhook')}"),
    Route("DELETE", "/api/webhooks/<webhook_id>", "401 | 403 403 | 403 403 | 200 404 | 200 404",
          lambda p: f"/api/webhooks/{p.fresh('webhook')}"),
    # ---- knowledge base
    Route("POST", "/api/documents", "401 | 403 403 | 201 201 | 201 201 | 201 201",
          lambda p: _body("/api/documents", json={"title": "matrix", "text": "Leaves are green."}),
          cleanup=_delete_created_document),
    Route("GET", "/api/documents", LIST, lambda p: "/api/documents"),
    Route("GET", "/api/documents/<doc_id>", READ, lambda p: f"/api/documents/{p.target.doc}"),
    Route("GET", "/api/documents/<doc_id>/chunks", READ, lambda p: f"/api/documents/{p.target.doc}/chunks"),
    Route("DELETE", "/api/documents/<doc_id>", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/api/documents/{p.fresh('doc')}"),
    # ---- registry (an alias name is per project: B promoting "A's" name makes B's own alias)
    Route("GET", "/api/aliases", LIST, lambda p: "/api/aliases"),
    Route("GET", "/api/aliases/<alias>", READ, lambda p: f"/api/aliases/{p.target.alias}"),
    Route("GET", "/api/aliases/<alias>/history", READ, lambda p: f"/api/aliases/{p.target.alias}/history"),
    Route("POST", "/api/aliases/<alias>", "401 | 403 403 | 200 200 | 200 200 | 200 200",
          lambda p: _body(f"/api/aliases/{p.target.walias}", json={"model": BASE, "reason": "authz matrix"})),
    Route("GET", "/api/settings", LIST, lambda p: "/api/settings"),
    Route("PUT", "/api/settings", "401 | 403 403 | 403 403 | 200 200 | 200 200",
          lambda p: _body("/api/settings", json={"promotion_requires_better_eval": False})),
    Route("PATCH", "/api/settings", "401 | 403 403 | 403 403 | 200 200 | 200 200",
          lambda p: _body("/api/settings", json={"promotion_requires_better_eval": False})),
    # ---- the teacher's review queue and a job's estimate (api/teacher.py)
    Route("GET", "/api/chat/feedback", "401 | 403 403 | 200 200 | 200 200 | 200 200",
          lambda p: "/api/chat/feedback?status=all"),
    Route("POST", "/api/chat/feedback/<feedback_id>/reject", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: _body(f"/api/chat/feedback/{p.target.feedback}/reject", json={"reason": "matrix"}),
          # approved again, so the from-feedback cells still find an approved correction
          cleanup=lambda p, r: p.stack.http("POST", f"/api/chat/feedback/{p.target.feedback}/approve",
                                            p.target.creator)),
    Route("POST", "/api/fine_tuning/estimate", "401 | 403 403 | 200 400 | 200 400 | 200 400",
          lambda p: _body("/api/fine_tuning/estimate", json={"model": BASE, "training_file": p.target.file})),
    # ---- evaluations (OpenAI's Evals shapes)
    Route("POST", "/v1/evals", "401 | 403 403 | 200 200 | 200 200 | 200 200", lambda p: _body("/v1/evals", json=EVAL)),
    Route("GET", "/v1/evals", LIST, lambda p: "/v1/evals"),
    Route("GET", "/v1/evals/<eval_id>", READ, lambda p: f"/v1/evals/{p.target.eval}"),
    Route("POST", "/v1/evals/<eval_id>", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: _body(f"/v1/evals/{p.target.eval}", json={"metadata": {"by": "matrix"}})),
    Route("DELETE", "/v1/evals/<eval_id>", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/v1/evals/{p.fresh('eval')}"),
    Route("POST", "/v1/evals/<eval_id>/runs", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: _body(f"/v1/evals/{p.target.eval}/runs", json=EVAL_RUN)),
    Route("GET", "/v1/evals/<eval_id>/runs", READ, lambda p: f"/v1/evals/{p.target.eval}/runs"),
    Route("GET", "/v1/evals/<eval_id>/runs/<run_id>", READ,
          lambda p: f"/v1/evals/{p.target.eval}/runs/{p.target.run}"),
    Route("POST", "/v1/evals/<eval_id>/runs/<run_id>", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/v1/evals/{p.target.eval}/runs/{p.fresh('run')}"),
    Route("POST", "/v1/evals/<eval_id>/runs/<run_id>/cancel", "401 | 403 403 | 200 404 | 200 404 | 200 404",
          lambda p: f"/v1/evals/{p.target.eval}/runs/{p.fresh('run')}/cancel"),
    Route("DELETE", "/v1/evals/<eval_id>/runs/<run_id>", "401 | 403 403 | 409 404 | 409 404 | 409 404",
          lambda p: f"/v1/evals/{p.target.eval}/runs/{p.target.run}"),
    Route("GET", "/v1/evals/<eval_id>/runs/<run_id>/output_items", READ,
          lambda p: f"/v1/evals/{p.target.eval}/runs/{p.target.run}/output_items"),
    Route("GET", "/v1/evals/<eval_id>/runs/<run_id>/output_items/<item_id>", READ,
          lambda p: f"/v1/evals/{p.target.eval}/runs/{p.target.run}/output_items/{p.target.item}"),
]

CELLS = [(route, role, side) for route in TABLE for (role, side), status in route.expected().items()
         if status is not None]


def _ok(r, what: str) -> dict[str, Any]:
    assert r.status_code in (200, 201), f"{what}: {r.status_code} {r.text}"
    return r.json()


def _fill(stack, o: Objects, tag: str) -> None:
    """One of each object in o.project, made by o.creator."""
    k = o.creator
    o.file = _ok(stack.http("POST", "/v1/files", k, files={"file": ("a.jsonl", GOOD)},
                            data={"purpose": "fine-tune"}), "file")["id"]
    job = _ok(stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": BASE, "training_file": o.file}), "job")
    o.job = job["id"]
    _ok(stack.http("POST", f"/v1/fine_tuning/jobs/{o.job}/cancel", k), "cancel")
    o.doc = _ok(stack.http("POST", "/api/documents", k, json={"title": f"doc {tag}", "text": "Plants need light."}),
                "document")["id"]
    o.alias, o.walias = f"r-{tag}", f"w-{tag}"
    for name in (o.alias, o.walias):
        _ok(stack.http("POST", f"/api/aliases/{name}", k, json={"model": BASE, "reason": "matrix setup"}), "alias")
    chat = _ok(stack.http("POST", "/v1/chat/completions", k, json={**CHAT, "model": o.alias}), "chat")
    o.chat = chat["id"]
    body = {"chat_id": o.chat, "rating": 2, "corrected_answer": "Hello!",
            "messages": [{"role": "user", "content": "Say hi"}]}
    deadline = time.monotonic() + 30
    while True:  # the answer's row is projected moments after the response
        r = stack.http("POST", "/api/chat/feedback", k, json=body)
        if r.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    o.feedback = _ok(r, "feedback")["id"]
    # approved for training (a trainer's correction is approved as given; the operator approves its own)
    _ok(stack.http("POST", f"/api/chat/feedback/{o.feedback}/approve", k), "approve")
    o.eval = _ok(stack.http("POST", "/v1/evals", k, json=EVAL), "eval")["id"]
    o.run = _ok(stack.http("POST", f"/v1/evals/{o.eval}/runs", k, json=EVAL_RUN), "eval run")["id"]
    deadline = time.monotonic() + 60
    while True:  # graded by a cpu worker
        items = stack.http("GET", f"/v1/evals/{o.eval}/runs/{o.run}/output_items", k).json()["data"]
        if items or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    o.item = items[0]["id"]


@pytest.fixture(scope="module")
def world(stack) -> World:
    tag = os.urandom(4).hex()
    a_project, b_project = f"authz-a-{tag}", f"authz-b-{tag}"
    keys = {}
    for role in ("viewer", "trainer", "admin"):
        keys[(role, "own")] = stack.new_key(role, a_project)
        keys[(role, "other")] = stack.new_key(role, b_project)
    b_file = _ok(stack.http("POST", "/v1/files", keys[("trainer", "other")]["key"],
                            files={"file": ("b.jsonl", GOOD)}, data={"purpose": "fine-tune"}), "B's file")["id"]
    d = Objects(project="default", creator=stack.admin_key)
    _fill(stack, d, f"d{tag}")
    time.sleep(1.1)  # files are ordered by created_at (whole seconds): B's and D's are strictly older than A's
    a = Objects(project=a_project, creator=keys[("trainer", "own")]["key"],
                key_ids={keys[(r, "own")]["id"] for r in ("viewer", "trainer", "admin")})
    _fill(stack, a, f"a{tag}")
    return World(stack=stack, a=a, d=d, b_project=b_project, b_file=b_file, keys=keys)


def test_the_table_covers_every_route_of_the_app(stack):
    """Every (method, rule) of the app has exactly one row: a new route must be added to the matrix."""
    from pathlib import Path

    from api import create_app
    from eventlog.settings import Settings

    env = stack.env
    app = create_app({"settings": Settings(data_dir=Path(env["TUNELOG_DATA_DIR"]), database_url=env["DATABASE_URL"],
                                           redis_url=env["REDIS_URL"], model_dir=Path(env["TUNELOG_MODEL_DIR"]))})
    served = {(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}}
    rows = [(r.method, r.rule) for r in TABLE]
    assert len(rows) == len(set(rows)), "a route has two rows"
    assert served - set(rows) == set(), "routes without a row in the authorization matrix"
    assert set(rows) - served == set(), "rows for routes the app does not serve"


@pytest.mark.parametrize("route, role, side", CELLS,
                         ids=[f"{r.method} {r.rule} {role}-{side}" for r, role, side in CELLS])
def test_cell(world, route: Route, role: str, side: str):
    p = Probe(world, role, side)
    expected = route.expected()[(role, side)]
    built = route.build(p)
    path, kw = (built, {}) if isinstance(built, str) else built
    started = time.monotonic()
    r = world.stack.http(route.method, path, p.key, **kw)
    if r.status_code == 429 and expected != 429:  # a capacity limit, not an authorization answer: once more
        time.sleep(min(5, int(r.headers.get("Retry-After", "1"))))
        r = world.stack.http(route.method, path, p.key, **kw)
    try:
        body_text = r.text
        assert r.status_code == expected, (
            f"{route.method} {path} as {role} ({side} project's object): expected {expected}, got {r.status_code}: "
            f"{body_text[:300]}")
        if r.status_code >= 400:
            err = r.json()["error"]
            assert err["message"], "an error names its reason"
            if r.status_code == 400 and route.rule == "/v1/chat/completions":
                assert err["code"] == "context_length_exceeded", err
        if 200 <= r.status_code < 300 and side == "other" and not (role == "operator" and route.cross_ok):
            leaked = {s for s in world.a.secrets() if s and s in body_text}
            assert not leaked, f"project A's objects visible to another project's key: {leaked}"
        if route.check and 200 <= r.status_code < 300:
            route.check(p, r)
        assert time.monotonic() - started < 30
    finally:
        r.close()
        if route.cleanup:
            route.cleanup(p, r)
        for doc in p.fresh_docs:  # not consumed by the cell (refused): deleted by its project
            world.stack.http("DELETE", f"/api/documents/{doc}", p.target.creator)


def test_other_projects_never_changed_project_a_alias(world):
    """B's promotions of an alias named like one of A's made B's own alias; A's history has A's keys only."""
    stack, a = world.stack, world.a
    history = stack.http("GET", f"/api/aliases/{a.walias}/history", a.creator).json()["data"]
    a_keys = {k["id"] for (role, side), k in world.keys.items() if side == "own"}
    assert {h["actor"] for h in history} <= a_keys


def test_no_key_mints_an_operator_key_and_admins_cannot_revoke_it(stack):
    """The operator's key is registered by scripts/serve only; a project admin of its project cannot touch it."""
    admin = stack.new_key("admin", "default")["key"]
    for key in (admin, stack.admin_key):
        r = stack.http("POST", "/api/keys", key, json={"role": "operator", "project": "default"})
        assert r.status_code == 400, r.text
    operator_id = key_id_for(hash_key(stack.admin_key))
    r = stack.http("DELETE", f"/api/keys/{operator_id}", admin)
    assert r.status_code == 404, r.text
    assert stack.http("GET", "/api/admin/dead-letters", stack.admin_key).status_code == 200  # still working


def test_an_idempotency_key_reused_by_another_project_replays_nothing(world):
    """Idempotency-Keys are scoped to the key that sent them: B's request with A's Idempotency-Key is B's own."""
    stack = world.stack
    idem = {"Idempotency-Key": "authz-" + os.urandom(6).hex()}
    a = stack.http("POST", "/v1/files", world.a.creator, files={"file": ("i.jsonl", GOOD)},
                   data={"purpose": "fine-tune"}, headers=dict(idem))
    b = stack.http("POST", "/v1/files", world.keys[("trainer", "other")]["key"], files={"file": ("i.jsonl", GOOD)},
                   data={"purpose": "fine-tune"}, headers=dict(idem))
    assert a.status_code == b.status_code == 200
    assert a.json()["id"] != b.json()["id"] and "Idempotent-Replayed" not in b.headers
