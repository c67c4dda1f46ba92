"""A large table read as key ranges side by side, and the reader's pace.

One keyset reader per table leaves a core idle while a single large table is read: the source
sends one COPY at a time and apply waits for its chunks. A table of at least
``SPLIT_CHUNKS`` chunks per reading session is cut into as many consecutive key ranges as there
are sessions, each read by its own session (``(key) > start AND (key) <= end``), each with its
own resumable position in ``replicator.backfill_ranges``. How many sessions read at once over a
whole level is ``backfill.max_read_sessions``; ``backfill.max_rows_per_s`` caps the rows read
per second over all of them, for a production source in its busy hours.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from replicator.backfill.copy_read import SourceTable

# Splitting costs an index scan per boundary; below this many chunks per session a table is
# read faster whole than the boundaries cost.
SPLIT_CHUNKS = 4


def range_count(rows_total: int, chunk_rows: int, sessions: int) -> int:
    """How many key ranges a table of ``rows_total`` rows is read in (1: whole)."""
    if sessions < 2:
        return 1
    return max(1, min(sessions, rows_total // max(1, chunk_rows * SPLIT_CHUNKS)))


def boundaries(
    conn: psycopg.Connection[Any], source: SourceTable, rows_total: int, parts: int
) -> list[list[str]]:
    """The last key (as text) of each range but the last, ``rows_total / parts`` rows apart
    (an index scan each; duplicates, a table that shrank since it was counted, are dropped)."""
    table = sql.Identifier(*source.table.split(".", 1))
    keys = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(k)) for k in source.key)
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in source.key)
    query = sql.SQL("SELECT {} FROM {} t ORDER BY {} OFFSET %s LIMIT 1").format(keys, table, order)
    out: list[list[str]] = []
    for k in range(1, parts):
        row = conn.execute(query, (rows_total * k // parts - 1,)).fetchone()
        if row is not None and (not out or list(row) != out[-1]):
            out.append([str(v) for v in row])
    return out


class RateCap:
    """At most ``rows_per_s`` rows a second over every reading session (0: no cap): each chunk
    read books its rows' time, and its session waits until its booking is due."""

    def __init__(self, rows_per_s: float) -> None:
        self.rate = rows_per_s
        self._lock = threading.Lock()
        self._due = time.monotonic()

    def take(self, rows: int, stop: threading.Event) -> float:
        """Book ``rows`` just read; returns how long this session waited."""
        if self.rate <= 0 or rows <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            # An idle spell earns no burst: the booking starts now at the latest.
            self._due = max(self._due, now) + rows / self.rate
            wait = self._due - now - rows / self.rate
        if wait > 0:
            stop.wait(wait)
        return max(0.0, wait)
