"""A large table read as key ranges side by side, and the reader's pace.

One keyset reader per table leaves a core idle while a single large table is read: the source
sends one COPY at a time and apply waits for its chunks. A table of at least
``SPLIT_CHUNKS`` chunks per reading session is cut into as many consecutive key ranges as there
are sessions, each read by its own session (``(key) > start AND (key) <= end``), each with its
own resumable position in ``replicator.backfill_ranges``. How many sessions read at once over a
whole level is ``backfill.max_read_sessions``; ``backfill.max_rows_per_s`` caps the rows read
per second over all of them, for a production source in its busy hours. On the bulk path a
chunk of narrow rows grows (:func:`bulk_chunk_rows`).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from replicator.backfill.copy_read import SourceTable

# Splitting costs an index scan per boundary; below this many chunks per session a table is
# read faster whole than the boundaries cost.
SPLIT_CHUNKS = 4

# A bulk chunk of narrow rows grows up to this many times backfill.chunk_rows while its widest
# possible rows stay under CHUNK_BYTES: every chunk costs a statement on the source, a Kafka
# request and a target transaction, about 3 ms of CPU over the processes (2 M pgbench rows:
# 5,000-row chunks took 1 s of CPU more than 20,000-row ones). Only a table whose every column
# has a bounded width grows (a text or jsonb column may hold megabytes in any row, and the
# reader holds a chunk whole), and none under a rate cap (a chunk is read at full speed).
CHUNK_GROWTH = 4
CHUNK_BYTES = 8 << 20

_FIXED = {
    "boolean": 1,
    "smallint": 2,
    "integer": 4,
    "bigint": 8,
    "real": 4,
    "double precision": 8,
    "date": 4,
    "time without time zone": 8,
    "timestamp without time zone": 8,
    "timestamp with time zone": 8,
    "uuid": 16,
    "oid": 4,
}
_CHARS = re.compile(r"(?:character varying|character)\((\d+)\)")
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


def widest_row(source: SourceTable) -> int | None:
    """The most bytes a row of ``source`` takes in COPY's binary format (None: unbounded)."""
    total = 2
    for column, type_ in zip(source.columns, source.types, strict=True):
        if column in source.enums:
            size = 64  # a label is at most NAMEDATALEN - 1 bytes
        elif type_ in _FIXED:
            size = _FIXED[type_]
        elif chars := _CHARS.fullmatch(type_):
            size = 4 * int(chars.group(1))  # UTF-8: at most 4 bytes a character
        elif digits := _NUMERIC.fullmatch(type_.replace(" ", "")):
            size = 8 + 2 * (int(digits.group(1)) // 4 + 2)  # header, base-10000 digits
        else:
            return None
        total += 4 + size
    return total


def bulk_chunk_rows(chunk_rows: int, source: SourceTable, capped: bool) -> int:
    """The rows a bulk chunk of ``source`` asks for (``capped``: a rate cap is on)."""
    widest = widest_row(source)
    if widest is None or capped:
        return chunk_rows
    return max(chunk_rows, min(CHUNK_GROWTH * chunk_rows, CHUNK_BYTES // widest))


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
