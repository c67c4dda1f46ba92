"""Apply's bulk path: a COPY chunk of the snapshot topic → staging table → ``INSERT … SELECT``.

A chunk (connectors.copy_chunk) is PostgreSQL's COPY output (binary, or text) of a key range of
one source table. It is copied as it is into a temporary staging table shaped like the source,
and every target of the table's mapping is written with one statement over it, whose expressions
are the compiled transform (transforms.compile): an ``INSERT … SELECT … ON CONFLICT`` per target
(a plain ``INSERT`` while the target was empty when this worker first wrote it, falling back to
the upsert on a duplicate key), an ``UPDATE … FROM`` per N→1 patch. A chunk whose one target
takes its columns as they are (``identity:``, a rename) skips the staging table while that
target was empty: COPY writes it directly. No row passes through Python, except:

- rows the SQL form cannot vouch for (the compiled reject expression names why): read back as
  text and handed to the Python transform, which maps or dead-letters them as for any change;
- key columns whose converter has no SQL twin (a uuid5 id): computed in Python from the key
  alone and joined in;
- a chunk the target refuses (a constraint): rolled back to its savepoint and sent down the
  Python path whole, where the worker's isolation dead-letters the refused row alone;
- a chunk of a table whose transform does not compile (or a mapping that changed since the
  chunk was read): the Python path, row by row.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors import pg
from connectors.copy_chunk import BINARY_TEXT_OIDS, CopyChunk, decode_copy_chunk
from connectors.envelope import Change, Envelope
from connectors.pgsink import Batch, Sink
from replicator.apply.direct_copy import cast_types, direct_columns
from replicator.errors import DataError, MalformedMessage, ReplicatorError, SchemaError
from transforms.api import Direction
from transforms.compile import (
    ENUM,
    CompiledTable,
    CompiledTarget,
    DerivedKey,
    compile_for_load,
    source_categories,
)
from transforms.sql_twins import INT, TEXT, UNKNOWN, UUID, category, ident
from transforms.sqltext import qualified

log = logging.getLogger(__name__)

# Handles one change the Python way (the worker's _change); writes a dead letter (its _dead).
ChangeFn = Callable[[Envelope, Change, int, int, Batch], None]
DeadFn = Callable[[ReplicatorError, int, int, "int | None", Any], None]
# source table, rows loaded by SQL, rows written per target table
CountFn = Callable[[str, int, dict[str, int]], None]

_DERIVED_TYPES = {TEXT: "text", UUID: "uuid", INT: "bigint"}


_Result = tuple[dict[str, int], list[tuple[str | None, ...]]]


@dataclass(frozen=True)
class _InFlight:
    future: Future[_Result]
    chunk: CopyChunk
    partition: int
    offset: int
    writes: frozenset[str]  # target tables, patched ones included

    def conflicts(self, table: str, writes: frozenset[str]) -> bool:
        """Whether a chunk of ``table`` must wait for this one: another source table's chunk
        writing (or patching) a table this one writes or patches — an N→1 patch then finds
        the rows it patches committed. Other chunks load side by side, a patch among them;
        foreign keys are not checked by apply."""
        if self.chunk.relation.qualname == table:
            return False  # one table's chunks hold disjoint key ranges
        return bool(self.writes & writes)


@dataclass(frozen=True)
class _Plan:
    compiled: CompiledTable
    stage: str
    stage_columns: tuple[tuple[str, str], ...]  # (column, staged type)
    derived: str | None  # the derived keys' staging table
    key_types: tuple[str, ...]  # staged types of the source key columns derived keys read
    # Target table -> column -> type, read on apply's session when planning (the sessions
    # loading chunks at once must not share it).
    target_types: dict[str, dict[str, str]]
    # What a staged value is cast to per target column: its type, a domain as its base type,
    # without a length (direct_copy.cast_types: the column then refuses a value too long).
    cast_types: dict[str, dict[str, str]]
    # The one target's columns, in the chunk's column order, when every one is a source
    # column as it is, of the same type: the chunk can be COPYed into the target directly.
    direct: tuple[str, ...] | None = None


class BulkLoader:
    """Loads COPY chunks. With ``connections`` > 1, chunks of one table are loaded at once on
    that many sessions of their own, each committing its chunk: snapshot chunks are idempotent
    (a chunk loaded twice upserts the same rows), so what matters is only that apply stores a
    Kafka offset past a chunk after the chunk is committed (:meth:`join`, called before every
    commit) and that a chunk sees the rows it depends on: chunks of another table wait for
    those in flight, and a chunk that follows uncommitted writes of apply's own transaction is
    loaded in that transaction."""

    def __init__(
        self,
        direction: Direction,
        sink: Sink,
        where: str,
        *,
        flush: Callable[[Batch], None],
        change: ChangeFn,
        dead: DeadFn,
        count: CountFn,
        connect: Callable[[], psycopg.Connection[Any]],
        connections: int = 1,
    ) -> None:
        self.direction = direction
        self.sink = sink
        self.where = where
        self._flush, self._change, self._dead, self._count = flush, change, dead, count
        self._connect = connect
        # Apply's own transaction holds writes of this loader's (a chunk loaded in it, rows
        # handed to the Python path) that a chunk on another session would not see.
        self._main_dirty = False
        self._plans: dict[tuple[Any, ...], _Plan | str] = {}
        # Target table -> it was empty when this loader first wrote it (try plain inserts).
        self._fresh: dict[str, bool] = {}
        self._no_direct: set[str] = set()  # target tables COPY turned out unable to write
        self._pool = ThreadPoolExecutor(connections, "bulk") if connections > 1 else None
        self._limit = connections
        self._local = threading.local()
        self._sessions: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._inflight: deque[_InFlight] = deque()

    def load(self, partition: int, offset: int, value: bytes, batch: Batch) -> None:
        try:
            chunk = decode_copy_chunk(value)
        except MalformedMessage as exc:
            self._dead(exc, partition, offset, None, value[:10_000].decode("utf-8", "replace"))
            return
        with pg.translated(self.where):  # planning reads the target's catalog
            plan = self._plan(chunk)
        if isinstance(plan, str):
            self.join(batch)
            self._python(chunk, partition, offset, batch)
            return
        table = chunk.relation.qualname
        writes = frozenset(t.table for t in plan.compiled.targets)
        if any(job.conflicts(table, writes) for job in self._inflight):
            self.join(batch)
        if self._pool is not None and not len(batch) and not self._main_dirty:
            # One chunk queued behind each session's: no session waits for apply's next poll.
            while len(self._inflight) >= 2 * self._limit:
                self._finish(self._inflight.popleft(), batch)
            future = self._pool.submit(self._on_own_session, plan, chunk)
            self._inflight.append(_InFlight(future, chunk, partition, offset, writes))
            return
        self.join(batch)
        self._flush(batch)  # rows before this chunk are written before it
        self._main_dirty = True
        self.sink.settle()
        conn = self.sink.conn
        try:
            with pg.translated(self.where), conn.transaction():
                result = self._run(conn, plan, chunk)
        except ReplicatorError as exc:
            self._refused(exc, chunk, partition, offset, batch)
            return
        self._loaded(result, chunk, partition, offset, batch)

    def join(self, batch: Batch) -> None:
        """Wait for the chunks in flight; what they leave to Python goes into ``batch``."""
        while self._inflight:
            self._finish(self._inflight.popleft(), batch)

    def settle(self, batch: Batch, *, everything: bool) -> dict[int, int]:
        """Before apply commits: finish the chunks done so far (all of them, ``everything``);
        returns partition -> offset of the first chunk still in flight, past which no offset
        may be stored yet."""
        if everything:
            self.join(batch)
        while self._inflight and self._inflight[0].future.done():
            self._finish(self._inflight.popleft(), batch)
        held: dict[int, int] = {}
        for job in self._inflight:
            held.setdefault(job.partition, job.offset)
        return held

    def committed(self) -> None:
        """Apply's transaction committed: chunks may go to other sessions again."""
        self._main_dirty = False

    def discard(self) -> None:
        """Wait for the chunks in flight and drop their outcome (a new assignment reads them
        again from the stored offsets: loading a chunk twice is harmless)."""
        self._main_dirty = False
        while self._inflight:
            with contextlib.suppress(Exception):
                self._inflight.popleft().future.result()

    def close(self) -> None:
        self.discard()
        if self._pool is not None:
            self._pool.shutdown()
        with self._lock:
            for conn in self._sessions:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._sessions = []

    def _on_own_session(self, plan: _Plan, chunk: CopyChunk) -> _Result:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = self._connect()
            with self._lock:
                self._sessions.append(conn)
            # Safe without waiting for the flush: apply's own commit of the offset past this
            # chunk comes later in the WAL and is synchronous, so it flushes this one too.
            with pg.translated(self.where):
                conn.execute("SET synchronous_commit = off")
                conn.commit()
        try:
            with pg.translated(self.where), conn.transaction():
                return self._run(conn, plan, chunk)
        except ReplicatorError as exc:
            if exc.retriable:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            raise

    def _finish(self, job: _InFlight, batch: Batch) -> None:
        try:
            result = job.future.result()
        except ReplicatorError as exc:
            self._refused(exc, job.chunk, job.partition, job.offset, batch)
            return
        self._loaded(result, job.chunk, job.partition, job.offset, batch)

    def _loaded(
        self, result: _Result, chunk: CopyChunk, partition: int, offset: int, batch: Batch
    ) -> None:
        touched, flagged = result
        self._count(chunk.relation.qualname, chunk.rows - len(flagged), touched)
        if flagged:
            self._python(chunk, partition, offset, batch, rows=flagged)

    def _refused(
        self, exc: ReplicatorError, chunk: CopyChunk, partition: int, offset: int, batch: Batch
    ) -> None:
        # Two rows of the chunk mapped to one target key: the Python path coalesces them.
        repeated = isinstance(exc.__cause__, psycopg.errors.CardinalityViolation)
        if not isinstance(exc, DataError) and not repeated:
            raise exc
        # The target refused a row of the chunk (a constraint the transform does not know):
        # the Python path, where the worker isolates the refused row.
        log.warning(
            "target refused a bulk chunk of %s (%s); loading it row by row",
            chunk.relation.qualname,
            exc.message,
        )
        self._python(chunk, partition, offset, batch)

    # -- the Python path -------------------------------------------------------------------

    def _python(
        self,
        chunk: CopyChunk,
        partition: int,
        offset: int,
        batch: Batch,
        rows: Sequence[Sequence[str | None]] | None = None,
    ) -> None:
        try:
            env = chunk.envelope(rows)
        except MalformedMessage as exc:  # a binary chunk the staging COPY refused too
            self._dead(exc, partition, offset, None, chunk.data[:10_000].hex())
            return
        self._main_dirty = True  # the rows land in apply's transaction
        for change in env.changes:
            self._change(env, change, partition, offset, batch)

    # -- planning --------------------------------------------------------------------------

    def _plan(self, chunk: CopyChunk) -> _Plan | str:
        r = chunk.relation
        cache_key = (r.qualname, r.columns, chunk.types, chunk.enums, r.key_columns, chunk.binary)
        found = self._plans.get(cache_key)
        if found is None:
            found = self._plans[cache_key] = self._make_plan(chunk, len(self._plans))
            if isinstance(found, str):
                log.info("bulk chunks of %s go the Python way: %s", r.qualname, found)
        return found

    def _make_plan(self, chunk: CopyChunk, n: int) -> _Plan | str:
        r = chunk.relation
        transform = self.direction.transform_for(r.qualname)
        if transform is None:
            return "no transform"
        cats = source_categories(r.columns, chunk.types, chunk.enums)
        compiled = compile_for_load(transform, cats, r.key_columns)
        if not isinstance(compiled, CompiledTable):
            return compiled.reason
        if chunk.binary and (
            transform.copies_rows
            or any(
                oid not in BINARY_TEXT_OIDS and cats[c] != ENUM
                for c, oid in zip(r.columns, r.type_oids, strict=True)
            )
        ):
            # Staged as text, such columns would need their text: binary has none.
            return "a binary chunk of a table whose columns are staged as text"
        staged = tuple(
            (c, "text" if transform.copies_rows or cats[c] in (ENUM, UNKNOWN) else t)
            for c, t in zip(r.columns, chunk.types, strict=True)
        )
        types = dict(staged)
        key_types = tuple(
            types[s] for s in dict.fromkeys(s for d in compiled.derived for s in d.sources)
        )
        target_types = {t.table: dict(self.sink.table(t.table).columns) for t in compiled.targets}
        self.sink.settle()
        casts = {t.table: cast_types(self.sink.conn, t.table) for t in compiled.targets}
        for t in compiled.targets:
            written = t.key + t.columns + t.insert_only
            missing = [n for n, _ in written if n not in target_types[t.table]]
            if missing:
                raise SchemaError(
                    f"target table {t.table} has no column(s) {', '.join(missing)}",
                    hint="run `replicator check` to compare the mapping with the target",
                )
        return _Plan(
            compiled,
            f"_bulk_{n}",
            staged,
            f"_bulk_{n}_keys" if compiled.derived else None,
            key_types,
            target_types,
            casts,
            direct_columns(
                self.sink.conn, compiled, chunk, target_types, as_text=transform.copies_rows
            ),
        )

    # -- loading ---------------------------------------------------------------------------

    def _run(self, conn: psycopg.Connection[Any], plan: _Plan, chunk: CopyChunk) -> _Result:
        if plan.direct is not None:  # one target, taking the chunk's columns as they are
            done = self._copy_direct(conn, plan, plan.direct, chunk)
            if done is not None:
                return done
        stage = sql.Identifier(plan.stage)
        cols = ", ".join(f"{ident(c)} {t}" for c, t in plan.stage_columns)
        # Created on every use if missing: a rolled-back transaction takes it along.
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {ident(plan.stage)} ({cols})")
        conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in plan.stage_columns)
        how = "FORMAT binary" if chunk.binary else "ENCODING 'UTF8'"
        with (
            conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (" + how + ")").format(stage, names)) as cp,
        ):
            cp.write(chunk.copy_data())
        source = f"{ident(plan.stage)} s"
        if plan.derived is not None:
            source = self._derive(conn, plan)
        c = plan.compiled
        touched: dict[str, int] = {}
        vouched: int | None = None  # rows the SQL form took, when a statement counted them
        for target in c.targets:
            n, counted = self._write(conn, target, plan.cast_types[target.table], c, source)
            touched[target.table] = touched.get(target.table, 0) + n
            if counted:
                vouched = n  # one row written per row the reject expression let through
        flagged: list[tuple[str | None, ...]] = []
        if c.checks and vouched != chunk.rows:
            as_text = ", ".join(f"s.{ident(col)}::text" for col, _ in plan.stage_columns)
            flagged = conn.execute(
                f"SELECT {as_text} FROM {source} WHERE ({c.reject_sql}) IS NOT NULL"
            ).fetchall()
        return touched, flagged

    def _copy_direct(
        self, conn: psycopg.Connection[Any], plan: _Plan, names: tuple[str, ...], chunk: CopyChunk
    ) -> _Result | None:
        """The chunk COPYed straight into its one target while that was empty when this
        loader first wrote it: staging it and ``INSERT … SELECT`` would write every row twice
        (half the target's work in an identity backfill). A key already there (a chunk sent
        twice) takes the savepoint back, and the staged upsert loads the chunk instead."""
        (t,) = plan.compiled.targets
        if t.table in self._no_direct or not self._is_fresh(conn, t.table):
            return None
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        how = "FORMAT binary" if chunk.binary else "ENCODING 'UTF8'"
        target = sql.Identifier(*t.table.split(".", 1))
        try:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    sql.SQL("COPY {} ({}) FROM STDIN (" + how + ")").format(target, cols)
                ) as cp,
            ):
                cp.write(chunk.copy_data())
        except psycopg.errors.UniqueViolation:
            self._fresh[t.table] = False
            return None
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.WrongObjectType) as exc:
            # Something planning did not foresee that COPY cannot write (INSERT can): the
            # staged path from now on (the savepoint took the attempt back).
            log.info("%s: no direct COPY (%s)", t.table, str(exc).splitlines()[0])
            self._no_direct.add(t.table)
            return None
        return {t.table: chunk.rows}, []

    def _is_fresh(self, conn: psycopg.Connection[Any], table: str) -> bool:
        """Whether ``table`` was empty when this loader first wrote it (and no key of a
        chunk has met a row there since)."""
        fresh = self._fresh.get(table)
        if fresh is None:
            empty = conn.execute(f"SELECT NOT EXISTS (SELECT FROM {qualified(table)})").fetchone()
            fresh = self._fresh[table] = empty == (True,)
        return fresh

    def _derive(self, conn: psycopg.Connection[Any], plan: _Plan) -> str:
        """Key columns computed in Python from the source key (no SQL twin), joined in."""
        assert plan.derived is not None
        c = plan.compiled
        needed = tuple(dict.fromkeys(s for d in c.derived for s in d.sources))
        # Each key as the converter's Python value and as its text, which goes back as it is;
        # converters that read the keys' text alike get that text alone (no Python object per
        # value: a uuid object and its printing were most of a uuid5 id's cost).
        texts = ", ".join(f"{ident(k)}::text" for k in needed)
        n = len(needed)
        if all(d.key_text for d in c.derived) and all(
            category(t) in (UUID, INT, TEXT) for t in plan.key_types
        ):
            keys = [(*k, *k) for k in conn.execute(f"SELECT {texts} FROM {ident(plan.stage)}")]
        else:
            typed = ", ".join(ident(k) for k in needed)
            keys = conn.execute(f"SELECT {typed}, {texts} FROM {ident(plan.stage)}").fetchall()
        cols = [f"__src_{i} {t}" for i, t in enumerate(plan.key_types)]
        cols += [f"{ident(d.alias)} {_DERIVED_TYPES.get(d.type, 'text')}" for d in c.derived]
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {ident(plan.derived)} ({', '.join(cols)})")
        conn.execute(f"TRUNCATE {ident(plan.derived)}")
        # Column by column (the key texts, then each derived value), joined into COPY lines.
        columns = [[_copy_text(k[i]) for k in keys] for i in range(n, 2 * n)]
        for d in c.derived:
            at = [needed.index(x) for x in d.sources]
            columns.append([_copy_text(v) for v in _derive_all(d, at, keys)])
        lines = ["\t".join(row) for row in zip(*columns, strict=True)]
        with conn.cursor() as cur, cur.copy(f"COPY {ident(plan.derived)} FROM STDIN") as cp:
            cp.write("\n".join(lines).encode() + b"\n" if lines else b"")
        on = " AND ".join(f"s.{ident(k)} = d.__src_{i}" for i, k in enumerate(needed))
        return f"{ident(plan.stage)} s LEFT JOIN {ident(plan.derived)} d ON {on}"

    def _write(
        self,
        conn: psycopg.Connection[Any],
        t: CompiledTarget,
        types: dict[str, str],
        c: CompiledTable,
        source: str,
    ) -> tuple[int, bool]:
        """Rows written, and whether that is one per row the reject expression let through."""
        where = f"({c.reject_sql}) IS NULL" + (f" AND ({t.when})" if t.when else "")
        table = qualified(t.table)
        if t.patch:
            sets = [n for n, _ in t.columns if n not in dict(t.key)]
            if not sets:
                return 0, False
            inner = ", ".join(f"({e.sql})::{types[n]} AS {ident(n)}" for n, e in t.key + t.columns)
            assign = ", ".join(f"{ident(n)} = p.{ident(n)}" for n in sets)
            match = " AND ".join(f"x.{ident(n)} = p.{ident(n)}" for n, _ in t.key)
            n = conn.execute(
                f"UPDATE {table} x SET {assign} FROM (SELECT {inner} FROM {source}"
                f" WHERE {where}) p WHERE {match}"
            ).rowcount
            return n, False
        written = t.key + t.columns + t.insert_only
        names = ", ".join(ident(n) for n, _ in written)
        values = ", ".join(f"({e.sql})::{types[n]}" for n, e in written)
        insert = f"INSERT INTO {table} ({names}) SELECT {values} FROM {source} WHERE {where}"
        if self._is_fresh(conn, t.table):
            # Nothing was in the table when this worker began writing it: a plain insert
            # (a third cheaper than the upsert) unless a key repeats (a chunk sent twice).
            try:
                with conn.transaction():
                    return conn.execute(insert).rowcount, t.when is None
            except psycopg.errors.UniqueViolation:
                self._fresh[t.table] = False
        keys = ", ".join(ident(n) for n, _ in t.key)
        update = ", ".join(f"{ident(n)} = EXCLUDED.{ident(n)}" for n, _ in t.columns)
        action = f"DO UPDATE SET {update}" if update else "DO NOTHING"
        n = conn.execute(f"{insert} ON CONFLICT ({keys}) {action}").rowcount
        return n, t.when is None and bool(update)


_REFUSED = (ValueError, TypeError, KeyError, DataError)


def _derive_all(d: DerivedKey, at: list[int], keys: Sequence[Sequence[Any]]) -> list[Any]:
    """``d`` of every key row (the hot loop of a table with a uuid5 id: one call per row)."""
    f = d.convert
    try:
        if len(at) == 1:
            (i,) = at
            return [f(k[i]) for k in keys]
        return [f(*[k[i] for i in at]) for k in keys]
    except _REFUSED:
        return [_derived(f, at, k) for k in keys]  # row by row: only the refused are NULL


def _derived(f: Callable[..., Any], at: list[int], key: Sequence[Any]) -> Any:
    try:
        return f(*[key[i] for i in at])
    except _REFUSED:
        return None  # the key's NULL check sends the row the Python way, which says why


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


_SPECIAL = re.compile(r"[\\\t\n\r]")


def _copy_text(value: Any) -> str:
    """A value in COPY's text format."""
    if value is None:
        return "\\N"
    text = value if type(value) is str else str(value)
    return text if _SPECIAL.search(text) is None else text.translate(_ESCAPES)
