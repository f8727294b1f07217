"""One place that wires the real adapters for a process (the composition root)."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import redis

from eventlog import settings as settings_mod
from eventlog.db import pool
from eventlog.settings import Settings
from eventlog.store import EventStore


@dataclass
class Services:
    settings: Settings
    store: EventStore
    _redis: redis.Redis | None = field(default=None, repr=False, compare=False)

    @property
    def pool(self):
        return self.store.pool

    def redis(self) -> redis.Redis:
        """A client on this process's connection pool (a new client per call would open a connection per
        call); a broken pooled connection is dropped and replaced by redis-py itself."""
        client = self._redis
        if client is None or client.pid != os.getpid():
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                          health_check_interval=30)
            client.pid = os.getpid()  # type: ignore[attr-defined]
            self._redis = client
        return client


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
