"""The fence's record, kept on the side it fences: what an abort, a rerun or ``recover`` restores
from, whichever process runs it (the one that fenced may be gone).

Two tables in that database's ``replicator`` schema, written in the same transaction as the
effect they record:

- ``fence_tables``: each fenced table and the switch (run) that fenced it;
- ``fence_revoked``: each write privilege the fence took, from whom (the role, a group it
  writes through, or PUBLIC), and whether it carried the grant option.

When a switch's decision makes the fenced side the writer again, it *lifts* the fence (triggers
dropped, privileges given back) and marks the rows ``lifted_by`` that run instead of deleting
them: should the switch then be taken back, :data:`RESTORE` fences the side again exactly as it
was; once the switch finishes, :func:`finish_sql` forgets them. :data:`DROP` removes a fence
outright (the old writer of a switch that did not happen).

Four server functions do the work, each one statement (one round trip in the write pause).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS replicator.fence_revoked (
    role_name  text NOT NULL,  -- the grantee: a role, a group the role writes through, or PUBLIC
    table_name text NOT NULL,  -- quoted and qualified, as GRANT takes it
    privilege  text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, table_name, privilege)
);
ALTER TABLE replicator.fence_revoked
    ADD COLUMN IF NOT EXISTS grantable boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS run_id text,
    ADD COLUMN IF NOT EXISTS lifted_by text;
CREATE TABLE IF NOT EXISTS replicator.fence_tables (
    table_name text PRIMARY KEY,  -- quoted and qualified
    run_id     text NOT NULL,
    fenced_at  timestamptz NOT NULL DEFAULT now(),
    lifted_by  text
);
"""

