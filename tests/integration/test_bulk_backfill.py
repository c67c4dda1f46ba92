"""The backfill's bulk path (COPY chunks, compiled INSERT … SELECT) against real PostgreSQL and
Kafka: which path each table takes, rows the SQL form refuses, chunks the target refuses, a
replay of a dead letter from a COPY chunk."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.copy_chunk import decode_copy_chunk, is_copy_chunk
from replicator.dlq.letters import DeadLetter
from replicator.runtime.pipeline import Pipeline
from tests.e2e.cli import run_cli
from tests.support import Env, read_topic, wait_for
from transforms.loader import load_mapping

MCP = "transforms.mcp_manager:MAPPING"
USER = (
    'INSERT INTO "user" (id, email, full_name, hashed_password, is_active, is_superuser,'
    " created_at) VALUES (%s, %s, 'U', '$2b$10$x', true, false, now())"
)


def _status(env: Env) -> str | None:
    with env.target_conn() as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill").fetchone()
        except psycopg.errors.UndefinedTable:  # the state schema is not there yet
            return None
    return str(row[0]) if row else None


def _paths(env: Env) -> dict[str, str]:
    with env.target_conn() as c:
        rows = c.execute("SELECT table_name, path FROM replicator.backfill_progress").fetchall()
    return {str(t): str(p) for t, p in rows}


def _count(conn: Any, table: str) -> int:
    row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    return int(row[0]) if row else 0


def test_refused_rows_are_dead_lettered_with_their_reason_and_the_rest_loads(
    env: Env, tmp_path: Path
) -> None:
    env.mcp_schemas(scale=1, seed=2)
    upper, nul_json = str(uuid.uuid4()), None
    with env.legacy_conn() as c:
        # Python refuses it (the target looks emails up lower-cased): the SQL form flags it.
        c.execute(USER, (upper, "Mixed.Case@example.com"))
        # JSON jsonb cannot hold: flagged by the SQL form, refused by the Python path.
        row = c.execute(
            "INSERT INTO audit_log (action, metadata, created_at)"
            " VALUES ('nul', '{\"a\": \"x\\u0000y\"}', now()) RETURNING id"
        ).fetchone()
        assert row is not None
        nul_json = int(row[0])
        evil = c.execute("SELECT id FROM organization ORDER BY id LIMIT 1 OFFSET 3").fetchone()
        assert evil is not None
        c.execute("UPDATE organization SET name = 'evil' WHERE id = %s", (evil[0],))
        legacy = {t: _count(c, t) for t in ("user", "audit_log", "organization")}
    with env.target_conn() as c:
        # A rule of the target the transform does not know: the target refuses the chunk.
        c.execute("ALTER TABLE organization ADD CONSTRAINT not_evil CHECK (name <> 'evil')")
    s = env.settings()
    pipeline = Pipeline(s, load_mapping(MCP))
    pipeline.start()
    try:
        wait_for(lambda: _status(env) == "applied", 120, what="the backfill to be applied")
        assert set(_paths(env).values()) == {"sql"}, _paths(env)
        letters = wait_for(
            lambda: (
                got
                if len(
                    got := [
                        DeadLetter.decode(v)
                        for v in read_topic(s.kafka.bootstrap_servers, s.topic("fwd", "dlq"), 5)
                    ]
                )
                >= 3
                else None
            ),
            60,
            what="three dead letters",
        )
        by_table = {letter.table: letter for letter in letters}
        assert len(letters) == 3 and set(by_table) == {
            "public.user",
            "public.audit_log",
            "public.organization",
        }, [(x.table, x.reason) for x in letters]
        assert by_table["public.user"].key == {"id": upper}
        assert "not lower-case" in by_table["public.user"].reason
        assert by_table["public.audit_log"].key == {"id": str(nul_json)}
        assert "NUL" in by_table["public.audit_log"].reason
        org = by_table["public.organization"]
        assert org.error == "TargetRejected" and org.key == {"id": str(evil[0])}
        assert "not_evil" in org.reason
        # Each letter points at the COPY chunk that carried its row.
        for letter in letters:
            assert letter.source_topic == s.topic("fwd", "snapshot")
        with env.target_conn() as c:
            for table, n in legacy.items():
                assert _count(c, table) == n - 1, table
        # A replay reads the row from its COPY chunk, then writes the source's current state.
        with env.legacy_conn() as c:
            c.execute('UPDATE "user" SET email = lower(email) WHERE id = %s', (upper,))
        vars_ = {**env.env_vars(), "REPLICATOR_MAPPING": MCP}
        listed = json.loads(run_cli(["dlq", "list", "--json", "--table", "user"], vars_).stdout)
        r = run_cli(["dlq", "replay", listed[0]["position"]], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        with env.target_conn() as c:
            got = c.execute('SELECT email FROM "user" WHERE id = %s', (upper,)).fetchone()
        assert got == ("mixed.case@example.com",)
    finally:
        pipeline.shutdown()


def test_chunks_carry_copy_output_with_the_relation(env: Env) -> None:
    env.mcp_schemas(scale=1, seed=3)
    s = env.settings(backfill={"python_tables": ["public.organization"]})
    pipeline = Pipeline(s, load_mapping(MCP))
    pipeline.start()
    try:
        wait_for(lambda: _status(env) == "applied", 120, what="the backfill to be applied")
        paths = _paths(env)
        assert paths.pop("public.organization") == "python: listed in backfill.python_tables"
        assert set(paths.values()) == {"sql"}, paths
        messages = read_topic(s.kafka.bootstrap_servers, s.topic("fwd", "snapshot"), 10)
        chunks = [decode_copy_chunk(m) for m in messages if is_copy_chunk(m)]
        tables = {c.relation.qualname for c in chunks}
        assert "public.organization" not in tables and "public.audit_log" in tables
        with env.legacy_conn() as c:
            assert sum(c.rows for c in chunks if c.relation.table == "audit_log") == _count(
                c, "audit_log"
            )
        # Every MCP column type has a binary form read back as text: binary chunks only.
        assert all(c.binary for c in chunks)
        audit = next(c for c in chunks if c.relation.table == "audit_log")
        assert audit.types[audit.relation.columns.index("metadata")] == "json"
        first = audit.text_rows()[0]
        # The row as legacy prints it in text (UTC, ISO).
        cols = ", ".join(f"{c}::text" for c in audit.relation.columns)
        with env.legacy_conn() as c:
            c.execute("SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, MDY'")
            printed = c.execute(f"SELECT {cols} FROM audit_log WHERE id = %s", (first[0],))
            assert first == list(printed.fetchone() or ())
    finally:
        pipeline.shutdown()


TARGET_TABLES = ("user", "account", "organization", "member", "mcp_server", "apikey", "audit_log")


def _dump(conn: Any) -> dict[str, list[Any]]:
    return {
        t: conn.execute(f'SELECT t::text FROM "{t}" t ORDER BY t::text').fetchall()
        for t in TARGET_TABLES
    }


def test_the_bulk_path_writes_what_the_python_path_writes(env: Env) -> None:
    """The same legacy data backfilled twice, by COPY chunks and compiled SQL into one target and
    row by row through the Python transforms into another: every target table is equal, value
    for value, and both dead-letter the same rows."""
    from transforms.mcp_manager.target_schema import apply_target_schema

    env.mcp_schemas(scale=2, seed=11)
    with env.legacy_conn() as c:
        c.execute(USER, (str(uuid.uuid4()), "Refused@Example.com"))
        c.execute(
            "INSERT INTO audit_log (action, metadata, created_at) VALUES"
            " ('esc', '{\"s\": \"\\\\ud83d\\\\ude00 \\\\\\\\u0000 tab\\\\t\"}', now()),"
            " ('null', 'null', now()), ('naive', '[1, \"a\"]', '2024-02-29 23:59:59.999999+05:30')"
        )
    python_db = f"{env.target_db}_py"
    server = env.services.target
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{python_db}"')
    python_target = server.settings(python_db)
    apply_target_schema(python_target.url())
    runs = [
        (env.settings(), env.target_conn),
        (
            env.settings(name=f"{env.name}py", target=python_target, backfill={"compiled": False}),
            lambda: psycopg.connect(python_target.conninfo(), autocommit=True),
        ),
    ]
    pipelines = [Pipeline(s, load_mapping(MCP)) for s, _ in runs]
    try:
        for p in pipelines:
            p.start()
        for s, connect in runs:

            def applied(connect: Any = connect) -> bool:
                with connect() as c:
                    try:
                        row = c.execute("SELECT status FROM replicator.backfill").fetchone()
                    except psycopg.errors.UndefinedTable:
                        return False
                return row == ("applied",)

            wait_for(applied, 120, what=f"the backfill of {s.name}")
        with env.target_conn() as c:
            paths = dict(c.execute("SELECT table_name, path FROM replicator.backfill_progress"))
        assert set(paths.values()) == {"sql"}, paths
        with runs[1][1]() as c:
            paths = dict(c.execute("SELECT table_name, path FROM replicator.backfill_progress"))
        assert set(paths.values()) == {"python: backfill.compiled is off"}, paths
        with env.target_conn() as bulk, runs[1][1]() as python:
            got, want = _dump(bulk), _dump(python)
        for table in TARGET_TABLES:
            assert got[table] == want[table], table
            assert got[table], table
        letters = [
            sorted(
                (x.table, json.dumps(x.key), x.reason)
                for x in map(
                    DeadLetter.decode,
                    read_topic(s.kafka.bootstrap_servers, s.topic("fwd", "dlq"), 5),
                )
            )
            for s, _ in runs
        ]
        assert letters[0] == letters[1] and len(letters[0]) == 1, letters
    finally:
        for p in pipelines:
            p.shutdown()
        with env.legacy_conn() as c:
            c.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (runs[1][0].slot("fwd"),),
            )
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{python_db}" WITH (FORCE)')


def test_a_target_gone_while_a_chunk_is_planned_is_a_retriable_error(env: Env) -> None:
    """The first chunk of a table reads the target's catalog: a target restarting right then
    (as in tests/e2e/test_faults.py) is a temporary error the worker retries, never a crash."""
    from connectors.copy_chunk import CopyChunk
    from connectors.envelope import RelationInfo
    from connectors.pgsink import Batch, Sink
    from replicator.apply.bulk import BulkLoader
    from replicator.errors import TransientDatabaseError

    with env.target_conn() as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    conn = psycopg.connect(env.target.conninfo())
    loader = BulkLoader(
        load_mapping("identity:public.t").forward,
        Sink(conn, "target"),
        "target",
        flush=lambda batch: None,
        change=lambda *a: None,
        dead=lambda *a: None,
        count=lambda *a: None,
        connect=lambda: psycopg.connect(env.target.conninfo()),
    )
    with env.target_conn() as c:
        c.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    relation = RelationInfo("public", "t", ("id", "v"), (23, 25), ("id",))
    chunk = CopyChunk("p", 1, relation, ("integer", "text"), (), 1, b"1\ta\n")
    try:
        with pytest.raises(TransientDatabaseError):
            loader.load(0, 0, chunk.encode(), Batch())
    finally:
        loader.close()
        conn.close()


def _loader(
    env: Env, mapping: str, conn: psycopg.Connection[Any], change: Any = lambda *a: None
) -> Any:
    from connectors.pgsink import Sink
    from replicator.apply.bulk import BulkLoader

    return BulkLoader(
        load_mapping(mapping).forward,
        Sink(conn, "target"),
        "target",
        flush=lambda batch: None,
        change=change,
        dead=lambda *a: None,
        count=lambda *a: None,
        connect=lambda: psycopg.connect(env.target.conninfo()),
    )


def _chunk(data: bytes, types: tuple[str, str] = ("integer", "text")) -> bytes:
    from connectors.copy_chunk import CopyChunk
    from connectors.envelope import RelationInfo

    relation = RelationInfo("public", "t", ("id", "v"), (23, 25), ("id",))
    return CopyChunk("p", 1, relation, types, (), data.count(b"\n"), data).encode()


def _staged(conn: psycopg.Connection[Any]) -> bool:
    """Whether the loader's session made its staging table (the direct COPY makes none)."""
    row = conn.execute("SELECT to_regclass('pg_temp._bulk_0') IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_an_identity_chunk_is_copied_straight_into_an_empty_target_and_a_replay_upserts(
    env: Env,
) -> None:
    """The direct COPY skips the staging table (half an identity load's work); the same chunk
    again (a replay after a crash) meets its keys, and the staged upsert loads it instead of
    failing or duplicating a row."""
    from connectors.pgsink import Batch

    with env.target_conn() as c:
        c.execute("CREATE TABLE t (v text, id int PRIMARY KEY, note text DEFAULT 'kept')")
    conn = psycopg.connect(env.target.conninfo())
    loader = _loader(env, "identity:public.t", conn)
    try:
        loader.load(0, 0, _chunk(b"1\ta\n2\tb\n"), Batch())
        assert not _staged(conn)
        conn.commit()
        loader.load(0, 1, _chunk(b"2\tB\n3\tc\n"), Batch())  # key 2 again: a replayed chunk
        assert _staged(conn)
        conn.commit()
        rows = conn.execute("SELECT id, v, note FROM t ORDER BY id").fetchall()
        assert rows == [(1, "a", "kept"), (2, "B", "kept"), (3, "c", "kept")]
    finally:
        loader.close()
        conn.close()


