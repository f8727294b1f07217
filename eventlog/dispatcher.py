"""The dispatcher: the log is the outbox. It enqueues an RQ job for every job that needs work and
re-dispatches what Redis or a dead worker lost.

- Tails the log (LISTEN/NOTIFY, polling fallback): a JobCreated or a re-queued attempt is enqueued
  at once, with the RQ job id derived from (job id, attempt), so a double enqueue is harmless.
- Every `reconcile_seconds` it compares the jobs read model with Redis: a queued job whose RQ job
  is gone (FLUSHALL, restart) or failed is enqueued again; a running job whose lease expired is
  declared lost (JobAttemptLost, re-queued up to the retry limit, else JobFailed).
A Postgres advisory lock keeps one active dispatcher per database.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time

import psycopg
import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from domain.errors import ConcurrencyConflict
from domain.events import document_stream, job_stream, model_stream
from domain.jobs import decide_lost_attempt, fold
from eventlog.bootstrap import Services, bootstrap
from eventlog.db import connect
from eventlog.store import CHANNEL, NewEvent

log = logging.getLogger("tunelog.dispatcher")
TRAINING_TIMEOUT = 24 * 3600  # explicit: RQ's default of 180 s would kill any real training run
INDEXING_TIMEOUT = 3600
EVAL_TIMEOUT = 12 * 3600  # an eval run of 2,000 items with a judge: hours on a CPU, never RQ's 180 s
EXPORT_TIMEOUT = 3600  # merging and writing a GGUF: minutes for small models, RQ's 180 s is not enough
ADVISORY_KEY = 0x7475_6E65  # "tune"
PENDING = frozenset({"queued", "started", "deferred", "scheduled"})  # RQ statuses of a job that will still run
RQ_HEARTBEAT_STALE = 120.0  # seconds without RQ's own job heartbeat (every 30 s while a horse runs)


def _dead_local(worker: str) -> bool:
    """True if `worker` (host:pid:nonce) ran on this host and its process is gone."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def rq_job_id(job_id: str, attempt: int) -> str:
    return f"{job_id}-a{attempt}"  # RQ ids allow letters, digits, - and _


def removal_rq_id(model_id: str) -> str:
    return "rmmodel-" + hashlib.sha256(model_id.encode()).hexdigest()[:32]  # model ids hold ':' and '/'


