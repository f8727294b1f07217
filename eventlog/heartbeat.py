"""Process heartbeats in Postgres: each long-lived process upserts its row every few seconds, so that
/healthz can report every part (projector, dispatcher, workers) whoever manages the processes."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import ConnectionPool

log = logging.getLogger("tunelog.heartbeat")


class Heartbeat:
    def __init__(self, pool: ConnectionPool, kind: str, every: float = 3.0):
        self.pool = pool
        self.kind = kind
        self.every = every
        self.process = f"{kind}:{socket.gethostname()}:{os.getpid()}"
        self.started_at = datetime.now(UTC)
        self._last = 0.0

    def beat(self, info: dict[str, Any] | None = None, force: bool = False) -> None:
        """Upsert this process's row (at most every `every` seconds unless forced); never raises."""
        if not force and time.monotonic() - self._last < self.every:
            return
        try:
            with self.pool.connection(timeout=2) as c:
                c.execute(
                    "INSERT INTO heartbeats (process, kind, host, pid, started_at, seen_at, info) "
                    "VALUES (%s, %s, %s, %s, %s, now(), %s::jsonb) ON CONFLICT (process) DO UPDATE "
                    "SET seen_at = now(), info = EXCLUDED.info",
                    (self.process, self.kind, socket.gethostname(), os.getpid(), self.started_at,
                     json.dumps(info or {})))
            self._last = time.monotonic()
        except Exception as e:  # noqa: BLE001 - a heartbeat must never stop the loop it reports on
            log.debug("heartbeat failed: %s", e)

    def end(self) -> None:
        """Remove this process's row (a clean exit): /healthz stops counting it at once rather than after
        its heartbeat goes stale. Never raises."""
        try:
            with self.pool.connection(timeout=2) as c:
                c.execute("DELETE FROM heartbeats WHERE process = %s", (self.process,))
        except Exception as e:  # noqa: BLE001
            log.debug("heartbeat removal failed: %s", e)
