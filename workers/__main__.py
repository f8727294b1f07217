"""`python -m workers QUEUE...`: an RQ worker on the named queues (cpu, gpu)."""
from __future__ import annotations

import logging
import sys

import redis
from rq import Queue, Worker

import workers.jobs  # noqa: F401 - imported before forking, so each work horse starts fast


def main(argv: list[str]) -> None:
    from eventlog import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = argv[1:] or ["cpu"]
    s = settings.load()
    conn = redis.Redis.from_url(s.redis_url)
    queues = [Queue(n, connection=conn) for n in names]
    Worker(queues, connection=conn).work(with_scheduler=False, logging_level="INFO")


if __name__ == "__main__":
    main(sys.argv)
