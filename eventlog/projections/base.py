from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import psycopg

from eventlog.store import RecordedEvent


class Projection(Protocol):
    name: str
    tables: tuple[str, ...]  # rows owned by this projection (truncated on replay)

    def apply(self, conn: psycopg.Connection, events: Sequence[RecordedEvent]) -> None: ...
