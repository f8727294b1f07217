"""Turns a training run's records into events: throttled (about one append a second, plus every
eval and checkpoint), fenced by the stream's expected version, and watching for cancel requests."""
from __future__ import annotations

import time
from typing import Any

from domain.errors import ConcurrencyConflict
from domain.events import job_stream
from eventlog.store import EventStore, NewEvent


class Fenced(Exception):
    """Another attempt owns this job now (or it ended): this worker must stop touching it."""


class ProgressLog:
    def __init__(self, store: EventStore, job_id: str, version: int, attempt: int, metadata: dict[str, Any],
                 min_interval: float = 1.0):
        self.store = store
        self.job_id = job_id
        self.stream = job_stream(job_id)
        self.version = version
        self.attempt = attempt
        self.metadata = metadata
        self.min_interval = min_interval
        self.pending: list[NewEvent] = []
        self.last_flush = 0.0
        self.cancel_requested = False

    def add(self, type_: str, data: dict[str, Any], urgent: bool = False) -> None:
        self.pending.append(NewEvent(type_, data, self.metadata))
        if urgent or time.monotonic() - self.last_flush >= self.min_interval:
            self.flush()

    def _absorb_foreign(self) -> None:
        """Someone else appended to our stream: a cancel request is fine; anything else fences us."""
        for e in self.store.read_stream(self.stream, after_version=self.version):
            if e.type == "CancelRequested":
                self.cancel_requested = True
            elif e.type in ("JobStarted", "JobAttemptLost", "JobFailed", "JobSucceeded", "JobCancelled"):
                raise Fenced(f"{self.stream} got {e.type} at version {e.stream_version} from someone else")
            self.version = e.stream_version

    def poll(self) -> None:
        """Check the stream for a cancel request (cheap; called between steps)."""
        if self.store.stream_version(self.stream) != self.version:
            self._absorb_foreign()

    def flush(self, extra: list[NewEvent] | None = None, others: list | None = None) -> None:
        events = self.pending + (extra or [])
        if not events and not others:
            return
        from eventlog.store import Append

        for _ in range(20):
            try:
                appends = [Append(self.stream, self.version, events)] + list(others or [])
                self.store.append_many(appends)
                self.version += len(events)
                self.pending = []
                self.last_flush = time.monotonic()
                return
            except ConcurrencyConflict as e:
                if e.stream_id != self.stream:
                    raise
                self._absorb_foreign()
        raise Fenced(f"could not append to {self.stream} after 20 conflicts")
