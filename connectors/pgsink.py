"""The PostgreSQL sink: coalesced target operations written with COPY + one merge per table.

Per flush and target table: the keys to delete (deletes, and deletes followed by re-inserts) go
through one ``DELETE … USING``; upserts are grouped by their column set (an update that left a
TOASTed column unchanged writes fewer columns, and those must stay untouched) and each group is
one COPY into a temporary staging table plus one ``INSERT … ON CONFLICT … DO UPDATE``; patches
(N→1 merges) are one ``UPDATE … FROM``. The caller owns the transaction.

A patch whose row is not there yet waits for it: with several partitions the row and its patch
travel apart (a patch comes from another source table, routed by its own key), and an
``UPDATE`` of a row that is not there would silently update nothing. Such a patch is parked in
``replicator.parked_patches`` in the same transaction (so it is as exactly-once as the offsets
stored beside it), and :meth:`Sink.sweep` writes parked patches whose rows have come, in the
order they were parked; a later patch of a key with parked ones waits behind them, so an older
patch never overwrites a newer one. One that waits longer than the caller's bound (its row was
deleted for good, or is never replicated) is handed back to be dead-lettered: it never holds
the stream up.

``flush(defer=True)`` sends each merge without waiting for it (libpq's pipeline mode), so the
target merges while the caller prepares the next batch; the next COPY, or :meth:`settle`, waits
for it and raises what it raised. A caller that defers settles before any other statement.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from connectors import pg
from replicator.errors import DataError, SchemaError, TargetRejected
from transforms.api import Delete, Patch, TargetOp, Truncate, Upsert

# The insert-only values of most keys: shared, never mutated (replaced when values come).
_NO_VALUES: dict[str, Any] = {}

# Patches waiting for their row, with the values as PostgreSQL's own JSON of the typed columns
# (to_jsonb of the staged row; jsonb_populate_record reads them back with the same types).
PARKED_SQL = """
CREATE SCHEMA IF NOT EXISTS replicator;
CREATE TABLE IF NOT EXISTS replicator.parked_patches (
    seq bigserial PRIMARY KEY,
    target_table text NOT NULL,
    key jsonb NOT NULL,
    vals jsonb NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS parked_patches_key ON replicator.parked_patches (target_table, key);
"""
# With nothing parked that this session knows of, how often a sweep looks for patches that
# other workers parked.
SWEEP_EVERY_S = 1.0


@dataclass(slots=True)
class _KeyState:
    deleted_first: bool = False  # an existing row must go before the values are written
    kind: str = "patch"  # "upsert" | "patch" | "delete"
    values: dict[str, Any] = field(default_factory=dict)
    insert_only: dict[str, Any] = field(default_factory=dict)


@dataclass
class TableInfo:
    name: str  # schema.table
    columns: dict[str, str]  # column -> type name (format_type)

    @property
    def ident(self) -> sql.Identifier:
        schema, _, table = self.name.partition(".")
        return sql.Identifier(schema, table)


class Batch:
    """Target operations coalesced per (table, key), in arrival order of first touch."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[Any, ...], _KeyState]] = {}
        self.key_columns: dict[str, tuple[str, ...]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def split(self) -> Iterator[tuple[str, Batch]]:
        """One single-row batch per (table, key), for writing rows one at a time."""
        for table, states in self.tables.items():
            for key, st in states.items():
                one = Batch()
                one.key_columns[table] = self.key_columns[table]
                one.tables[table] = {key: st}
                one.size = 1
                yield table, one

    def put(
        self,
        table: str,
        key_columns: tuple[str, ...],
        key: tuple[Any, ...],
        row: Mapping[str, Any],
        *,
        owned: bool = False,
    ) -> None:
        """``add(Upsert(table, key, row))`` for a row that carries its key (``key`` holds the
        values of ``key_columns`` in ``row``), without making the operation first. ``owned``:
        the row is a dict made for the batch, kept as it is (not copied)."""
        states = self.tables.get(table)
        if states is not None and self.key_columns[table] == key_columns and key not in states:
            self.size += 1
            kept = row if owned and type(row) is dict else dict(row)
            states[key] = _KeyState(False, "upsert", kept, _NO_VALUES)
            return
        self.add(Upsert(table, dict(zip(key_columns, key, strict=True)), row))

    def add(self, op: TargetOp) -> None:
        if isinstance(op, Truncate):
            raise TypeError("truncate is a barrier: flush, then call Sink.truncate")
        table, keymap = op.table, op.key
        states = self.tables.get(table)
        if states is None:
            states = self.tables[table] = {}
            self.key_columns[table] = tuple(keymap)
        known = self.key_columns[table]
        # The key columns in another order are put in order (a KeyError if not the same).
        key = tuple(keymap.values()) if tuple(keymap) == known else tuple(keymap[c] for c in known)
        st = states.get(key)
        if st is None:
            self.size += 1
            if type(op) is Upsert:  # most of the traffic: a first write of a key
                only = op.insert_only
                kept = {**only} if only else _NO_VALUES
                states[key] = _KeyState(False, "upsert", {**op.values, **keymap}, kept)
                return
            st = states[key] = _KeyState()
        if isinstance(op, Delete):
            st.kind, st.values, st.deleted_first = "delete", {}, True
        elif isinstance(op, Upsert):
            if st.kind == "delete":
                st.values = {}
            st.kind = "upsert"
            st.values.update(op.values)
            st.values.update(op.key)
            if op.insert_only:  # a new dict: a key's may be the shared empty one
                st.insert_only = {**st.insert_only, **op.insert_only}
        elif isinstance(op, Patch):
            if st.kind == "delete":
                return  # the row is gone: nothing to patch
            st.values.update(op.values)
            if st.kind != "upsert":
                st.kind = "patch"
                st.values.update(op.key)


# Types psycopg dumps as they are; a row of only these needs no per-value look at _adapt.
_SCALARS = frozenset(
    {str, int, float, bool, type(None), Decimal, datetime, date, time, timedelta, UUID, bytes}
)


def _picker(columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """A row mapping's values in ``columns`` order, as a tuple (at C speed)."""
    if len(columns) == 1:
        (only,) = columns
        return lambda row: (row[only],)
    return operator.itemgetter(*columns)


def _adapt(v: Any) -> Any:
    if isinstance(v, dict | list):
        return Jsonb(v)
    return v


# Unique in the process: a second Sink on a session must not reuse the first's stage unemptied.
_STAGE_IDS = itertools.count(1)


class Sink:
    """Writes batches into one target database over the caller's connection."""

    def __init__(self, conn: psycopg.Connection[Any], where: str = "the target") -> None:
        self.conn = conn
        self.where = where  # names the database in a deferred statement's error
        self._tables: dict[str, TableInfo] = {}
        self._stages: dict[tuple[str, tuple[str, ...]], str] = {}
        # Stages written since the session's transaction last committed (see _stage).
        self._filled: set[str] = set()
        self._sql: dict[tuple[Any, ...], bytes] = {}  # statements by what they depend on
        self._defer = False
        # The pipeline holding merges sent and not yet waited for.
        self._pending: contextlib.ExitStack | None = None
        self._parked_table = False  # replicator.parked_patches is known to exist
        self.parked: set[str] = set()  # target tables with patches parked, as last seen
        self._touched: set[str] = set()  # target tables written since the last sweep
        self._swept = -SWEEP_EVERY_S

    def settle(self) -> None:
        """Wait for the merges a deferred flush sent; raises (translated) what they raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with pg.translated(self.where):
                pending.close()

    def hold(self) -> None:
        """Put the session in pipeline mode, if a deferred flush has not: the caller's next
        statements are sent behind any merge still running, and :meth:`settle` waits for them
        all in one round trip (their cursors have their results after it)."""
        if self._pending is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.conn.pipeline())
            self._pending = stack

    def _merge(self, stmt: sql.Composed | bytes) -> None:
        if self._defer:
            self.hold()
        self.conn.execute(stmt)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], sql.Composed]) -> bytes:
        """A statement composed once per session and shape (a stage's name stands for its
        table and columns): composing five tables' statements anew was a tenth of a small
        batch's client time in apply."""
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = build().as_bytes(self.conn)
        return found

    def table(self, name: str) -> TableInfo:
        info = self._tables.get(name)
        if info is None:
            self.settle()
            with pg.translated(self.where):  # callers outside a flush too (the bulk path)
                rows = self.conn.execute(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                    "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
                    "ORDER BY a.attnum",
                    (_quoted(name),),
                ).fetchall()
            info = TableInfo(name, {str(n): str(t) for n, t in rows})
            self._tables[name] = info
        return info

    def forget_tables(self) -> None:
        """Drop cached catalog facts (after a reconnect or a schema change)."""
        self._tables.clear()
        self._stages.clear()
        self._sql.clear()

    def _stage(self, info: TableInfo, columns: tuple[str, ...]) -> str:
        """An empty temporary table shaped like ``columns`` of the target table.

        Created on every use if missing: a rolled-back (sub)transaction takes a table created
        inside it along, so a cache of names alone would go stale. Emptied only if written
        since the last commit (:meth:`committed`; ON COMMIT DELETE ROWS empties it then): a
        TRUNCATE is a new file and catalog row. The statements go out in pipeline mode, behind
        any merge still running: the COPY that follows waits for them all in one round trip.
        """
        key = (info.name, columns)
        name = self._stages.get(key)
        if name is None:  # never a name used before: forget_tables leaves the old ones behind
            name = self._stages[key] = f"_stage_{next(_STAGE_IDS)}"
        self.hold()
        create = "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
        ident = sql.Identifier(name)
        cols = (sql.Identifier(c) for c in columns)  # joined only when composed
        self.conn.execute(
            self._cached(
                ("create", name),
                lambda: sql.SQL(create).format(ident, sql.SQL(", ").join(cols), info.ident),
            )
        )
        if name in self._filled:
            truncate = self._cached(
                ("truncate", name), lambda: sql.SQL("TRUNCATE {}").format(ident)
            )
            self.conn.execute(truncate)
        self._filled.add(name)
        return name

    def committed(self) -> None:
        """The caller's transaction on this session committed: every stage is empty again.
        Only a caller that knows it committed says so; without it stages are emptied on use."""
        self._filled.clear()

    def _copy(self, stage: str, columns: tuple[str, ...], rows: Iterable[Sequence[Any]]) -> None:
        stmt = self._cached(
            ("copy", stage, columns),
            lambda: sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(stage), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            ),
        )
        self.settle()  # COPY cannot run in pipeline mode
        with self.conn.cursor().copy(stmt) as copy:
            for row in rows:
                if _SCALARS.issuperset(map(type, row)):  # most rows: nothing to wrap
                    copy.write_row(row)
                else:
                    copy.write_row([_adapt(v) for v in row])

    def flush(self, batch: Batch, *, defer: bool = False) -> dict[str, int]:
        """Write the batch; returns rows touched per target table. ``defer``: return without
        waiting for the last merge (see the module's doc)."""
        self._defer = defer
        try:
            return self._flush(batch)
        finally:
            self._defer = False

    def _flush(self, batch: Batch) -> dict[str, int]:
        touched: dict[str, int] = {}
        # Deletes of every table first, so a unique value freed in this batch can be reused.
        for table, states in batch.tables.items():
            info = self.table(table)
            keys = batch.key_columns[table]
            doomed = [k for k, st in states.items() if st.deleted_first]
            if doomed:
                self._delete(info, keys, doomed)
                touched[table] = touched.get(table, 0) + len(doomed)
        for table, states in batch.tables.items():
            info = self.table(table)
            keys = batch.key_columns[table]
            groups: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[Mapping[str, Any]]] = {}
            # Rows group by the set of columns they carry; the sorted form of a column order
            # seen before is looked up, not sorted again (most rows of a table share one).
            shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
            for st in states.values():
                if st.kind == "delete":
                    continue
                only: tuple[str, ...] = ()
                row = st.values
                if st.insert_only:
                    only = tuple(sorted(c for c in st.insert_only if c not in st.values))
                    if only:
                        row = {**st.insert_only, **st.values}
                order = tuple(st.values)
                shape = shapes.get(order)
                if shape is None:
                    shape = shapes[order] = tuple(sorted(order))
                groups.setdefault((st.kind, shape, only), []).append(row)
            for (kind, set_cols, only), rows in groups.items():
                cols = tuple(sorted(set_cols + only))
                unknown = [c for c in cols if c not in info.columns]
                if unknown:
                    raise SchemaError(
                        f"target table {table} has no column(s) {', '.join(unknown)}",
                        hint="run `replicator check` to compare the mapping with the target",
                    )
                self._touched.add(table)
                if kind == "upsert":
                    self._upsert(info, keys, cols, rows, frozenset(only))
                else:
                    self._patch(info, keys, cols, rows)
                touched[table] = touched.get(table, 0) + len(rows)
        return touched

    def _delete(
        self, info: TableInfo, keys: tuple[str, ...], doomed: list[tuple[Any, ...]]
    ) -> None:
        stage = self._stage(info, keys)
        self._copy(stage, keys, doomed)
        self._merge(
            self._cached(
                ("delete", stage),
                lambda: sql.SQL("DELETE FROM {} t USING {} s WHERE {}").format(
                    info.ident, sql.Identifier(stage), _join_eq(keys)
                ),
            )
        )

    def _upsert(
        self,
        info: TableInfo,
        keys: tuple[str, ...],
        cols: tuple[str, ...],
        rows: list[Mapping[str, Any]],
        insert_only: frozenset[str] = frozenset(),
    ) -> None:
        stage = self._stage(info, cols)
        self._copy(stage, cols, map(_picker(cols), rows))

        def build() -> sql.Composed:
            rest = [c for c in cols if c not in keys and c not in insert_only]
            action = (
                sql.SQL("DO UPDATE SET {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                        for c in rest
                    )
                )
                if rest
                else sql.SQL("DO NOTHING")
            )
            col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                info.ident,
                col_list,
                col_list,
                sql.Identifier(stage),
                sql.SQL(", ").join(sql.Identifier(k) for k in keys),
                action,
            )

        self._merge(self._cached(("upsert", stage, keys, insert_only), build))

    def _patch(
        self,
        info: TableInfo,
        keys: tuple[str, ...],
        cols: tuple[str, ...],
        rows: list[Mapping[str, Any]],
    ) -> None:
        rest = [c for c in cols if c not in keys]
        if not rest:
            return
        self._ensure_parked()
        stage = self._stage(info, cols)
        self._copy(stage, cols, map(_picker(cols), rows))
        key_json = _key_json(keys, "s")
        waiting = sql.SQL(
            "EXISTS (SELECT 1 FROM replicator.parked_patches p "
            "WHERE p.target_table = {} AND p.key = {})"
        ).format(sql.Literal(info.name), key_json)
        # One statement, one snapshot: each staged patch is either written or parked. Two
        # statements would each judge "waiting" at their own snapshot, and a sweep committing
        # between them would leave a patch neither written nor parked (lost).
        self._merge(
            sql.SQL(
                "WITH upd AS (UPDATE {t} t SET {sets} FROM {stage} s WHERE {join} AND NOT {waiting}"
                " RETURNING {ret}) "
                "INSERT INTO replicator.parked_patches (target_table, key, vals) "
                "SELECT {name}, {key_json}, to_jsonb(s) - {keys}::text[] FROM {stage} s "
                "WHERE NOT EXISTS (SELECT 1 FROM upd u WHERE {ujoin})"
            ).format(
                t=info.ident,
                sets=sql.SQL(", ").join(
                    sql.SQL("{} = s.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in rest
                ),
                stage=sql.Identifier(stage),
                join=_join_eq(keys),
                waiting=waiting,
                ret=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in keys),
                name=sql.Literal(info.name),
                key_json=key_json,
                keys=sql.Literal(list(keys)),
                ujoin=sql.SQL(" AND ").join(
                    sql.SQL("u.{} = s.{}").format(sql.Identifier(k), sql.Identifier(k))
                    for k in keys
                ),
            )
        )
        self.parked.add(info.name)

    def _ensure_parked(self) -> None:
        """Apply sessions have the table (replicator.state); other callers (a replay, tests)
        get it here. Looked up first: CREATE INDEX IF NOT EXISTS would lock the table against
        the workers parking patches."""
        if not self._parked_table:
            self.settle()
            with pg.translated(self.where):
                if not self._has_parked_table():
                    self.conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext('replicator.parked_patches'))"
                    )
                    self.conn.execute(PARKED_SQL)
            self._parked_table = True

    def _has_parked_table(self) -> bool:
        found = self.conn.execute("SELECT to_regclass('replicator.parked_patches')").fetchone()
        return found is not None and found[0] is not None

    def sweep(self, expire_after_s: float, now: float) -> list[DataError]:
        """Write the parked patches whose rows have come (see the module's doc), in the
        caller's transaction; returns those that waited over ``expire_after_s``, removed, to
        be dead-lettered. ``now``: a monotonic clock, for how often to look."""
        touched, self._touched = self._touched, set()
        if now - self._swept < SWEEP_EVERY_S and not self.parked & touched:
            return []  # no row of a table with patches waiting came (that this session knows)
        self._swept = now
        self.settle()
        with pg.translated(self.where):
            if not self._parked_table:
                if not self._has_parked_table():
                    return []  # no patch ever waited on this database
                self._parked_table = True
            shapes = self.conn.execute(
                "SELECT target_table, array_agg(DISTINCT k), array_agg(DISTINCT v) "
                "FROM replicator.parked_patches, jsonb_object_keys(key) k, jsonb_object_keys(vals) v "
                "GROUP BY target_table"
            ).fetchall()
            self.parked = {str(t) for t, _, _ in shapes}
        for table, keys, cols in shapes:
            info = self.table(str(table))
            try:
                with pg.translated(self.where), self.conn.transaction():
                    # One sweeper per table at a time: two would wait on each other's rows.
                    got = self.conn.execute(
                        "SELECT pg_try_advisory_xact_lock(hashtext('replicator.parked:' || %s))",
                        (table,),
                    ).fetchone()
                    if got is not None and got[0]:
                        self._sweep_table(info, tuple(sorted(keys)), list(cols))
            except TargetRejected:
                continue  # a value the target refuses: it waits, and expires into the DLQ
        with pg.translated(self.where):
            expired = self.conn.execute(
                "DELETE FROM replicator.parked_patches "
                "WHERE parked_at < clock_timestamp() - make_interval(secs => %s) "
                "RETURNING target_table, key, vals, "
                "round(extract(epoch FROM clock_timestamp() - parked_at))::int",
                (expire_after_s,),
            ).fetchall()
        return [
            DataError(
                f"a patch of {table} waited {waited} s for its row, which never came "
                f"(deleted on the source, or not replicated); values not written: {vals}",
                table=str(table),
                key=dict(key),
                hint="if the row exists now, re-sync the source table whose rows patch it "
                "(`replicator backfill --table <table>`); else `replicator dlq purge` the letter",
            )
            for table, key, vals, waited in expired
        ]

    def _sweep_table(self, info: TableInfo, keys: tuple[str, ...], cols: list[str]) -> None:
        unknown = [c for c in (*keys, *cols) if c not in info.columns]
        if unknown:
            raise SchemaError(
                f"parked patches of {info.name} name column(s) it lacks: {', '.join(unknown)}",
                hint="run `replicator check` to compare the mapping with the target",
            )
        typed = sql.SQL("(jsonb_populate_record(NULL::{}, {}.{})).{}")

        def field(src: str, part: str, col: str) -> sql.Composable:
            return typed.format(
                info.ident, sql.Identifier(src), sql.Identifier(part), sql.Identifier(col)
            )

        def match(src: str) -> sql.Composable:
            return sql.SQL(" AND ").join(
                sql.SQL("t.{} = {}").format(sql.Identifier(k), field(src, "key", k)) for k in keys
            )

        # The latest parked value of each column per key, written in one UPDATE.
        self.conn.execute(
            sql.SQL(
                "WITH hit AS (DELETE FROM replicator.parked_patches p USING {t} t "
                "WHERE p.target_table = {name} AND {hit} RETURNING p.seq, p.key, p.vals), "
                "latest AS (SELECT DISTINCT ON (h.key, e.col) h.key, e.col, e.val "
                "FROM hit h, jsonb_each(h.vals) e(col, val) ORDER BY h.key, e.col, h.seq DESC), "
                "m AS (SELECT key, jsonb_object_agg(col, val) AS vals FROM latest GROUP BY key) "
                "UPDATE {t} t SET {sets} FROM m WHERE {found}"
            ).format(
                t=info.ident,
                name=sql.Literal(info.name),
                hit=match("p"),
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = CASE WHEN m.vals ? {n} THEN {v} ELSE t.{c} END").format(
                        c=sql.Identifier(c), n=sql.Literal(c), v=field("m", "vals", c)
                    )
                    for c in cols
                ),
                found=match("m"),
            )
        )

    def truncate(self, tables: list[str]) -> None:
        self.settle()
        self.conn.execute(
            sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(self.table(t).ident for t in tables))
        )


def _join_eq(keys: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("t.{} = s.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in keys
    )


def _key_json(keys: tuple[str, ...], alias: str) -> sql.Composable:
    """A row's key as the JSON object parked patches are keyed by."""
    return sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(
            sql.SQL("{}, {}.{}").format(sql.Literal(k), sql.Identifier(alias), sql.Identifier(k))
            for k in keys
        )
    )


def _quoted(name: str) -> str:
    schema, _, table = name.partition(".")
    return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'
