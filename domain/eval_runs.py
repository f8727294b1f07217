"""An evaluation run's state, folded from its stream (evalrun-<id>), and what a lost attempt leads to.

Statuses are OpenAI's: queued, in_progress, completed, failed, canceled.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"completed", "failed", "canceled"})


@dataclass
class EvalRunState:
    id: str = ""
    eval_id: str = ""
    project: str = ""
    status: str = "queued"
    attempt: int = 1
    version: int = 0
    cancel_requested: bool = False
    created: dict[str, Any] = field(default_factory=dict)
    graded: dict[int, dict[str, Any]] = field(default_factory=dict)  # index -> EvalItemGraded data

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def fold(events: Iterable[tuple[str, dict[str, Any], int]]) -> EvalRunState:
    s = EvalRunState()
    for type_, d, version in events:
        s.version = version
        if type_ == "EvalRunCreated":
            s.id, s.eval_id, s.project, s.created = d["id"], d["eval_id"], d["project"], d
        elif type_ == "EvalRunStarted":
            s.status, s.attempt = "in_progress", d["attempt"]
        elif type_ == "EvalItemGraded":
            s.graded.setdefault(d["index"], d)  # the first grading of an item counts
        elif type_ == "EvalRunAttemptLost":
            if d["requeued"]:
                s.status, s.attempt = "queued", d["attempt"] + 1
        elif type_ == "EvalRunCancelRequested":
            s.cancel_requested = True
        elif type_ == "EvalRunCompleted":
            s.status = "completed"
        elif type_ == "EvalRunFailed":
            s.status = "failed"
        elif type_ == "EvalRunCanceled":
            s.status = "canceled"
    return s


def counts(graded: Iterable[dict[str, Any]], criteria: list[dict[str, Any]]) -> tuple[dict[str, int], list[dict]]:
    """result_counts and per_testing_criteria_results of graded items (OpenAI's run object): an item passes when
    every criterion passed, errors when any criterion (or its sample) errored, fails otherwise."""
    total = passed = failed = errored = 0
    per = {c["name"]: {"testing_criteria": c["name"], "passed": 0, "failed": 0} for c in criteria}
    for g in graded:
        total += 1
        if g["status"] == "pass":
            passed += 1
        elif g["status"] == "error":
            errored += 1
        else:
            failed += 1
        for r in g["results"]:
            if r["name"] in per:
                per[r["name"]]["passed" if r.get("passed") else "failed"] += 1
    return ({"total": total, "passed": passed, "failed": failed, "errored": errored}, list(per.values()))


def item_status(results: list[dict[str, Any]], sample_error: bool) -> str:
    if sample_error or any(r.get("error") for r in results):
        return "error"
    return "pass" if results and all(r.get("passed") for r in results) else "fail"


def spec_sha256(data_source: dict[str, Any], items_sha256: str, models: dict[str, dict[str, Any]],
                judges: list[str]) -> str:
    """What makes two runs of an eval comparable, as one hash: the same items, prompt template, sampling and
    judges (by the model ids they resolved to). The eval gate compares only runs with the same spec, so a model
    can't win on an easier prompt, other items or a friendlier judge."""
    import hashlib
    import json

    spec = {"type": data_source.get("type"), "items": items_sha256,
            "input_messages": data_source.get("input_messages"), "sampling": data_source.get("sampling_params"),
            "judges": {name: (models.get(name) or {}).get("id") for name in sorted(judges)}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