def test_a_value_the_target_refuses_in_a_direct_copy_sends_the_chunk_row_by_row(
    env: Env,
) -> None:
    """Identity text into wider types is COPYed as it is; a value too long for a varchar(n)
    is refused by COPY (as the live path's insert refuses it), and the chunk goes the Python
    way, where the worker dead-letters that row alone."""
    from connectors.pgsink import Batch

    with env.target_conn() as c:
        c.execute("CREATE TABLE t (id bigint PRIMARY KEY, v varchar(2))")
    conn = psycopg.connect(env.target.conninfo())
    changes: list[Any] = []
    loader = _loader(env, "identity:public.t", conn, change=lambda *a: changes.append(a[1]))
    try:
        loader.load(0, 0, _chunk(b"1\ta\n"), Batch())
        assert not _staged(conn)
        loader.load(0, 1, _chunk(b"2\tb\n3\tlong\n"), Batch())
        conn.commit()
        assert conn.execute("SELECT id, v FROM t").fetchall() == [(1, "a")]
        assert [ch.new for ch in changes] == [{"id": "2", "v": "b"}, {"id": "3", "v": "long"}]
    finally:
        loader.close()
        conn.close()


def test_a_staged_cast_never_cuts_a_value_to_the_column_size(env: Env) -> None:
    """A target that held a row takes the staged upsert, whose cast to varchar(n) used to
    cut 'long' to 'lo' without a word: the column's own check refuses it now, and the chunk
    goes the Python way as a direct COPY's refusal does."""
    from connectors.pgsink import Batch

    with env.target_conn() as c:
        c.execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, v varchar(2)); INSERT INTO t VALUES (0, 'z')"
        )
    conn = psycopg.connect(env.target.conninfo())
    changes: list[Any] = []
    loader = _loader(env, "identity:public.t", conn, change=lambda *a: changes.append(a[1]))
    try:
        loader.load(0, 0, _chunk(b"3\tlong\n"), Batch())
        conn.commit()
        assert conn.execute("SELECT id, v FROM t").fetchall() == [(0, "z")]
        assert [ch.new for ch in changes] == [{"id": "3", "v": "long"}]
    finally:
        loader.close()
        conn.close()
