from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

import psycopg
from psycopg.types.json import Jsonb

from domain.jobs import VERSION_ONLY, JobState, evolve
from eventlog.store import RecordedEvent

_STATE_FIELDS = [f.name for f in fields(JobState)]
_JSON = {"hyperparameters", "method", "metadata", "error", "remote"}
_COLUMNS = _STATE_FIELDS + ["seq"]


class JobsProjection:
    """One row per job, the folded state of its stream (same `evolve` the workers use).

    Batched: the rows a batch touches are loaded once, evolved in memory and written once.
    """

    name = "jobs"
    types = None  # every event
    tables = ("jobs",)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None:
        touched = {e.stream_id[4:] for e in events if e.stream_id.startswith("job-")}
        if not touched:
            return
        states: dict[str, JobState] = {}
        seqs: dict[str, int] = {}
        for row in conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ANY(%s)", (list(touched),)):
            seqs[row["id"]] = row.pop("seq")
            states[row["id"]] = JobState(**row)
        versions: dict[str, int] = {}
        etas: dict[str, int] = {}
        for e in events:
            if not e.stream_id.startswith("job-"):
                continue
            job_id = e.stream_id[4:]
            known = versions.get(job_id) or (states[job_id].version if job_id in states else 0)
            if e.stream_version <= known:  # applied already: a handler must be idempotent
                continue
            if e.type in VERSION_ONLY:  # messages and checkpoints only move the version
                versions[job_id] = e.stream_version
                continue
            if e.type == "JobProgressed":  # most of the log: the version and the estimated finish only
                versions[job_id] = e.stream_version
                if e.data.get("estimated_finish") is not None:
                    etas[job_id] = e.data["estimated_finish"]
                continue
            if e.type == "JobCreated":
                seqs[job_id] = e.global_position
            states[job_id] = evolve(states.get(job_id, JobState()), e.type, e.data, e.stream_version)
            versions.pop(job_id, None)
            etas.pop(job_id, None)
        for job_id, v in versions.items():
            if job_id in states:
                states[job_id] = replace(states[job_id], version=v)
        for job_id, eta in etas.items():
            if job_id in states:
                states[job_id] = replace(states[job_id], estimated_finish=eta)
        rows = []
        for job_id, s in states.items():
            if job_id not in seqs:  # events for a job whose creation we never saw: ignore
                continue
            values = [getattr(s, k) for k in _STATE_FIELDS]  # no asdict: it deep-copies every nested dict
            rows.append(tuple(Jsonb(v) if k in _JSON and v is not None else v for k, v in zip(_STATE_FIELDS, values,
                                                                                              strict=True))
                        + (seqs[job_id],))
        cols = ", ".join(_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS if c != "id")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO jobs ({cols}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
                f"ON CONFLICT (id) DO UPDATE SET {updates}", rows)
