"""Issue 34: set-aside indexes and foreign keys against a real target, without the pipeline."""

from __future__ import annotations

import logging

import psycopg
import pytest

from replicator.apply.set_aside import MIN_ROWS, pending, restore, set_aside, worth_setting_aside
from replicator.errors import PreconditionError
from replicator.state import ensure_schema
from tests.support import Env
from transforms.loader import load_mapping

SCHEMA = [
    "CREATE TABLE parent (id int PRIMARY KEY)",
    'CREATE TABLE "Child" (id int PRIMARY KEY, pid int REFERENCES parent (id), "Note" text)',
    'CREATE INDEX "Child_note" ON "Child" (lower("Note")) WHERE pid > 0',
    # What pg_get_indexdef does not say stays in place: a statistics target, a comment.
    'CREATE INDEX "Child_twice" ON "Child" ((id * 2))',
    'ALTER INDEX "Child_twice" ALTER COLUMN 1 SET STATISTICS 500',
    'CREATE INDEX "Child_commented" ON "Child" (pid)',
    """COMMENT ON INDEX "Child_commented" IS 'kept'""",
]


def test_a_foreign_key_the_loaded_rows_break_comes_back_not_valid_with_what_to_run(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    with env.target_conn() as c:
        for ddl in SCHEMA:
            c.execute(ddl)
    with psycopg.connect(env.target.conninfo()) as conn:
        ensure_schema(conn)
        before = _defs(conn)
        conn.execute(
            "INSERT INTO replicator.backfill (id, tables, status) VALUES ('b1', '{}', 'snapshot')"
        )
        aside = set_aside(conn, "b1", ["public.Child", "public.parent"], keep=[])
        conn.commit()
        # A mixed-case name is found (quoted), and the parent has nothing to set aside.
        assert sorted(o.name for o in aside) == ["Child_note", "Child_pid_fkey"]
        assert pending(conn) == [] and len(pending(conn, loading=True)) == 2  # still loading
        conn.execute("""INSERT INTO "Child" VALUES (1, 999, 'orphan')""")  # no parent 999
        conn.execute("UPDATE replicator.backfill SET status = 'applied' WHERE id = 'b1'")
        conn.commit()
        with caplog.at_level(logging.WARNING):
            restore(conn, lambda: psycopg.connect(env.target.conninfo()), 2)
        after = _defs(conn)
        assert pending(conn, loading=None) == []
    assert after["Child_note"] == before["Child_note"]
    assert after["Child_pid_fkey"] == ("FOREIGN KEY (pid) REFERENCES parent(id) NOT VALID", False)
    assert before["Child_pid_fkey"] == ("FOREIGN KEY (pid) REFERENCES parent(id)", True)
    run = 'ALTER TABLE "public"."Child" VALIDATE CONSTRAINT "Child_pid_fkey"'  # quoted: runnable
    assert run in caplog.text and "fix those rows" in caplog.text, caplog.text


def _defs(conn: psycopg.Connection[object]) -> dict[str, tuple[str, bool]]:
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(c.oid), true FROM pg_index i JOIN pg_class c"
        " ON c.oid = i.indexrelid WHERE i.indrelid = '\"Child\"'::regclass"
        " UNION ALL SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint"
        " WHERE conrelid = '\"Child\"'::regclass"
    ).fetchall()
    return {str(n): (str(d), bool(v)) for n, d, v in rows}


def test_an_index_a_loaded_row_breaks_says_so_and_keeps_its_record(env: Env) -> None:
    with env.target_conn() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, n int)")
        c.execute("CREATE INDEX t_inverse ON t ((100 / n))")
    with psycopg.connect(env.target.conninfo()) as conn:
        ensure_schema(conn)
        assert [o.name for o in set_aside(conn, "b2", ["public.t"], keep=[])] == ["t_inverse"]
        conn.execute("INSERT INTO t VALUES (1, 0)")  # the index would have refused it
        conn.commit()
        with pytest.raises(PreconditionError) as caught:
            restore(conn, lambda: psycopg.connect(env.target.conninfo()), 1)
        assert (
            "index t_inverse" in caught.value.message and "division by zero" in caught.value.message
        )
        assert "fix those rows" in (caught.value.hint or "")
        assert [o.name for o in pending(conn)] == ["t_inverse"]  # kept: nothing lost


def test_only_tables_large_enough_to_gain_are_set_aside(env: Env) -> None:
    with env.target_conn() as c:
        c.execute("CREATE TABLE small (id int PRIMARY KEY)")
        c.execute("CREATE TABLE large (id int PRIMARY KEY)")
    direction = load_mapping("identity:public.small,public.large").forward
    with psycopg.connect(env.target.conninfo()) as conn:
        ensure_schema(conn)
        conn.execute(
            "INSERT INTO replicator.backfill_progress (backfill_id, table_name, rows_total)"
            " VALUES ('b3', 'public.small', %s), ('b3', 'public.large', %s)",
            (MIN_ROWS - 1, MIN_ROWS),
        )
        assert worth_setting_aside(conn, "b3", direction) == ["public.large"]