class Dispatcher:
    def __init__(self, svc: Services, reconcile_seconds: float = 2.0):
        self.svc = svc
        self.reconcile_seconds = reconcile_seconds
        self.position = 0
        self.connected_since = float("-inf")  # run() sets it on every (re)connect: leases get a grace period
        self._redis: redis.Redis | None = None
        self._removed: set[str] = set()  # deleted models whose files are known to be removed
        self._removal_tries: dict[str, int] = {}
        self._auto_tried: set[str] = set()  # models reconcile_auto_evaluate tried
        self.follow_check_seconds = 15.0  # delegated jobs' poll chains are checked this often (Redis reads)
        self._last_follow_check = float("-inf")

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = self.svc.redis()
        return self._redis

    def enqueue(self, job_id: str, attempt: int, queue: str) -> bool:
        """Enqueue unless an RQ job for this attempt is already waiting or running. True if enqueued."""
        return self._enqueue(rq_job_id(job_id, attempt), "workers.jobs.run_training", (job_id, attempt), queue,
                             TRAINING_TIMEOUT, f"train {job_id} attempt {attempt}")

    def enqueue_eval(self, run_id: str, attempt: int) -> bool:
        return self._enqueue(rq_job_id(run_id, attempt), "workers.evals.run_eval", (run_id, attempt), "cpu",
                             EVAL_TIMEOUT, f"eval run {run_id} attempt {attempt}")

    def enqueue_indexing(self, document_id: str) -> bool:
        return self._enqueue(f"{document_id}-index", "workers.embed.index_document", (document_id,), "cpu",
                             INDEXING_TIMEOUT, f"index {document_id}")

    def enqueue_export(self, model_id: str, export_id: str) -> bool:
        return self._enqueue(export_id, "workers.export.export_model", (model_id, export_id), "cpu",
                             EXPORT_TIMEOUT, f"export {model_id} as {export_id}")

    def enqueue_removal(self, model_id: str) -> bool:
        return self._enqueue(removal_rq_id(model_id), "workers.export.remove_model_artifacts", (model_id,), "cpu",
                             INDEXING_TIMEOUT, f"remove the files of {model_id}")

    def _enqueue(self, rid: str, func: str, args: tuple, queue: str, timeout: int, description: str) -> bool:
        try:
            existing = Job.fetch(rid, connection=self.redis)
            status = existing.get_status(refresh=True)
            # A started RQ job whose worker stopped heartbeating it (RQ beats every job_monitoring_interval,
            # 30 s) is gone with its worker: enqueue again. A slow but live one is left alone (a start time
            # alone said nothing: an indexing that took 10 s was enqueued twice and raced itself).
            beat = existing.last_heartbeat or existing.started_at
            stale_start = (status == "started" and beat is not None and
                           time.time() - beat.timestamp() > RQ_HEARTBEAT_STALE)
            if status in PENDING and not stale_start:
                return False
            existing.delete()
        except NoSuchJobError:
            pass
        Queue(queue, connection=self.redis).enqueue_call(
            func, args=args, job_id=rid, timeout=timeout, result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
            description=description)
        log.info("enqueued %s on %s", rid, queue)
        return True

    def tail(self) -> None:
        """React to new events right away (the fast path)."""
        events = self.svc.store.read_all(self.position, 1000)
        for e in events:
            self.position = e.global_position
            if e.type == "JobCreated":
                self.enqueue(e.data["id"], 1, e.data["queue"])
            elif e.type == "DocumentAdded":
                self.enqueue_indexing(e.data["id"])
            elif e.type == "ModelExportRequested":
                self.enqueue_export(e.data["model"], e.data["id"])
            elif e.type == "ModelDeleted":
                self.enqueue_removal(e.data["id"])
            elif e.type == "EvalRunCreated":
                self.enqueue_eval(e.data["id"], 1)
            elif e.type == "EvalRunAttemptLost" and e.data.get("requeued"):
                self.enqueue_eval(e.stream_id.removeprefix("evalrun-"), e.data["attempt"] + 1)
            elif e.type == "EvalRunCancelRequested":  # a dead worker cannot honour it
                self._safely(self.declare_eval_lost, e.stream_id.removeprefix("evalrun-"))
            elif e.type == "ModelRegistered":  # auto_evaluate (eventlog/evals.py): the gate's eval, on this model
                self._safely(self.auto_evaluate, e.data)
            elif e.type in ("PauseRequested", "CancelRequested"):  # a dead worker cannot honour either
                state = self._state(e.stream_id[4:])
                if state.remote is not None and not state.terminal:  # pass the cancel on to the provider now
                    self._safely(self.ensure_polled, state.id, True)
                else:
                    self._safely(self.declare_lost, e.stream_id[4:])
            elif (e.type == "JobAttemptLost" and e.data.get("requeued")) or e.type == "JobResumed":
                state = self._state(e.stream_id[4:])
                if state.status == "queued":
                    self.enqueue(state.id, state.attempt, state.queue)

    def _state(self, job_id: str):
        return fold([(e.type, e.data, e.stream_version) for e in self.svc.store.read_stream(job_stream(job_id))])

    def reconcile(self) -> None:
        """The slow path: nothing the log says must run is left without an RQ job or a live lease.
        Each item is handled on its own: one failure (a Redis hiccup, a bad row) never stops the rest."""
        with self.svc.pool.connection() as c:
            # a delegated job whose remote job exists is followed by polls (no RQ training job, no lease)
            queued = c.execute("SELECT id, attempt, queue FROM jobs WHERE status = 'queued' AND remote IS NULL"
                               ).fetchall()
            expired = c.execute(
                "SELECT j.id FROM jobs j LEFT JOIN leases l ON l.job_id = j.id "
                "WHERE j.status IN ('running', 'pausing') AND j.remote IS NULL "
                "  AND (l.job_id IS NULL OR l.expires_at < now() "
                "  OR ((j.cancel_requested OR j.pause_requested) AND l.worker LIKE %s))",
                (socket.gethostname() + ":%",)).fetchall()
            documents = c.execute("SELECT id FROM documents WHERE status = 'processing'").fetchall()
            exports = c.execute("SELECT m.id AS model, x->>'id' AS export FROM models m, "
                                "jsonb_array_elements(m.exports) x WHERE x->>'status' = 'queued'").fetchall()
            deleted = c.execute("SELECT id FROM models WHERE deleted_at IS NOT NULL").fetchall()
            eval_queued = c.execute("SELECT id, attempt FROM eval_runs WHERE status = 'queued'").fetchall()
            eval_expired = c.execute(
                "SELECT r.id FROM eval_runs r LEFT JOIN leases l ON l.job_id = r.id WHERE r.status = 'in_progress' "
                "AND (l.job_id IS NULL OR l.expires_at < now() OR l.worker LIKE %s)",
                (socket.gethostname() + ":%",)).fetchall()
            followed = c.execute("SELECT id FROM jobs WHERE remote IS NOT NULL AND status NOT IN "
                                 "('succeeded', 'failed', 'cancelled')").fetchall() \
                if time.monotonic() - self._last_follow_check >= self.follow_check_seconds else None
        failures = 0
        if followed is not None:
            failures += not self._safely(self.reconcile_auto_evaluate)
            self._last_follow_check = time.monotonic()
            for row in followed:
                failures += not self._safely(self.ensure_polled, row["id"])
        for row in queued:
            failures += not self._safely(self.enqueue, row["id"], row["attempt"], row["queue"])
        for row in eval_queued:
            failures += not self._safely(self.reconcile_eval, row["id"], row["attempt"])
        for row in documents:
            failures += not self._safely(self.reconcile_document, row["id"])
        for row in exports:
            failures += not self._safely(self.reconcile_export, row["model"], row["export"])
        for row in deleted:
            if row["id"] not in self._removed:
                failures += not self._safely(self.reconcile_removal, row["id"])
        # Leases are only judged once this dispatcher has been connected for a whole lease period: after
        # an outage, workers need a heartbeat or two to renew leases that expired while nobody could write.
        if time.monotonic() - self.connected_since >= self.svc.settings.lease_seconds:
            for row in expired:
                failures += not self._safely(self.declare_lost, row["id"])
            for row in eval_expired:
                failures += not self._safely(self.declare_eval_lost, row["id"])
        if failures:
            log.warning("reconcile: %s item(s) failed; retried next round", failures)

    def _safely(self, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except (psycopg.OperationalError, redis.ConnectionError):
            raise  # the dependency is gone: the run loop backs off and reconnects
        except Exception:  # noqa: BLE001
            log.exception("reconcile: %s%s failed", fn.__name__, args)
            return False

    def reconcile_document(self, document_id: str) -> None:
        """Enqueue indexing again, unless it has been tried `max_attempts` times already (each try appends
        DocumentIndexingStarted): then the document fails instead of crashing a work horse every 2 s."""
        events = self.svc.store.read_stream(document_stream(document_id))
        if any(e.type in ("DocumentIndexed", "DocumentFailed", "DocumentDeleted") for e in events):
            return
        tries = sum(1 for e in events if e.type == "DocumentIndexingStarted")
        if tries >= self.svc.settings.max_attempts and not self._rq_alive(f"{document_id}-index"):
            meta = {"actor": "dispatcher", "correlation_id": document_id}
            try:
                self.svc.store.append(document_stream(document_id), events[-1].stream_version, [NewEvent(
                    "DocumentFailed", {"id": document_id, "error": {
                        "code": "indexing_failed",
                        "message": f"indexing was tried {tries} times and its worker died each time",
                        "param": None}, "at": int(time.time())}, meta)])
            except ConcurrencyConflict:
                pass
            return
        self.enqueue_indexing(document_id)

    def reconcile_export(self, model_id: str, export_id: str) -> None:
        """Enqueue a queued export again, unless it was tried `max_attempts` times (each try appends
        ModelExportStarted) and nothing runs it: then it fails instead of crashing a work horse forever."""
        events = self.svc.store.read_stream(model_stream(model_id))
        mine = [e for e in events if e.data.get("id") == export_id]
        if any(e.type in ("ModelExported", "ModelExportFailed") for e in mine):
            return
        tries = sum(1 for e in mine if e.type == "ModelExportStarted")
        if tries >= self.svc.settings.max_attempts and not self._rq_alive(export_id):
            meta = {"actor": "dispatcher", "correlation_id": export_id}
            try:
                self.svc.store.append(model_stream(model_id), events[-1].stream_version, [NewEvent(
                    "ModelExportFailed", {"id": export_id, "model": model_id, "error": {
                        "code": "export_failed", "message": f"the export was tried {tries} times and its worker "
                        "died each time", "param": None}, "at": int(time.time())}, meta)])
            except ConcurrencyConflict:
                pass
            return
        self.enqueue_export(model_id, export_id)

    def reconcile_removal(self, model_id: str) -> None:
        """A deleted model whose files are not removed yet (no ModelArtifactsRemoved) gets its removal enqueued
        again. Removed ones are remembered: each deleted model's stream is read once per dispatcher, not every
        round forever. A removal that keeps failing is tried `max_attempts` times per dispatcher start."""
        events = self.svc.store.read_stream(model_stream(model_id))
        if any(e.type == "ModelArtifactsRemoved" for e in events):
            self._removed.add(model_id)
            return
        rid = removal_rq_id(model_id)
        if self._rq_alive(rid):
            return
        self._removal_tries[model_id] = self._removal_tries.get(model_id, 0) + 1
        if self._removal_tries[model_id] > self.svc.settings.max_attempts:
            if self._removal_tries[model_id] == self.svc.settings.max_attempts + 1:
                log.error("the files of deleted model %s could not be removed after %s tries; see the RQ "
                          "failed job %s", model_id, self.svc.settings.max_attempts, rid)
            return
        self.enqueue_removal(model_id)

    def ensure_polled(self, job_id: str, now: bool = False) -> None:
        """A followed delegated job has a poll waiting or running (Redis may have lost its chain: a flush, a
        restart, a worker killed while it ran one); else a new chain starts. `now`: poll at once (a cancel)."""
        from eventlog.polls import poll_key, schedule_poll

        if not now:
            held = self.redis.get(poll_key(job_id))
            if held is not None and self._rq_alive(held.decode(), stale_after=RQ_HEARTBEAT_STALE):
                return
        schedule_poll(self.svc, job_id, 0.0, replace=True)
        log.info("poll chain of %s (re)started", job_id)

    def _rq_alive(self, rid: str, stale_after: float | None = None) -> bool:
        """The RQ job will still run. With `stale_after`: a started one whose worker has not heartbeaten it for
        that long is gone with its worker (a poll runs in the worker process: a SIGKILL leaves it "started")."""
        try:
            job = Job.fetch(rid, connection=self.redis)
            status = job.get_status(refresh=True)
        except NoSuchJobError:
            return False
        if stale_after is not None and status == "started":
            beat = job.last_heartbeat or job.started_at
            if beat is not None and time.time() - beat.timestamp() > stale_after:
                return False
        return status in PENDING

    def declare_lost(self, job_id: str) -> None:
        state = self._state(job_id)
        if state.status not in ("running", "pausing") or state.remote is not None:
            return
        with self.svc.pool.connection() as c:
            lease = c.execute("SELECT attempt, worker, expires_at > now() AS alive FROM leases WHERE job_id = %s",
                              (job_id,)).fetchone()
        asked = state.cancel_requested or state.pause_requested
        if lease and lease["alive"] and not (asked and _dead_local(lease["worker"])):
            return
        reason = "heartbeat lease expired" if lease else "no heartbeat lease"
        decided = decide_lost_attempt(state, self.svc.settings.max_attempts, reason, int(time.time()))
        meta = {"actor": "dispatcher", "correlation_id": job_id}
        try:
            self.svc.store.append(job_stream(job_id), state.version,
                                  [NewEvent(t, d, meta) for t, d in decided])
        except ConcurrencyConflict:
            return  # the worker is alive after all (it appended); look again next round
        with self.svc.pool.connection() as c:
            c.execute("DELETE FROM leases WHERE job_id = %s AND attempt = %s", (job_id, state.attempt))
        log.warning("job %s attempt %s lost (%s)", job_id, state.attempt, reason)

    # ---- evaluation runs (workers/evals.py): the same lease and attempt discipline as training jobs ----------
    def _eval_state(self, run_id: str):
        from domain.eval_runs import fold as fold_run
        from domain.events import eval_run_stream

        return fold_run([(e.type, e.data, e.stream_version)
                         for e in self.svc.store.read_stream(eval_run_stream(run_id))])

    def reconcile_eval(self, run_id: str, attempt: int) -> None:
        """A queued run has an RQ job (Redis may have lost it); a canceled-while-queued one is settled."""
        self.enqueue_eval(run_id, attempt)

    def declare_eval_lost(self, run_id: str) -> None:
        """An in-progress run whose worker is gone (lease expired, or its process on this host is dead): canceled
        if that was asked, else the attempt is lost and the next one enqueued (it resumes after the graded items),
        failed after max_attempts."""
        from domain.events import EvalRunAttemptLost, EvalRunCanceled, EvalRunFailed, eval_run_stream

        with self.svc.pool.connection() as c:
            lease = c.execute("SELECT attempt, worker, expires_at > now() AS alive FROM leases WHERE job_id = %s",
                              (run_id,)).fetchone()
        if lease and lease["alive"] and not _dead_local(lease["worker"]):
            return  # (before reading the run's stream: this is asked every round of every running run)
        state = self._eval_state(run_id)
        if state.status != "in_progress":
            return
        if lease is None and time.monotonic() - self.connected_since < self.svc.settings.lease_seconds:
            return  # just (re)connected: a worker that started the run may not have written its lease yet
        now = int(time.time())
        meta = {"actor": "dispatcher", "correlation_id": run_id}
        reason = "heartbeat lease expired" if lease else "no heartbeat lease"
        if state.cancel_requested:
            new = [NewEvent("EvalRunCanceled", EvalRunCanceled(reason="canceled (its worker was gone)",
                                                               at=now).to_data(), meta)]
        elif state.attempt >= self.svc.settings.max_attempts:
            new = [NewEvent("EvalRunAttemptLost", EvalRunAttemptLost(attempt=state.attempt, reason=reason,
                                                                     requeued=False, at=now).to_data(), meta),
                   NewEvent("EvalRunFailed", EvalRunFailed(error={
                       "code": "attempts_exhausted", "message": f"the run's worker was lost {state.attempt} times "
                       f"(last: {reason}); {len(state.graded)} item(s) were graded"}, at=now).to_data(), meta)]
        else:
            new = [NewEvent("EvalRunAttemptLost", EvalRunAttemptLost(attempt=state.attempt, reason=reason,
                                                                     requeued=True, at=now).to_data(), meta)]
        try:
            self.svc.store.append(eval_run_stream(run_id), state.version, new)
        except ConcurrencyConflict:
            return  # the worker is alive after all (it appended); look again next round
        with self.svc.pool.connection() as c:
            c.execute("DELETE FROM leases WHERE job_id = %s AND attempt = %s", (run_id, state.attempt))
        log.warning("eval run %s attempt %s lost (%s)", run_id, state.attempt, reason)

    def reconcile_auto_evaluate(self) -> None:
        """A fine-tune registered since the project turned auto_evaluate on (its last settings change) without a
        run of the gate's eval: the tail missed its ModelRegistered (a dispatcher restart or a failed round);
        evaluate it now (the run ids are derived, so a race with the tail creates nothing twice)."""
        with self.svc.pool.connection() as c:
            missed = c.execute(
                "SELECT m.id, m.project, m.base_model, m.backend, m.job_id, m.artifact_path FROM models m "
                "JOIN project_settings s ON s.project = m.project "
                "WHERE jsonb_typeof(s.settings -> 'promotion_eval') = 'object' "
                "  AND s.settings ->> 'auto_evaluate' = 'true' AND m.job_id IS NOT NULL AND m.deleted_at IS NULL "
                "  AND m.backend IN ('hf-lora', 'hf-full') AND m.created_at < extract(epoch FROM now()) - 30 "
                "  AND m.created_at >= (SELECT extract(epoch FROM max(e.recorded_at)) FROM events e "
                "    WHERE e.stream_id = 'project-' || m.project AND e.type = 'ProjectSettingsChanged') "
                "  AND NOT EXISTS (SELECT 1 FROM eval_runs r WHERE r.project = m.project AND r.model = m.id "
                "    AND r.eval_id = s.settings -> 'promotion_eval' ->> 'eval_id') "
                "ORDER BY m.seq LIMIT 10").fetchall()
        for row in missed:
            if row["id"] not in self._auto_tried:  # one try per dispatcher: a model it can't evaluate is logged once
                self._auto_tried.add(row["id"])
                self.auto_evaluate(dict(row))

    def auto_evaluate(self, registered: dict) -> None:
        from eventlog.evals import auto_evaluate

        created = auto_evaluate(self.svc, registered, log)
        if created:
            log.info("auto_evaluate of %s: run(s) %s", registered["id"], ", ".join(created))

    def run(self, stop: threading.Event) -> None:
        from eventlog.heartbeat import Heartbeat
        from eventlog.runner import catch_up

        listener = None
        holder = None
        last_reconcile = 0.0
        backoff = 0.5
        beat = Heartbeat(self.svc.pool, "dispatcher")
        while not stop.is_set():
            try:
                if holder is None:
                    holder = connect(self.svc.settings.database_url)
                    got = holder.execute("SELECT pg_try_advisory_lock(%s) AS ok", (ADVISORY_KEY,)).fetchone()
                    if not got["ok"]:
                        holder.close()
                        holder = None
                        stop.wait(2.0)
                        continue
                    self.position = self.svc.store.head()  # history is covered by reconcile()
                    self.connected_since = time.monotonic()
                    log.info("dispatcher active from position %s", self.position)
                if listener is None:
                    listener = connect(self.svc.settings.database_url)
                    listener.execute(f"LISTEN {CHANNEL}")
                self.tail()
                if time.monotonic() - last_reconcile >= self.reconcile_seconds:
                    try:  # reconcile reads the jobs read model: make it current (projections are isolated,
                        catch_up(self.svc.pool)  # so a failing one never stops dispatching)
                    except psycopg.OperationalError:
                        raise
                    except Exception:  # noqa: BLE001
                        log.exception("catch-up before reconcile failed; reconciling on what is projected")
                    self.reconcile()
                    last_reconcile = time.monotonic()
                beat.beat()
                backoff = 0.5
                for _ in listener.notifies(timeout=0.5, stop_after=1):
                    pass
            except Exception as e:  # noqa: BLE001 - outages and bugs alike: back off, reconnect, go on
                if isinstance(e, (psycopg.OperationalError, redis.RedisError)) or type(e).__name__ == "PoolTimeout":
                    log.warning("dependency unavailable (%s); retrying in %.1fs", e, backoff)
                else:
                    log.exception("dispatcher round failed; retrying in %.1fs", backoff)
                for conn in (listener, holder):
                    if conn is not None:
                        try:
                            conn.close()
                        except Exception:  # noqa: BLE001
                            pass
                listener = holder = None
                self._redis = None
                self.svc.pool.check()
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    svc = bootstrap(pool_size=3)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from eventlog.webhooks import Deliverer

    # webhook deliveries on a thread of their own: a slow receiver never holds dispatching up
    deliverer = threading.Thread(target=Deliverer(bootstrap(pool_size=2)).run, args=(stop,), name="webhooks",
                                 daemon=True)
    deliverer.start()
    Dispatcher(svc).run(stop)
    deliverer.join(timeout=15)
    log.info("dispatcher stopped")


if __name__ == "__main__":
    main()
