"""Secondary indexes and foreign keys set aside while a first backfill loads an empty table.

A heap load is several times faster without indexes to maintain row by row; building each index
once over the loaded table sorts it in one pass (pgcopydb does the same). So when the snapshot
phase of a pipeline's first backfill begins, every target table it writes that is still empty
loses its non-unique secondary indexes and its foreign keys, and gets them back, restored from
``pg_get_indexdef``/``pg_get_constraintdef``, once its snapshot is loaded and before the changes
topic is applied (several sessions building indexes at once).

What makes it safe to interrupt: each definition is written to ``replicator.set_aside`` in the
same transaction that drops the object, and each rebuild deletes its record in the transaction
that creates the object — after a kill -9 at any instant the target holds either the index or
the record the next apply restores it from (``status`` lists the records meanwhile).

Kept in place: the primary key and unique or exclusion indexes (the upserts' arbiters; they are
what refuses a duplicate row to the dead-letter queue), any index a constraint uses, check
constraints (cheap per row, and they refuse bad rows), and anything the restore could not
reproduce from its definition (a comment, a clustered index, a column's statistics target). A
table that held a row keeps everything; so do the tables in ``backfill.keep_indexes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import PreconditionError
from transforms.api import Direction

log = logging.getLogger(__name__)

# Source rows from which a table's load goes without its indexes (worth_setting_aside).
MIN_ROWS = 20_000


_INDEXES = """
SELECT c.relname, pg_get_indexdef(i.indexrelid), t.spcname
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
WHERE i.indrelid = %s::regclass AND NOT i.indisunique AND NOT i.indisprimary
  AND NOT i.indisexclusion AND i.indisvalid AND NOT i.indisclustered
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = i.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = i.indexrelid AND e.deptype = 'e')
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indexrelid
                  AND a.attstattarget > 0)
ORDER BY c.relname
"""

_FOREIGN_KEYS = """
SELECT k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k
WHERE k.conrelid = %s::regclass AND k.contype = 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_description d WHERE d.objoid = k.oid)
ORDER BY k.conname
"""

# A backfill is over once its indexes are back: its duration (status, bench.backfill) includes
# their build.
_FINISHED = (
    "UPDATE replicator.backfill b SET finished_at = clock_timestamp() WHERE b.id = ANY(%s)"
    " AND NOT EXISTS (SELECT 1 FROM replicator.set_aside s WHERE s.backfill_id = b.id)"
)


@dataclass(frozen=True)
class SetAside:
    table: str
    kind: str  # index | foreign_key
    name: str
    definition: str
    tablespace: str | None = None
    backfill_id: str = ""


def _ident(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split(".", 1))


def _regclass(conn: psycopg.Connection[Any], table: str) -> str:
    """The table's name quoted for ``::regclass`` (mixed case, reserved words)."""
    return _ident(table).as_string(conn)


def candidates(conn: psycopg.Connection[Any], table: str) -> list[SetAside]:
    """What a load into ``table`` may go without, with the statements that restore it."""
    out = [
        SetAside(table, "index", str(name), str(ddl), None if ts is None else str(ts))
        for name, ddl, ts in conn.execute(_INDEXES, (_regclass(conn, table),)).fetchall()
    ]
    for name, ddl in conn.execute(_FOREIGN_KEYS, (_regclass(conn, table),)).fetchall():
        stmt = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
            _ident(table), sql.Identifier(str(name))
        )
        out.append(SetAside(table, "foreign_key", str(name), stmt.as_string(conn) + str(ddl)))
    return out


def worth_setting_aside(
    conn: psycopg.Connection[Any], backfill_id: str, direction: Direction
) -> list[str]:
    """The target tables a backfill writes from a source table of ``MIN_ROWS`` rows or more.
    Below that a rebuild's fixed cost (a catalog change, a commit, a foreign key's scan of its
    parent) is more than what the load saves: with every table's set aside, the quick MCP
    backfill (tables of 0.8 to 80 k rows) took 0.6 to 1 s longer than with none."""
    counted = conn.execute(
        "SELECT table_name, rows_total FROM replicator.backfill_progress WHERE backfill_id = %s",
        (backfill_id,),
    ).fetchall()
    big = {str(t) for t, n in counted if int(n) >= MIN_ROWS}
    tables = direction.tables
    return list(dict.fromkeys(w.name for t in tables if t in big for w in tables[t].writes))


def set_aside(
    conn: psycopg.Connection[Any], backfill_id: str, tables: Iterable[str], keep: Iterable[str]
) -> list[SetAside]:
    """Record and drop the set-aside objects of every empty table in ``tables`` (not in
    ``keep``), in the caller's transaction: the records commit with the drops or not at all."""
    kept = set(keep)
    done: list[SetAside] = []
    for table in tables:
        found = conn.execute("SELECT to_regclass(%s)", (_regclass(conn, table),)).fetchone()
        if table in kept or found == (None,):
            continue
        held = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(_ident(table))
        ).fetchone()
        if held is None or held[0]:
            continue  # never for a table that holds rows: its indexes serve its readers now
        objects = candidates(conn, table)
        if not objects:
            continue
        try:
            with conn.transaction():
                # Not waiting behind someone's long transaction on the table: it then keeps its
                # indexes (the load is only slower).
                conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT").format(_ident(table))
                )
                for o in objects:
                    conn.execute(
                        "INSERT INTO replicator.set_aside"
                        " (table_name, kind, name, definition, tablespace, backfill_id)"
                        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (table_name, kind, name) DO UPDATE"
                        " SET definition = EXCLUDED.definition, tablespace = EXCLUDED.tablespace,"
                        " backfill_id = EXCLUDED.backfill_id",
                        (o.table, o.kind, o.name, o.definition, o.tablespace, backfill_id),
                    )
                    schema = table.split(".", 1)[0]
                    if o.kind == "index":
                        conn.execute(
                            sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, o.name))
                        )
                    else:
                        conn.execute(
                            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                                _ident(table), sql.Identifier(o.name)
                            )
                        )
        except psycopg.errors.LockNotAvailable:
            log.warning("%s is in use: its indexes stay during the backfill's load", table)
            continue
        log.info(
            "%s: %s set aside for the backfill's load, rebuilt when its snapshot is loaded",
            table,
            ", ".join(o.name for o in objects),
        )
        done.extend(objects)
    return done


