"""`python -m workers QUEUE...`: an RQ worker on the named queues (cpu, gpu)."""
from __future__ import annotations

import logging
import sys
import time

import redis
from rq import Queue, Worker

import workers.jobs  # noqa: F401 - imported before forking, so each work horse starts fast
from eventlog.polls import POLL_FUNC

log = logging.getLogger("tunelog.worker")


class TunelogWorker(Worker):
    """RQ's forking worker, plus one thing: a training job is claimed (fenced JobStarted + lease)
    in this long-lived process, on its warm connection, before the work horse is forked."""

    def execute_job(self, job, queue):
        if job.func_name == POLL_FUNC:
            # A delegated job's poll (a few HTTP calls, then it schedules the next) runs in this process, on its
            # warm Postgres pool and HTTP clients, as RQ's SimpleWorker runs jobs: forking a work horse, opening
            # connections and importing the SDK would cost more CPU than the poll itself, for every poll of
            # every followed job. Its timeout is still enforced (RQ's death penalty, SIGALRM, in this thread).
            from rq.worker import WorkerStatus

            self.prepare_execution(job)
            self.perform_job(job, queue)
            self.set_state(WorkerStatus.IDLE)
            return None
        if job.func_name == "workers.jobs.run_training":
            try:
                workers.jobs.preclaim(*job.args)
            except Exception:  # the horse claims for itself then
                log.exception("pre-claim of %s failed", job.id)
        try:
            return super().execute_job(job, queue)
        finally:
            workers.jobs.PRECLAIMED.pop(tuple(job.args), None)  # the horse had its copy


def main(argv: list[str]) -> None:
    from eventlog import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("httpx", "httpx2"):  # the SDK's HTTP client logs every request's URL at INFO: not a poll's worth
        logging.getLogger(name).setLevel(logging.WARNING)
    names = argv[1:] or ["cpu"]
    s = settings.load()
    _start_heartbeat(s, "worker-" + "-".join(names))
    if "cpu" in names:
        # imported (not run) before the work horses fork, so each indexing job skips seconds of imports;
        # nothing runs torch here, so no thread pool exists yet to be inherited by a fork
        import openai  # noqa: F401
        import sentence_transformers  # noqa: F401

        import workers.delegate  # noqa: F401
        import workers.embed  # noqa: F401
    conn = redis.Redis.from_url(s.redis_url, health_check_interval=15, socket_connect_timeout=5)
    queues = [Queue(n, connection=conn) for n in names]
    # with RQ's scheduler: delegated jobs are followed by polls scheduled with enqueue_in (workers/delegate.py)
    TunelogWorker(queues, connection=conn).work(with_scheduler=True, logging_level="INFO")


def _start_heartbeat(s, kind: str) -> None:
    """A thread in the long-lived worker process (not in work horses: threads do not survive a fork)
    reports it alive every few seconds, for /healthz, whatever it is doing."""
    import atexit
    import threading

    from eventlog.db import pool
    from eventlog.heartbeat import Heartbeat

    beat = Heartbeat(pool(s.database_url, max_size=1), kind)

    def loop() -> None:
        while True:
            beat.beat(force=True)
            time.sleep(beat.every)

    threading.Thread(target=loop, daemon=True, name="heartbeat").start()
    # a clean exit (RQ's warm shutdown on SIGTERM) removes the row; work horses and the scheduler's fork
    # leave through os._exit, which runs no atexit handler
    atexit.register(beat.end)


if __name__ == "__main__":
    main(sys.argv)