# Triggers dropped and re-created by name; the functions quote grantees themselves (PUBLIC is
# a keyword, not a role).
FUNCTIONS_SQL = r"""
CREATE OR REPLACE FUNCTION replicator._fence_grantee(r text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN r = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(r) END $$;

-- Created only where missing: CREATE TRIGGER takes a lock that blocks writes, not reads (a
-- DROP first would block every reader of the table for the fence's transaction).
CREATE OR REPLACE FUNCTION replicator._fence_triggers(tbl text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl::regclass
                   AND tgname = 'replicator_fence') THEN
        EXECUTE format('CREATE TRIGGER replicator_fence BEFORE INSERT OR UPDATE OR DELETE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION replicator.fenced()', tbl);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = tbl::regclass
                   AND tgname = 'replicator_fence_truncate') THEN
        EXECUTE format('CREATE TRIGGER replicator_fence_truncate BEFORE TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION replicator.fenced()', tbl);
    END IF;
END $$;

-- A privilege given back; a role dropped since is skipped with a warning, not a failure that
-- would leave the side fenced for good.
CREATE OR REPLACE FUNCTION replicator._fence_grant(
    priv text, tbl text, grantee text, grantable boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass(tbl) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('GRANT %s ON %s TO %s%s', priv, tbl, replicator._fence_grantee(grantee),
                   CASE WHEN grantable THEN ' WITH GRANT OPTION' ELSE '' END);
EXCEPTION WHEN undefined_object THEN
    RAISE WARNING 'replicator: % on % not given back to %: the role is gone', priv, tbl, grantee;
END $$;

CREATE OR REPLACE FUNCTION replicator._fence_drop_triggers() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE r record; n integer := 0;
BEGIN
    FOR r IN SELECT t.tgname, format('%I.%I', ns.nspname, c.relname) AS rel
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace ns ON ns.oid = c.relnamespace
             WHERE t.tgname IN ('replicator_fence', 'replicator_fence_truncate')
               AND t.tgparentid = 0 LOOP  -- a partition's clone goes with its parent's
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- The writer of a switch that did not happen: no trigger, every privilege given back.
CREATE OR REPLACE FUNCTION replicator.drop_fence() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE r record; n integer;
BEGIN
    n := replicator._fence_drop_triggers();
    FOR r IN DELETE FROM replicator.fence_revoked
             RETURNING role_name, table_name, privilege, grantable, lifted_by LOOP
        CONTINUE WHEN r.lifted_by IS NOT NULL;
        PERFORM replicator._fence_grant(r.privilege, r.table_name, r.role_name, r.grantable);
    END LOOP;
    DELETE FROM replicator.fence_tables;
    RETURN n;
END $$;

-- What one run fenced, taken back — nothing another run fenced since (a second switch that
-- took over after this one lost its lock keeps its fence).
CREATE OR REPLACE FUNCTION replicator.drop_fence(run text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE r record; n integer := 0;
BEGIN
    FOR r IN DELETE FROM replicator.fence_tables WHERE run_id = run AND lifted_by IS NULL
             RETURNING table_name LOOP
        CONTINUE WHEN to_regclass(r.table_name) IS NULL;
        EXECUTE format('DROP TRIGGER IF EXISTS replicator_fence ON %s', r.table_name);
        EXECUTE format('DROP TRIGGER IF EXISTS replicator_fence_truncate ON %s', r.table_name);
        n := n + 1;
    END LOOP;
    FOR r IN DELETE FROM replicator.fence_revoked WHERE run_id = run AND lifted_by IS NULL
             RETURNING role_name, table_name, privilege, grantable LOOP
        PERFORM replicator._fence_grant(r.privilege, r.table_name, r.role_name, r.grantable);
    END LOOP;
    RETURN n;
END $$;

-- A switch's decision makes this side the writer: the fence lifted, its record kept for an
-- abort. Triggers left by a fence of an older version (no record) are recorded first.
CREATE OR REPLACE FUNCTION replicator.lift_fence(run text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    INSERT INTO replicator.fence_tables (table_name, run_id)
    SELECT DISTINCT format('%I.%I', ns.nspname, c.relname), run
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace ns ON ns.oid = c.relnamespace
    WHERE t.tgname = 'replicator_fence' AND t.tgparentid = 0
    ON CONFLICT (table_name) DO NOTHING;
    PERFORM replicator._fence_drop_triggers();
    UPDATE replicator.fence_tables SET lifted_by = run WHERE lifted_by IS NULL;
    FOR r IN UPDATE replicator.fence_revoked SET lifted_by = run WHERE lifted_by IS NULL
             RETURNING role_name, table_name, privilege, grantable LOOP
        PERFORM replicator._fence_grant(r.privilege, r.table_name, r.role_name, r.grantable);
    END LOOP;
END $$;

-- That switch taken back: the side fenced again exactly as it was.
CREATE OR REPLACE FUNCTION replicator.restore_fence(run text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE r record; n integer := 0;
BEGIN
    FOR r IN UPDATE replicator.fence_tables SET lifted_by = NULL WHERE lifted_by = run
             RETURNING table_name LOOP
        CONTINUE WHEN to_regclass(r.table_name) IS NULL;
        PERFORM replicator._fence_triggers(r.table_name);
        n := n + 1;
    END LOOP;
    FOR r IN UPDATE replicator.fence_revoked SET lifted_by = NULL WHERE lifted_by = run
             RETURNING role_name, table_name, privilege LOOP
        CONTINUE WHEN to_regclass(r.table_name) IS NULL;
        BEGIN
            EXECUTE format('REVOKE %s ON %s FROM %s', r.privilege, r.table_name,
                           replicator._fence_grantee(r.role_name));
        EXCEPTION WHEN undefined_object THEN
            NULL;  -- the role is gone: nothing of it to revoke
        END;
    END LOOP;
    RETURN n;
END $$;
"""


def prepare(conn: psycopg.Connection[Any]) -> None:
    """The tables and functions, created before any write is blocked (idempotent)."""
    conn.execute(TABLES_SQL)
    conn.execute(FUNCTIONS_SQL)