def pending(conn: psycopg.Connection[Any], *, loading: bool | None = False) -> list[SetAside]:
    """Set-aside records; ``loading=False``: those whose backfill's snapshot is loaded (or gone)
    — ready to rebuild; ``True``: those still loading; ``None``: all."""
    rows = conn.execute(
        "SELECT s.table_name, s.kind, s.name, s.definition, s.tablespace, s.backfill_id,"
        " EXISTS (SELECT 1 FROM replicator.backfill b WHERE b.id = s.backfill_id"
        " AND b.status IN ('pending', 'snapshot'))"
        " FROM replicator.set_aside s ORDER BY s.table_name, s.kind DESC, s.name"
    ).fetchall()
    return [
        SetAside(str(t), str(k), str(n), str(d), None if ts is None else str(ts), str(b))
        for t, k, n, d, ts, b, busy in rows
        if loading is None or bool(busy) == loading
    ]


def _restore_one(conn: psycopg.Connection[Any], o: SetAside) -> str | None:
    """Rebuild one object and delete its record in one transaction; a note when a foreign key
    could only come back NOT VALID."""
    note = None
    with conn.transaction():
        # Another worker rebuilding it holds the row: wait, then find it gone.
        row = conn.execute(
            "SELECT 1 FROM replicator.set_aside WHERE table_name = %s AND kind = %s AND name = %s"
            " FOR UPDATE",
            (o.table, o.kind, o.name),
        ).fetchone()
        if row is None:
            return None
        schema = o.table.split(".", 1)[0]
        if o.kind == "index":
            exists = conn.execute(
                "SELECT to_regclass(%s)", (sql.Identifier(schema, o.name).as_string(conn),)
            ).fetchone()
            if exists == (None,):
                if o.tablespace:
                    conn.execute(
                        sql.SQL("SET LOCAL default_tablespace = {}").format(
                            sql.Identifier(o.tablespace)
                        )
                    )
                try:
                    conn.execute(o.definition.encode())
                except psycopg.DataError as exc:  # SQLSTATE class 22
                    # An expression or predicate a loaded row breaks (with the index in place,
                    # the row would have been refused): nothing is dropped, the record stays.
                    raise PreconditionError(
                        f"{o.table}: index {o.name}, set aside for the backfill's load, cannot be"
                        f" rebuilt over the loaded rows: {str(exc).splitlines()[0]}",
                        hint="fix those rows on the target; apply rebuilds it when it starts"
                        " again (the definition is kept in replicator.set_aside)",
                    ) from None
        else:
            exists = conn.execute(
                "SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                (_regclass(conn, o.table), o.name),
            ).fetchone()
            if exists is None:
                try:
                    with conn.transaction():
                        conn.execute(o.definition.encode())
                except psycopg.errors.ForeignKeyViolation as exc:
                    # Rows the snapshot loaded (apply writes with foreign-key triggers off)
                    # break it: it comes back NOT VALID rather than not at all.
                    conn.execute((o.definition + " NOT VALID").encode())
                    validate = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                        _ident(o.table), sql.Identifier(o.name)
                    )
                    note = (
                        f"{o.table}: foreign key {o.name} restored NOT VALID: "
                        f"{str(exc).splitlines()[0]}; fix those rows, then run "
                        f"{validate.as_string(conn)}"
                    )
        conn.execute(
            "DELETE FROM replicator.set_aside WHERE table_name = %s AND kind = %s AND name = %s",
            (o.table, o.kind, o.name),
        )
        # The last one back ends its backfill, in the same transaction (see restore for two
        # sessions ending at once, each seeing the other's record).
        conn.execute(_FINISHED, ([o.backfill_id],))
    return note


def restore(
    conn: psycopg.Connection[Any],
    connect: Callable[[], psycopg.Connection[Any]],
    sessions: int,
) -> list[SetAside]:
    """Rebuild what loaded snapshots left set aside: indexes on ``sessions`` sessions at once,
    then foreign keys one by one (two at once on one pair of tables could deadlock)."""
    todo = pending(conn)
    conn.commit()
    if not todo:
        return []
    indexes = [o for o in todo if o.kind == "index"]
    keys = [o for o in todo if o.kind != "index"]
    log.info("rebuilding %d indexes and %d foreign keys set aside", len(indexes), len(keys))

    def build(chunk: list[SetAside]) -> None:
        with connect() as own:
            own.autocommit = True
            for o in chunk:
                _restore_one(own, o)

    jobs = max(1, min(sessions, len(indexes)))
    if indexes:
        shares: list[list[SetAside]] = [indexes[k::jobs] for k in range(jobs)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for f in [pool.submit(build, s) for s in shares]:
                f.result()
    prev = conn.autocommit
    conn.autocommit = True
    try:
        for o in keys:
            note = _restore_one(conn, o)
            if note:
                log.warning("%s", note)
        conn.execute(_FINISHED, (sorted({o.backfill_id for o in todo}),))
    finally:
        conn.autocommit = prev
    return todo
