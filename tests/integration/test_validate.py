"""Validation against real PostgreSQL with the MCP mapping: clean data passes, every injected
corruption is found with its key, and the same holds while live sync runs under a writer."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.rows import dict_row

from connectors import pg
from connectors.pgsink import Batch, Sink
from replicator.config import DatabaseSettings
from replicator.errors import DataError
from replicator.runtime.pipeline import Pipeline
from replicator.validate.report import Report, last_validation
from replicator.validate.run import validate
from tests.e2e.cli import run_cli
from tests.support import Env, mcp_writer, wait_for
from transforms.api import RowChange
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate
from transforms.mcp_manager.legacy import create_legacy_schema
from transforms.mcp_manager.target_schema import apply_target_schema


def _url(db: DatabaseSettings) -> str:
    password = quote(db.password.get_secret_value(), safe="")
    return f"postgresql://{db.user}:{password}@{db.host}:{db.port}/{db.dbname}"


def _schemas(env: Env) -> None:
    create_legacy_schema(_url(env.legacy))
    apply_target_schema(_url(env.target))


def _load(env: Env) -> None:
    """What a backfill would do, directly: every legacy row through the forward transforms."""
    with env.legacy_conn() as lc, pg.connect(env.target.conninfo()) as tc:
        tc.execute("SET session_replication_role = replica")
        batch = Batch()
        for t in MAPPING.forward.tables.values():
            for row in lc.cursor(row_factory=dict_row).execute(f"SELECT * FROM {t.source}"):
                try:
                    ops = t(RowChange("insert", t.source, new=row, key_columns=t.source_key))
                except DataError:
                    continue
                for op in ops:
                    batch.add(op)
        Sink(tc).flush(batch)
        tc.commit()


@pytest.fixture
def loaded(env: Env) -> Env:
    _schemas(env)
    generate(_url(env.legacy), scale=1, seed=7, create_schema=False)
    _load(env)
    return env


def _found(report: Report, table: str, kind: str) -> list[dict[str, str]]:
    return [d.key for d in report.differences if d.table == table and d.kind == kind]


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_clean_data_passes_and_is_recorded(loaded: Env) -> None:
    s = loaded.settings()
    report = validate(s, MAPPING)
    assert report.outcome == "clean", report.to_json(limit=5)
    assert report.exit_code == 0
    assert not report.live
    by_table = {t.table: t for t in report.tables}
    assert set(by_table) == set(MAPPING.forward.target_tables)
    assert by_table["public.audit_log"].rows_checked == 2000
    assert by_table["public.user"].expected_rows == by_table["public.user"].target_rows > 0
    with loaded.target_conn() as c:
        last = last_validation(c)
    assert last is not None
    assert (last["outcome"], last["scope"], last["id"]) == ("clean", "full", report.run_id)

    # One table; by target or by source name (a source table checks what it writes).
    one = validate(s, MAPPING, table="user_profile")
    assert [t.table for t in one.tables] == ["public.user"]
    assert one.outcome == "clean"


def test_every_corruption_is_found_with_its_key(loaded: Env) -> None:
    with loaded.target_conn() as c:
        gone_key = _one(c, "SELECT id FROM apikey ORDER BY id LIMIT 1")
        c.execute("DELETE FROM apikey WHERE id = %s", (gone_key,))
        org = _one(c, "SELECT id FROM organization ORDER BY id LIMIT 1")
        c.execute("UPDATE organization SET name = name || ' (edited)' WHERE id = %s", (org,))
        c.execute(
            "INSERT INTO audit_log (id, action, created_at) VALUES (987654321, 'forged', now())"
        )
        server = _one(c, "SELECT id FROM mcp_server WHERE config IS NOT NULL ORDER BY id LIMIT 1")
        # As if an update that left the TOASTed config unchanged had been applied as NULL.
        c.execute("UPDATE mcp_server SET config = NULL WHERE id = %s", (server,))
        # A user whose membership stays behind: foreign-key triggers off, as in apply.
        c.execute("SET session_replication_role = replica")
        member_id, user_id = c.execute(
            "SELECT id, user_id FROM member ORDER BY id LIMIT 1"
        ).fetchone() or (None, None)
        c.execute('DELETE FROM "user" WHERE id = %s', (user_id,))

    report = validate(loaded.settings(), MAPPING)
    assert report.outcome == "different"
    assert report.exit_code == 1
    assert _found(report, "public.apikey", "missing") == [{"id": gone_key}]
    assert _found(report, "public.audit_log", "extra") == [{"id": "987654321"}]
    assert _found(report, "public.user", "missing") == [{"id": user_id}]
    edited = [d for d in report.differences if d.table == "public.organization"]
    assert [(d.kind, d.key, d.columns) for d in edited] == [("differs", {"id": org}, ["name"])]
    assert edited[0].actual["name"] == f"{edited[0].expected['name']} (edited)"
    toast = [d for d in report.differences if d.table == "public.mcp_server"]
    assert [(d.kind, d.key, d.columns) for d in toast] == [
        ("differs", {"id": str(server)}, ["config"])
    ]
    assert toast[0].actual["config"] is None and toast[0].expected["config"]
    orphans = {(o.table, o.parent, tuple(o.key.values())) for o in report.orphans}
    assert ("public.member", "public.user", (member_id,)) in orphans
    assert all(o.parent == "public.user" for o in report.orphans)
    assert {o.columns.get("user_id") for o in report.orphans} == {user_id}

    # The CLI says the same, as documented JSON, with a non-zero exit code.
    done = run_cli(["validate", "--json", "--table", "organization"], loaded.env_vars())
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert out["version"] == 1 and out["outcome"] == "different"
    assert [(d["kind"], d["key"]) for d in out["differences"]] == [("differs", {"id": org})]


# -- live sync -----------------------------------------------------------------------------------


def test_live_sync_under_a_writer(env: Env) -> None:
    _schemas(env)
    s = env.settings()
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()  # slot first: only changes after it are replicated (no backfill here)
    stop = threading.Event()
    try:
        generate(_url(env.legacy), scale=1, seed=11, create_schema=False)
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT count(*) FROM audit_log") == 2000,
                timeout=60,
                what="generated rows applied",
            )
        counts: dict[str, int] = {}
        writer = threading.Thread(target=mcp_writer, args=(env, stop, counts), daemon=True)
        writer.start()
        wait_for(lambda: counts.get("txns", 0) > 20, timeout=20, what="writer running")

        report = validate(s, MAPPING)
        assert report.live
        assert report.outcome == "clean", report.to_json(limit=10)

        # A corruption of a row the writer never touches (the first organization) is found,
        # and nothing the writer changes meanwhile is blamed.
        with env.legacy_conn() as c:
            org = str(_one(c, "SELECT id FROM organization ORDER BY id LIMIT 1"))
        with env.target_conn() as c:
            c.execute("UPDATE organization SET slug = slug || '-x' WHERE id = %s", (org,))
        report = validate(s, MAPPING)
        assert report.live and not report.lagging
        assert [(d.table, d.kind, d.key, d.columns) for d in report.differences] == [
            ("public.organization", "differs", {"id": org}, ["slug"])
        ]
        with env.target_conn() as c:
            c.execute("UPDATE organization SET slug = left(slug, -2) WHERE id = %s", (org,))

        # --fast: only keys changed since the last clean full run, still under the writer.
        assert validate(s, MAPPING).outcome == "clean"
        with env.legacy_conn() as c:
            c.execute("UPDATE organization SET name = 'renamed' WHERE id = %s", (org,))
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, f"SELECT name FROM organization WHERE id = '{org}'") == "renamed",
                what="rename applied",
            )
            c.execute("UPDATE organization SET slug = slug || '-y' WHERE id = %s", (org,))
        fast = validate(s, MAPPING, fast=True)
        assert fast.scope == "fast" and fast.since_run_id is not None
        assert 0 < fast.rows_checked < 1000
        assert [(d.table, d.kind, d.key, d.columns) for d in fast.differences] == [
            ("public.organization", "differs", {"id": org}, ["slug"])
        ]
    finally:
        stop.set()
        pipeline.shutdown()