def lift_sql(run_id: str) -> sql.Composed:
    return sql.SQL("SELECT replicator.lift_fence({})").format(sql.Literal(run_id))


def restore_sql(run_id: str) -> sql.Composed:
    return sql.SQL("SELECT replicator.restore_fence({})").format(sql.Literal(run_id))


def finish_sql(run_id: str) -> sql.Composed:
    """The lifted fence forgotten once its switch finished (no abort can take it back now)."""
    return sql.SQL(
        "DELETE FROM replicator.fence_tables WHERE lifted_by = {r};"
        " DELETE FROM replicator.fence_revoked WHERE lifted_by = {r}"
    ).format(r=sql.Literal(run_id))


DROP_SQL = "SELECT replicator.drop_fence()"
# The record's tables given their trigger back where it went missing (the side stays fenced).
MEND_SQL = (
    "SELECT replicator._fence_triggers(table_name) FROM replicator.fence_tables"
    " WHERE lifted_by IS NULL AND to_regclass(table_name) IS NOT NULL"
)


def drop_run_sql(run_id: str) -> sql.Composed:
    """What run ``run_id`` fenced, and only that, taken back."""
    return sql.SQL("SELECT replicator.drop_fence({}::text)").format(sql.Literal(run_id))


@dataclass(frozen=True)
class SideFence:
    """One database's fence as its catalog and record show it."""

    tables: tuple[str, ...]  # with a fence trigger now
    revoked: int  # privileges taken and not given back
    lifted_by: tuple[str, ...]  # runs whose decision lifted a fence here, not finished
    recorded: tuple[str, ...] = ()  # fenced by the record (not lifted), trigger or not

    @property
    def fenced(self) -> bool:
        return bool(self.tables or self.revoked or self.recorded)

    @property
    def missing(self) -> tuple[str, ...]:
        """Tables the record fences that lost their trigger (dropped by hand, recreated)."""
        return tuple(t for t in self.recorded if t not in self.tables)


def read(conn: psycopg.Connection[Any]) -> SideFence:
    """The fence of the database ``conn`` is on (no table of ours needed: a side never fenced
    has none)."""
    row = conn.execute(
        "SELECT (SELECT coalesce(array_agg(DISTINCT format('%I.%I', ns.nspname, c.relname)),"
        "  '{}') FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        "  JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE t.tgname = 'replicator_fence'"
        "  AND t.tgparentid = 0),"
        " to_regclass('replicator.fence_revoked') IS NOT NULL,"
        " to_regclass('replicator.fence_tables') IS NOT NULL"
    ).fetchone()
    assert row is not None
    tables = tuple(sorted(str(t) for t in row[0]))
    revoked: int = 0
    lifted: tuple[str, ...] = ()
    recorded: tuple[str, ...] = ()
    if row[1] and row[2]:
        got = conn.execute(
            "SELECT (SELECT count(*) FROM replicator.fence_revoked WHERE lifted_by IS NULL),"
            " (SELECT coalesce(array_agg(DISTINCT lifted_by), '{}') FROM ("
            "  SELECT lifted_by FROM replicator.fence_tables WHERE lifted_by IS NOT NULL"
            "  UNION SELECT lifted_by FROM replicator.fence_revoked WHERE lifted_by IS NOT NULL) l),"
            " (SELECT coalesce(array_agg(format('%I.%I', ns.nspname, c.relname)), '{}')"
            "  FROM replicator.fence_tables f JOIN pg_class c ON c.oid = to_regclass(f.table_name)"
            "  JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE f.lifted_by IS NULL)"
        ).fetchone()
        assert got is not None
        revoked, lifted = int(got[0]), tuple(sorted(str(x) for x in got[1]))
        recorded = tuple(sorted(str(x) for x in got[2]))
    elif row[1]:
        got = conn.execute("SELECT count(*) FROM replicator.fence_revoked").fetchone()
        revoked = int(got[0]) if got else 0
    return SideFence(tables, revoked, lifted, recorded)
