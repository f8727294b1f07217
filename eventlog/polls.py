"""The poll chains that follow delegated jobs (workers/delegate.py): one scheduled RQ job at a time per job.

Redis holds the id of a job's next poll under `tunelog:poll:<job id>`; a poll names its successor only
while that key still names the poll itself (compare-and-set), so a chain never forks. A cancel, or the
dispatcher's repair after Redis lost a chain, starts a new chain; the old one stops at its next run.
"""
from __future__ import annotations

import os
import uuid
from datetime import timedelta

POLL_FUNC = "workers.delegate.poll_remote"
POLL_TIMEOUT = 300  # one poll: a few HTTP calls with 30 s timeouts
KEY_TTL = 30 * 24 * 3600
_CAS = """if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1 else return 0 end"""


def poll_bounds() -> tuple[float, float]:
    """Seconds between polls: from the minimum (after a change) doubling to the maximum while nothing changes."""
    lo = float(os.environ.get("TUNELOG_POLL_MIN_SECONDS") or 2.0)
    hi = float(os.environ.get("TUNELOG_POLL_MAX_SECONDS") or 60.0)
    return lo, max(lo, hi)


def poll_key(job_id: str) -> str:
    return f"tunelog:poll:{job_id}"


def schedule_poll(svc, job_id: str, delay: float, failures: int = 0, replace: bool = False,
                  current: str | None = None) -> str | None:
    """Schedule the job's next poll in `delay` seconds. `replace` starts a new chain (the previous one stops
    at its next run); otherwise only the poll `current` may name its successor (one chain per job)."""
    from rq import Queue

    r = svc.redis()
    rid = f"{job_id}-poll-{uuid.uuid4().hex[:10]}"
    if replace:
        r.set(poll_key(job_id), rid, ex=KEY_TTL)
    elif not r.eval(_CAS, 1, poll_key(job_id), current or "", rid, KEY_TTL):
        return None
    q = Queue("cpu", connection=r)
    kwargs = dict(job_id=rid, job_timeout=POLL_TIMEOUT, result_ttl=0, failure_ttl=24 * 3600,
                  description=f"poll the remote job of {job_id}")
    if delay <= 0:
        q.enqueue(POLL_FUNC, job_id, 0.0, failures, **kwargs)
    else:
        q.enqueue_in(timedelta(seconds=delay), POLL_FUNC, job_id, delay, failures, **kwargs)
    return rid


