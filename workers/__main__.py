"""`python -m workers QUEUE...`: an RQ worker on the named queues (cpu, gpu)."""
from __future__ import annotations

import logging
import sys

import redis
from rq import Queue, Worker

import workers.jobs  # noqa: F401 - imported before forking, so each work horse starts fast

log = logging.getLogger("tunelog.worker")


class TunelogWorker(Worker):
    """RQ's forking worker, plus one thing: a training job is claimed (fenced JobStarted + lease)
    in this long-lived process, on its warm connection, before the work horse is forked."""

    def execute_job(self, job, queue):
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
    names = argv[1:] or ["cpu"]
    s = settings.load()
    conn = redis.Redis.from_url(s.redis_url)
    queues = [Queue(n, connection=conn) for n in names]
    TunelogWorker(queues, connection=conn).work(with_scheduler=False, logging_level="INFO")


if __name__ == "__main__":
    main(sys.argv)
