"""One place that wires the real adapters for a process (the composition root)."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis

from eventlog import settings as settings_mod
from eventlog.db import pool
from eventlog.settings import Settings
from eventlog.store import EventStore


@dataclass
class Services:
    settings: Settings
    store: EventStore

    @property
    def pool(self):
        return self.store.pool

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=2)


_services: dict[tuple[int, Settings | None], Services] = {}
_lock = threading.Lock()


def bootstrap(s: Settings | None = None, pool_size: int = 10) -> Services:
    """The process's services (per pid: a forked RQ work horse gets its own connections)."""
    with _lock:
        key = (os.getpid(), s)
        svc = _services.get(key)
        if svc is None:
            settings = s or settings_mod.load()
            svc = Services(settings=settings, store=EventStore(pool(settings.database_url, max_size=pool_size)))
            _services[key] = svc
        return svc
