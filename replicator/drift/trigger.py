"""The event trigger that puts each DDL command into the WAL, in its own transaction.

``ddl_command_end`` sees every ``CREATE``/``ALTER``/``DROP``/``RENAME`` after it ran, with the
table's columns as they now are; ``sql_drop`` sees a dropped table (gone by
``ddl_command_end``). Both hand a JSON object to ``replicator.ddl_emit``, the one function that
decides how it travels: a transactional ``pg_logical_emit_message``, so it reaches Kafka at
its exact position among the row changes and vanishes with a rolled-back migration. A source
without logical messages in pgoutput (PostgreSQL 13) gets a row of the carrier table instead.

Creating an event trigger needs a superuser (PostgreSQL 15); a role that may not gets the
Relation-message fallback only, and ``check`` says what that loses.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from connectors.assembler import DDL_PREFIX
from connectors.pgsource import CARRIER_TABLE, ServerFeatures

__all__ = ["DDL_PREFIX", "install", "installed", "remove", "trigger_names"]

EMIT_SQL = r"""
CREATE SCHEMA IF NOT EXISTS replicator;
-- The one place that decides how a DDL record travels (swap it where pgoutput lacks messages).
CREATE OR REPLACE FUNCTION replicator.ddl_emit(payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN {emit}; END $$;

-- SECURITY DEFINER: the application's migration role (no right on the replicator schema) runs
-- its DDL as before; a capture that fails warns and never fails the application's DDL (the
-- Relation fallback still sees the change).
CREATE OR REPLACE FUNCTION replicator.ddl_capture() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r record;
  tbl text;
  cols jsonb;
  new_table boolean := EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                                WHERE command_tag = 'CREATE TABLE');
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    -- Our own state and temporary objects are nobody's mapping.
    CONTINUE WHEN r.schema_name IN ('replicator', 'pg_temp') OR r.in_extension;
    -- Privileges are not schema, and the cutover's fence triggers are the replicator's own.
    -- Publications are replication's configuration (the pipeline's own), not schema.
    CONTINUE WHEN r.command_tag IN ('GRANT', 'REVOKE') OR r.object_type LIKE 'publication%'
               OR (r.object_type = 'trigger' AND r.object_identity LIKE 'replicator\_%')
               -- A new table's own key index is part of its CREATE TABLE record.
               OR (r.object_type = 'index' AND new_table);
    tbl := NULL;
    cols := NULL;
    IF r.classid = 'pg_class'::regclass THEN
      SELECT n.nspname || '.' || c.relname,
             (SELECT jsonb_object_agg(a.attname, format_type(a.atttypid, a.atttypmod))
                FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
        INTO tbl, cols
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE c.oid = r.objid AND c.relkind IN ('r', 'p');
    END IF;
    PERFORM replicator.ddl_emit(jsonb_build_object(
      'tag', r.command_tag, 'object_type', r.object_type, 'identity', r.object_identity,
      'table', tbl, 'columns', cols, 'query', left(current_query(), 2000),
      'at', clock_timestamp()));
  END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'replicator: this DDL was not captured (%); the replicator sees it only when'
                ' the table is next written', SQLERRM;
END $$;

CREATE OR REPLACE FUNCTION replicator.ddl_capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_dropped_objects()
            WHERE original AND object_type = 'table'
              AND schema_name NOT IN ('replicator', 'pg_temp') LOOP
    PERFORM replicator.ddl_emit(jsonb_build_object(
      'tag', 'DROP TABLE', 'object_type', 'table', 'identity', r.object_identity,
      'table', r.schema_name || '.' || r.object_name, 'columns', NULL, 'dropped', true,
      'query', left(current_query(), 2000), 'at', clock_timestamp()));
  END LOOP;
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'replicator: this DROP TABLE was not captured (%)', SQLERRM;
END $$;
REVOKE ALL ON FUNCTION replicator.ddl_emit(jsonb) FROM PUBLIC;
"""


def trigger_names(pipeline: str) -> tuple[str, str]:
    """The event triggers of one pipeline (database-wide objects: named after it)."""
    return f"replicator_{pipeline}_ddl", f"replicator_{pipeline}_ddl_drop"


def installed(conn: psycopg.Connection[Any], pipeline: str) -> bool:
    names = list(trigger_names(pipeline))
    row = conn.execute(
        "SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY(%s) AND evtenabled <> 'D'",
        (names,),
    ).fetchone()
    return row is not None and row[0] == len(names)


def may_install(conn: psycopg.Connection[Any]) -> bool:
    """Event triggers need a superuser — or, on RDS/Aurora, a member of rds_superuser."""
    row = conn.execute(
        "SELECT rolsuper OR (to_regrole('rds_superuser') IS NOT NULL"
        " AND pg_has_role(current_user, 'rds_superuser', 'MEMBER'))"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    return bool(row and row[0])


def install(conn: psycopg.Connection[Any], pipeline: str) -> bool:
    """Install (or refresh) the trigger; False, changing nothing, where the role may not."""
    if not may_install(conn):
        return False
    end, drop = trigger_names(pipeline)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.drift.install'))")
        conn.execute(EMIT_SQL.replace("{emit}", _emit_statement(conn.info.server_version)))
        for name, event, fn in (
            (end, "ddl_command_end", "ddl_capture"),
            (drop, "sql_drop", "ddl_capture_drop"),
        ):
            conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION replicator.{}()").format(
                    sql.Identifier(name), sql.SQL(event), sql.Identifier(fn)
                )
            )
    return True


def _emit_statement(server_version: int) -> str:
    """A logical message; on 13, whose pgoutput drops them, a row of the carrier table the
    capture turns back into one (connectors.pgsource.emit_message, CarrierRows)."""
    if ServerFeatures(server_version).logical_messages:
        return "PERFORM pg_logical_emit_message(true, 'replicator.ddl', payload::text)"
    return (
        f"INSERT INTO {CARRIER_TABLE} (transactional, prefix, content)"
        " VALUES (true, 'replicator.ddl', payload::text)"
    )


def remove(conn: psycopg.Connection[Any], pipeline: str) -> None:
    for name in trigger_names(pipeline):
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
