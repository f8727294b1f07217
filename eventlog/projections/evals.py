from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from eventlog.store import RecordedEvent


def run_id_of(stream_id: str) -> str:
    return stream_id.removeprefix("evalrun-")


class EvalsProjection:
    """Evals, their runs (status and counts) and each run's graded items: what GET /v1/evals... reads. The worker
    decides from the run's stream, never from these tables."""

    name = "evals"
    types = frozenset({"EvalCreated", "EvalUpdated", "EvalDeleted", "EvalRunCreated", "EvalRunStarted",
                       "EvalItemGraded", "EvalRunAttemptLost", "EvalRunCancelRequested", "EvalRunCompleted",
                       "EvalRunFailed", "EvalRunCanceled"})
    tables = ("evals", "eval_runs", "eval_output_items")

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            d = e.data
            if e.type == "EvalCreated":
                conn.execute(
                    "INSERT INTO evals (id, project, name, data_source_config, testing_criteria, metadata, created_at, "
                    "seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["project"], d["name"], Jsonb(d["data_source_config"]), Jsonb(d["testing_criteria"]),
                     Jsonb(d["metadata"]) if d.get("metadata") is not None else None, d["created_at"],
                     e.global_position))
            elif e.type == "EvalUpdated":
                conn.execute("UPDATE evals SET name = %s, metadata = %s WHERE id = %s",
                             (d["name"], Jsonb(d["metadata"]) if d.get("metadata") is not None else None, d["id"]))
            elif e.type == "EvalDeleted":
                conn.execute("UPDATE evals SET deleted_at = coalesce(deleted_at, %s) WHERE id = %s", (d["at"], d["id"]))
            elif e.type == "EvalRunCreated":
                conn.execute(
                    "INSERT INTO eval_runs (id, eval_id, project, name, model, requested_model, spec_sha256, "
                    "data_source, metadata, status, total, created_at, seq) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'queued', 0, %s, %s) ON CONFLICT (id) DO NOTHING",
                    (d["id"], d["eval_id"], d["project"], d["name"], d.get("model"), d.get("requested_model"),
                     d.get("spec_sha256"),
                     Jsonb(d["data_source"]), Jsonb(d["metadata"]) if d.get("metadata") is not None else None,
                     d["created_at"], e.global_position))
            elif e.type == "EvalRunStarted":
                conn.execute("UPDATE eval_runs SET status = 'in_progress', attempt = %s, "
                             "started_at = coalesce(started_at, %s) WHERE id = %s",
                             (d["attempt"], d["at"], run_id_of(e.stream_id)))
            elif e.type == "EvalItemGraded":
                run = run_id_of(e.stream_id)
                row = conn.execute(
                    "INSERT INTO eval_output_items (id, run_id, eval_id, project, datasource_item_id, datasource_item, "
                    "results, sample, status, created_at, seq) SELECT %s, r.id, r.eval_id, r.project, %s, %s, %s, %s, "
                    "%s, %s, %s FROM eval_runs r WHERE r.id = %s "
                    "ON CONFLICT (run_id, datasource_item_id) DO NOTHING RETURNING id",
                    (f"outputitem_{run.removeprefix('evalrun_')}_{d['index']}", d["index"], Jsonb(d["item"]),
                     Jsonb(d["results"]), Jsonb(d["sample"]), d["status"], d["at"], e.global_position, run)
                ).fetchone()
                if row is not None:  # the first grading of an item counts (a repeat changes nothing)
                    col = {"pass": "passed", "fail": "failed", "error": "errored"}[d["status"]]
                    per = conn.execute("SELECT per_criteria FROM eval_runs WHERE id = %s", (run,)).fetchone()
                    per = dict(per["per_criteria"] if per else {})
                    for r in d["results"]:
                        counts = dict(per.get(r["name"]) or {"passed": 0, "failed": 0})
                        counts["passed" if r.get("passed") else "failed"] += 1
                        per[r["name"]] = counts
                    conn.execute(f"UPDATE eval_runs SET total = total + 1, {col} = {col} + 1, per_criteria = %s "
                                 "WHERE id = %s", (Jsonb(per), run))
            elif e.type == "EvalRunAttemptLost":
                if d["requeued"]:
                    conn.execute("UPDATE eval_runs SET status = 'queued', attempt = %s WHERE id = %s",
                                 (d["attempt"] + 1, run_id_of(e.stream_id)))
            elif e.type == "EvalRunCancelRequested":
                conn.execute("UPDATE eval_runs SET cancel_requested = true WHERE id = %s", (run_id_of(e.stream_id),))
            elif e.type == "EvalRunCompleted":
                conn.execute("UPDATE eval_runs SET status = 'completed', finished_at = %s, usage = %s WHERE id = %s",
                             (d["at"], Jsonb(d.get("per_model_usage") or []), run_id_of(e.stream_id)))
            elif e.type == "EvalRunFailed":
                conn.execute("UPDATE eval_runs SET status = 'failed', finished_at = %s, error = %s WHERE id = %s",
                             (d["at"], Jsonb(d["error"]), run_id_of(e.stream_id)))
            elif e.type == "EvalRunCanceled":
                conn.execute("UPDATE eval_runs SET status = 'canceled', finished_at = %s WHERE id = %s",
                             (d["at"], run_id_of(e.stream_id)))
