"""Turns a training run's records into events: throttled (about one append a second, plus every
eval and checkpoint), fenced by the stream's expected version, and watching for cancel and pause requests."""
from __future__ import annotations

import logging
import time
from typing import Any

from domain.errors import ConcurrencyConflict
from domain.events import job_stream
from eventlog.db import DatabaseUnavailable
from eventlog.store import Append, EventStore, NewEvent

log = logging.getLogger("tunelog.worker")


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
        self.pause_requested = False
        self.unavailable_until = 0.0  # after a failed append, wait before trying again (backoff)
        self.backoff = 0.5

    def add(self, type_: str, data: dict[str, Any], urgent: bool = False) -> None:
        """Queue an event; append the queue now if it is urgent or a second has passed. While Postgres is
        unreachable the events wait here (training goes on) and go out with the next append that works."""
        self.pending.append(NewEvent(type_, data, self.metadata))
        if time.monotonic() < self.unavailable_until:
            return
        if urgent or time.monotonic() - self.last_flush >= self.min_interval:
            try:
                self.flush()
            except DatabaseUnavailable as e:
                self._unavailable(e)

    def _unavailable(self, e: Exception) -> None:
        log.warning("%s: the event log is unreachable (%s); keeping %s event(s), retrying in %.1fs", self.stream, e,
                    len(self.pending), self.backoff)
        self.unavailable_until = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, 10.0)

    def _absorb_foreign(self) -> None:
        """Someone else appended to our stream: a cancel request is fine; anything else fences us."""
        for e in self.store.read_stream(self.stream, after_version=self.version):
            if e.type == "CancelRequested":
                self.cancel_requested = True
            elif e.type == "PauseRequested":
                self.pause_requested = True
            elif e.type in ("JobStarted", "JobAttemptLost", "JobFailed", "JobSucceeded", "JobCancelled", "JobPaused",
                            "JobResumed"):
                raise Fenced(f"{self.stream} got {e.type} at version {e.stream_version} from someone else")
            self.version = e.stream_version

    def poll(self) -> None:
        """Check the stream for a cancel request (cheap; called between steps). Also retries held events."""
        if time.monotonic() < self.unavailable_until:
            return
        try:
            if self.store.stream_version(self.stream) != self.version:
                self._absorb_foreign()
            if self.pending:
                self.flush()
        except DatabaseUnavailable as e:
            self._unavailable(e)

    def finish(self, extra: list[NewEvent], others: list | None = None, patience: float = 600.0) -> None:
        """The terminal append: retried through an outage of up to `patience` seconds (the job's outcome
        must not be lost to a database restart), still fenced by the stream's version."""
        deadline = time.monotonic() + patience
        delay = 0.5
        while True:
            try:
                return self.flush(extra=extra, others=others)
            except DatabaseUnavailable as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("%s: terminal append failed (%s); retrying in %.1fs", self.stream, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def flush(self, extra: list[NewEvent] | None = None, others: list | None = None) -> None:
        events = self.pending + (extra or [])
        if not events and not others:
            return

        for _ in range(20):
            try:
                appends = [Append(self.stream, self.version, events)] + list(others or [])
                self.store.append_many(appends)
                self.version += len(events)
                self.pending = []
                self.last_flush = time.monotonic()
                self.unavailable_until, self.backoff = 0.0, 0.5
                return
            except ConcurrencyConflict as e:
                if e.stream_id != self.stream:
                    raise
                self._absorb_foreign()
        raise Fenced(f"could not append to {self.stream} after 20 conflicts")
