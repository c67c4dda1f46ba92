"""Backfill: a resumable, chunked read of the mapped legacy tables into the snapshot topic.

Why it converges (ARCHITECTURE.md section 5): the slot exists before the first chunk is read, and
the capture keeps consuming it into the changes topic. A ``backfill_started`` marker goes through
the log first; apply commits every change up to it, switches to the snapshot topic, loads every
chunk (read *after* the marker, so never older than what it overwrites), and on
``snapshot_done`` resumes the changes topic where it stopped. Replaying changes newer than the
marker over the snapshot with idempotent upserts and deletes yields the source state.

Chunks are keyset pages (``WHERE key > last ORDER BY key LIMIT n``) in the log's raw form: for a
table whose transform compiles, PostgreSQL's own COPY output (replicator.backfill.copy_read, loaded
by apply in SQL); for the others, rows read as text in change envelopes. Progress is stored per chunk in the target's ``replicator`` schema after
Kafka acknowledged the chunk: an interrupted backfill resumes from the completed chunks.
Tables are read in foreign-key levels (parents first, a level's tables in parallel), because an
N→1 merge patches a row that its parent table creates.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors import pg
from connectors.envelope import Change, Envelope
from connectors.kafka_io import Producer, beginning_offsets, ensure_topics
from connectors.pgsource import emit_message
from replicator.backfill.copy_read import (
    SQL_PATH,
    SourceTable,
    binary_format,
    chunk_query,
    load_path,
    prepare_reader,
    read_copy_chunk,
)
from replicator.backfill.needed import refuse_after_cutover, slot_was_lost
from replicator.backfill.ranges import RateCap, boundaries, bulk_chunk_rows, range_count
from replicator.capture import prepare_source
from replicator.config import Settings
from replicator.derived import prove_direction
from replicator.errors import SchemaError, StateError
from replicator.state import ensure_schema, load_offsets
from transforms.api import Direction

log = logging.getLogger(__name__)

CONTROL_PREFIX = "replicator"


@dataclass(frozen=True)
class TableProgress:
    table: str
    rows_total: int
    rows_read: int
    done: bool
    rows_per_s: float = 0.0
    path: str = SQL_PATH  # how the table is loaded: sql, or python: <why>


ProgressFn = Callable[[TableProgress], None]


def _describe(conn: psycopg.Connection[Any], table: str) -> SourceTable:
    schema, _, name = table.partition(".")
    rel = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    if rel is None:
        raise SchemaError(f"mapped table {table} does not exist on the source")
    cols = conn.execute(
        "SELECT attname, atttypid, format_type(atttypid, atttypmod), "
        "(SELECT typtype = 'e' FROM pg_type WHERE oid = atttypid) FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (rel[0],),
    ).fetchall()
    key = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.n",
        (rel[0],),
    ).fetchall()
    if not key:
        raise SchemaError(
            f"table {table} has no primary key: it cannot be read in key-ordered chunks",
            hint=f"add a primary key to {table} (ALTER TABLE {table} ADD PRIMARY KEY (...)), "
            "or leave it out of the mapping",
        )
    return SourceTable(
        table,
        int(rel[0]),
        tuple(str(c[0]) for c in cols),
        tuple(int(c[1]) for c in cols),
        tuple(str(c[2]) for c in cols),
        tuple(str(k[0]) for k in key),
        tuple(str(c[0]) for c in cols if c[3]),
    )


def _levels(conn: psycopg.Connection[Any], tables: list[str]) -> list[list[str]]:
    """Tables grouped so that every table comes after the tables it references."""
    deps: dict[str, set[str]] = {t: set() for t in tables}
    rows = conn.execute(
        "SELECT cn.nspname || '.' || c.relname, pn.nspname || '.' || p.relname "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "JOIN pg_namespace cn ON cn.oid = c.relnamespace JOIN pg_class p ON p.oid = k.confrelid "
        "JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE k.contype = 'f'"
    ).fetchall()
    for child, parent in rows:
        if child in deps and parent in deps and child != parent:
            deps[child].add(parent)
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(tables):
        level = [t for t in tables if t not in placed and deps[t] <= placed]
        if not level:  # a cycle: read the rest together
            level = [t for t in tables if t not in placed]
        levels.append(level)
        placed.update(level)
    return levels


# A chunk's rows are split over several messages above this (before compression): wide rows —
# TOASTed JSON configs — must not make a message the broker refuses (kafka_io.MAX_MESSAGE_BYTES)
# or one the apply worker has to hold whole.
SNAPSHOT_MESSAGE_BYTES = 4 << 20

# How often a split table's own progress row is written (each range's is, every chunk).
TABLE_PROGRESS_S = 0.5


def snapshot_messages(
    origin: str,
    source: SourceTable,
    rows: list[tuple[Any, ...]],
    limit: int = SNAPSHOT_MESSAGE_BYTES,
) -> Iterator[bytes]:
    """The encoded snapshot envelopes of one chunk, each at most ``limit`` bytes unless it holds
    a single row (a row is never split; the producer refuses one above its own limit)."""
    envelope = Envelope(
        origin=origin,
        xid=0,
        commit_lsn=0,
        commit_ts=None,
        relations={source.relid: source.relation},
        changes=[
            Change("snapshot", source.relid, values=r, relation=source.relation) for r in rows
        ],
    )
    encoded = envelope.encode()
    if len(encoded) <= limit or len(rows) == 1:
        yield encoded
        return
    half = len(rows) // 2
    yield from snapshot_messages(origin, source, rows[:half], limit)
    yield from snapshot_messages(origin, source, rows[half:], limit)


def emit_marker(conn: psycopg.Connection[Any], control: dict[str, Any]) -> None:
    """A transactional logical message: it reaches the log in commit order with the changes."""
    conn.execute(emit_message(conn.info.server_version, True, CONTROL_PREFIX, json.dumps(control)))


class Backfill:
    def __init__(
        self,
        settings: Settings,
        direction: Direction,
        *,
        tables: list[str] | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        self.s = settings
        self.direction = direction
        all_tables = direction.source_tables
        unknown = [t for t in tables or [] if t not in all_tables]
        if unknown:
            raise SchemaError(
                f"not a mapped source table: {', '.join(unknown)}",
                hint="mapped tables: " + ", ".join(all_tables),
            )
        self.tables = tables or all_tables
        self.resync = tables is not None
        self.chunk_rows = chunk_rows or settings.backfill.chunk_rows
        self.parallel = settings.backfill.parallel
        # Source sessions reading at once, over a level's tables and their key ranges.
        self.sessions = settings.backfill.max_read_sessions or self.parallel
        self.cap = RateCap(settings.backfill.max_rows_per_s)
        self.topic = settings.topic("fwd", "snapshot")

    def run(self, stop: threading.Event | None = None, progress: ProgressFn | None = None) -> str:
        """Read every table into the snapshot topic (resuming an interrupted run); returns its id."""
        stop = stop or threading.Event()
        s = self.s
        refuse_after_cutover(s)
        created = prepare_source(s, s.source, self.direction.source_tables, "fwd")
        if created is not None and set(self.tables) == set(self.direction.source_tables):
            # A lost slot (slot_was_lost): only tables emptied first drop the gap's deletes.
            self.resync = self.resync or slot_was_lost(s)
        ensure_topics(
            s.kafka.bootstrap_servers,
            s.topics("fwd"),
            s.kafka.replication_factor,
            **s.kafka.client_options(),
        )
        with (
            pg.connect(s.source.conninfo(), autocommit=True) as src,
            pg.connect(s.target.conninfo(), autocommit=True) as tgt,
        ):
            with pg.translated(s.target.masked()):
                ensure_schema(tgt)
            with pg.translated(s.source.masked()):
                sources = {t: _describe(src, t) for t in self.tables}
                levels = _levels(src, self.tables)
            backfill_id = self._start(src, tgt, sources)
            with pg.translated(s.source.masked()):
                # Converters' derived SQL forms, proved before a path is chosen (the apply
                # workers prove them again before they load a chunk with them).
                prove_direction(self.direction, src)
            paths = {
                t: load_path(s.backfill, self.direction.transform_for(t), sources[t])
                for t in self.tables
            }
            with pg.translated(s.target.masked()):
                for t, path in paths.items():
                    tgt.execute(
                        "UPDATE replicator.backfill_progress SET path = %s"
                        " WHERE backfill_id = %s AND table_name = %s",
                        (path, backfill_id, t),
                    )
                    log.info("backfill of %s: %s path", t, path)
        producer = Producer(
            s.kafka.bootstrap_servers, compression=s.kafka.compression, **s.kafka.client_options()
        )
        try:
            for level in levels:
                with ThreadPoolExecutor(max_workers=self.sessions) as pool:
                    futures = [
                        pool.submit(
                            self._read_table,
                            backfill_id,
                            sources[t],
                            paths[t],
                            producer,
                            stop,
                            progress,
                            part,
                        )
                        for t, part in self._parts(backfill_id, level)
                    ]
                    for f in futures:
                        f.result()
                if stop.is_set():
                    log.warning("backfill %s interrupted; the next run resumes it", backfill_id)
                    return backfill_id
            done = Envelope(
                origin=s.name,
                xid=0,
                commit_lsn=0,
                commit_ts=None,
                control={"kind": "snapshot_done", "backfill_id": backfill_id},
            )
            sent = producer.send(self.topic, done.encode(), partition=0)
            producer.flush()
            sent.check()
        finally:
            producer.close()
        with (
            pg.connect(s.target.conninfo(), autocommit=True) as tgt,
            pg.translated(s.target.masked()),
        ):
            tgt.execute(
                "UPDATE replicator.backfill SET reading = false WHERE id = %s",
                (backfill_id,),
            )
        return backfill_id

    def _parts(self, backfill_id: str, level: list[str]) -> list[tuple[str, int | None]]:
        """What the level's sessions read: whole tables, or a split table's key ranges."""
        with (
            pg.connect(self.s.target.conninfo(), autocommit=True) as tgt,
            pg.translated(self.s.target.masked()),
        ):
            split = tgt.execute(
                "SELECT table_name, range_no FROM replicator.backfill_ranges"
                " WHERE backfill_id = %s ORDER BY range_no",
                (backfill_id,),
            ).fetchall()
        ranges: dict[str, list[int | None]] = {t: [] for t in level}
        for t, k in split:
            if t in ranges:
                ranges[t].append(int(k))
        # Ranges interleaved across tables: a level's sessions start on different tables.
        width = max((len(v) for v in ranges.values()), default=0)
        return [
            (t, (v or [None])[k])
            for k in range(max(width, 1))
            for t, v in ranges.items()
            if k < max(len(v), 1)
        ]

    def _start(
        self,
        src: psycopg.Connection[Any],
        tgt: psycopg.Connection[Any],
        sources: dict[str, SourceTable],
    ) -> str:
        """Resume the unfinished backfill of the same tables, or start one and mark the log."""
        with pg.translated(self.s.target.masked()):
            row = tgt.execute(
                "SELECT id, truncate FROM replicator.backfill WHERE reading AND tables = %s "
                "ORDER BY started_at DESC LIMIT 1",
                (self.tables,),
            ).fetchone()
            if row is not None:
                read = tgt.execute(
                    "SELECT coalesce(sum(chunks), 0) FROM replicator.backfill_progress"
                    " WHERE backfill_id = %s",
                    (row[0],),
                ).fetchone()
                if read is not None and read[0] == 0:
                    # Nothing read yet: its marker may never have reached the log (legacy went
                    # away after the row was stored). A second is harmless: apply starts the
                    # snapshot at the first it meets, and chunks are read only after one is in.
                    self._mark(src, str(row[0]), bool(row[1]))
                return str(row[0])
            backfill_id = uuid.uuid4().hex[:12]
            with tgt.transaction():
                # A gap in the log (retention) is repaired by a backfill of every table only,
                # and one that empties the tables first: a delete in the gap is lost too.
                every = set(self.tables) == set(self.direction.source_tables)
                truncate = self.resync or (every and self._skip_deleted(tgt))
                tgt.execute(
                    "INSERT INTO replicator.backfill (id, tables, truncate) VALUES (%s, %s, %s)",
                    (backfill_id, self.tables, truncate),
                )
                for t, source in sources.items():
                    total = src.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*t.split(".", 1)))
                    ).fetchone()
                    tgt.execute(
                        "INSERT INTO replicator.backfill_progress (backfill_id, table_name, rows_total) "
                        "VALUES (%s, %s, %s)",
                        (backfill_id, source.table, total[0] if total else 0),
                    )
                    rows = total[0] if total else 0
                    parts = range_count(rows, self.chunk_rows, self.sessions)
                    ends = boundaries(src, source, rows, parts) if parts > 1 else []
                    # Range k reads (end of k-1, end of k]; its start is its first position.
                    for k, (start, end) in enumerate(
                        zip([None, *ends], [*ends, None], strict=True)
                    ):
                        if ends:
                            tgt.execute(
                                "INSERT INTO replicator.backfill_ranges (backfill_id,"
                                " table_name, range_no, last_key, end_key)"
                                " VALUES (%s, %s, %s, %s::jsonb, %s::jsonb)",
                                (backfill_id, t, k, json.dumps(start), json.dumps(end)),
                            )
        self._mark(src, backfill_id, truncate)
        return backfill_id

    def _mark(self, src: psycopg.Connection[Any], backfill_id: str, truncate: bool) -> None:
        # The marker goes through the log *before* the first chunk is read: apply commits
        # every change before it, then loads the snapshot, then replays what follows it.
        with pg.translated(self.s.source.masked()):
            emit_marker(
                src,
                {
                    "kind": "backfill_started",
                    "backfill_id": backfill_id,
                    "tables": self.tables,
                    "truncate": truncate,
                },
            )

    def _skip_deleted(self, tgt: psycopg.Connection[Any]) -> bool:
        """Move apply's stored positions that the log no longer holds (retention deleted the
        messages before apply read them: it stops there) up to where the log begins; True if
        one moved. In the transaction that records this backfill, whose marker comes later."""
        s, moved = self.s, False
        for topic in (s.topic("fwd", "changes"), self.topic):
            stored = load_offsets(tgt, topic)
            begins = beginning_offsets(s.kafka.bootstrap_servers, topic, **s.kafka.client_options())
            for p, begin in begins.items():
                at = stored.get(p, (0, 0))[0]
                if at < begin:
                    log.warning(
                        "%s partition %d: offsets %d-%d were deleted before apply read "
                        "them; this backfill re-syncs every table",
                        topic,
                        p,
                        at,
                        begin - 1,
                    )
                    tgt.execute(
                        "INSERT INTO replicator.offsets AS o (topic, partition, next_offset)"
                        " VALUES (%s, %s, %s) ON CONFLICT (topic, partition) DO UPDATE"
                        " SET next_offset = EXCLUDED.next_offset, updated_at = now()"
                        " WHERE o.next_offset < EXCLUDED.next_offset",
                        (topic, p, begin),
                    )
                    moved = True
        return moved

    def _read_table(
        self,
        backfill_id: str,
        source: SourceTable,
        path: str,
        producer: Producer,
        stop: threading.Event,
        progress: ProgressFn | None,
        part: int | None = None,
    ) -> None:
        """Read one table, or one key range ``part`` of a split table, from its stored position."""
        s = self.s
        with (
            pg.connect(s.source.conninfo(), autocommit=True) as src,
            pg.connect(s.target.conninfo(), autocommit=True) as tgt,
        ):
            with pg.translated(s.target.masked()):
                row = tgt.execute(
                    "SELECT rows_total, rows_read, last_key, done, chunks, NULL, rows_read, done"
                    " FROM replicator.backfill_progress WHERE backfill_id = %s AND table_name = %s"
                    if part is None
                    else "SELECT p.rows_total, r.rows_read, r.last_key, r.done, r.chunks, r.end_key,"
                    " p.rows_read, p.done FROM replicator.backfill_ranges r JOIN replicator.backfill_progress p"
                    " USING (backfill_id, table_name) WHERE backfill_id = %s AND table_name = %s"
                    " AND r.range_no = %s",
                    (backfill_id, source.table)
                    if part is None
                    else (backfill_id, source.table, part),
                ).fetchone()
            if row is None:
                raise StateError(f"backfill {backfill_id} has no progress row for {source.table}")
            total, read, last_key, done, chunks, end = (
                int(row[0]),
                int(row[1]),
                row[2],
                bool(row[3]),
                int(row[4]),
                row[5],
            )
            if done:  # the table's own figures: a split table is done once every range is
                if progress:
                    progress(
                        TableProgress(source.table, total, int(row[6]), bool(row[7]), path=path)
                    )
                return
            started, started_rows = time.monotonic(), read
            table_read, table_total, table_done = int(row[6]), total, False
            table_due = started  # a split table's row: written at the first chunk, then paced
            bulk = path == SQL_PATH
            binary = bulk and binary_format(source, self.direction.transform_for(source.table))
            size = self.chunk_rows
            if bulk:
                size = bulk_chunk_rows(size, source, s.backfill.max_rows_per_s > 0)
                with pg.translated(s.source.masked()):
                    prepare_reader(src)
            while not stop.is_set():
                with pg.translated(s.source.masked()):
                    if bulk:
                        got = read_copy_chunk(
                            src,
                            s.name,
                            source,
                            last_key,
                            size,
                            SNAPSHOT_MESSAGE_BYTES,
                            binary=binary,
                            upper=end,
                        )
                        messages, n, key = got.messages, got.rows, got.last_key
                    else:
                        query = chunk_query(
                            source, last_key is not None, as_text=True, upper=end is not None
                        )
                        rows = src.execute(
                            query, (*(last_key or []), *(end or []), self.chunk_rows)
                        ).fetchall()
                        messages = list(snapshot_messages(s.name, source, rows)) if rows else []
                        n = len(rows)
                        key_idx = [source.columns.index(k) for k in source.key]
                        key = [rows[-1][i] for i in key_idx] if rows else None
                self.cap.take(n, stop)
                if n:
                    sent = [producer.send(self.topic, m, partition=0) for m in messages]
                    producer.flush()
                    for one in sent:
                        one.check()
                    last_key = key
                    read += n
                    chunks += 1
                finished = n < size
                with pg.translated(s.target.masked()):
                    if part is None:
                        table_read, table_total, table_done = read, max(total, read), finished
                        tgt.execute(
                            "UPDATE replicator.backfill_progress SET rows_read = %s, last_key = %s::jsonb, chunks = %s, "
                            "done = %s, rows_total = GREATEST(rows_total, %s), updated_at = now() "
                            "WHERE backfill_id = %s AND table_name = %s",
                            (
                                read,
                                json.dumps(last_key),
                                chunks,
                                finished,
                                read,
                                backfill_id,
                                source.table,
                            ),
                        )
                    else:
                        whole = finished or time.monotonic() >= table_due
                        figures = self._range_read(
                            tgt,
                            backfill_id,
                            source.table,
                            part,
                            (read, last_key, chunks, finished),
                            whole,
                        )
                        if figures is None:  # the table's row is written less often
                            table_read += n
                        else:
                            table_read, table_total, table_done = figures
                            table_due = time.monotonic() + TABLE_PROGRESS_S
                if progress:
                    rate = (read - started_rows) / max(time.monotonic() - started, 1e-6)
                    progress(
                        TableProgress(source.table, table_total, table_read, table_done, rate, path)
                    )
                if finished:
                    return

    @staticmethod
    def _range_read(
        tgt: psycopg.Connection[Any],
        backfill_id: str,
        table: str,
        part: int,
        at: tuple[int, Any, int, bool],
        whole: bool,
    ) -> tuple[int, int, bool] | None:
        """Store a range's position and, ``whole``, the table's progress as the sum of its
        ranges, in one transaction: (the table's rows read, its total, whether every range is
        done), or None when only the range was written. Apply adds to the same table row in
        every commit and holds it until its commit is flushed: a write per chunk queued this
        reader behind that (0.9 s of a 2 M-row backfill), so the table's row is written every
        TABLE_PROGRESS_S and when a range ends; being a sum, it never misses a chunk."""
        read, last_key, chunks, finished = at
        with tgt.transaction():
            if whole:
                # The table's row first: two ranges finishing at once would each read the
                # other's range as not done (a statement's snapshot predates the other's
                # commit), and the table would stay not done. Locked first, the second waits,
                # then reads afresh.
                tgt.execute(
                    "SELECT 1 FROM replicator.backfill_progress WHERE backfill_id = %s"
                    " AND table_name = %s FOR UPDATE",
                    (backfill_id, table),
                )
            tgt.execute(
                "UPDATE replicator.backfill_ranges SET rows_read = %s, last_key = %s::jsonb,"
                " chunks = %s, done = %s WHERE backfill_id = %s AND table_name = %s"
                " AND range_no = %s",
                (read, json.dumps(last_key), chunks, finished, backfill_id, table, part),
            )
            if not whole:
                return None
            row = tgt.execute(
                "UPDATE replicator.backfill_progress p SET rows_read = r.rows_read,"
                " chunks = r.chunks, rows_total = GREATEST(p.rows_total, r.rows_read),"
                " done = NOT r.open, updated_at = now()"
                " FROM (SELECT sum(rows_read) AS rows_read, sum(chunks) AS chunks,"
                " bool_or(NOT done) AS open FROM replicator.backfill_ranges"
                " WHERE backfill_id = %s AND table_name = %s) r"
                " WHERE p.backfill_id = %s AND p.table_name = %s"
                " RETURNING p.rows_read, p.rows_total, p.done",
                (backfill_id, table, backfill_id, table),
            ).fetchone()
        if row is None:
            raise StateError(f"backfill {backfill_id} has no progress row for {table}")
        return int(row[0]), int(row[1]), bool(row[2])
