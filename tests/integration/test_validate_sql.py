"""Validation by checksums in both databases (replicator.validate.sql) with the MCP mapping."""

from __future__ import annotations

import uuid

from replicator.validate.run import validate
from tests.integration.test_validate import _load, _schemas
from tests.support import Env
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate


def _paths(report: object) -> dict[str, tuple[str, str | None]]:
    return {t.table: (t.path, t.path_reason) for t in report.tables}  # type: ignore[attr-defined]


def test_compiled_tables_are_checked_in_sql_and_rows_it_cannot_vouch_for_in_python(
    env: Env,
) -> None:
    _schemas(env)
    generate(env.url("legacy"), scale=1, seed=3, create_schema=False)
    upper, accented = uuid.uuid4(), uuid.uuid4()
    with env.legacy_conn() as c:
        # Refused by the transform (dead-lettered): the SQL form flags it, Python names why.
        c.execute(
            'INSERT INTO "user" (id, email, hashed_password, is_active, is_superuser)'
            " VALUES (%s, 'Mixed@Example.com', 'x', true, false)",
            (upper,),
        )
        # Accepted by Python, but not plain ASCII: SQL leaves it to Python, which maps it.
        c.execute(
            'INSERT INTO "user" (id, email, hashed_password, is_active, is_superuser)'
            " VALUES (%s, 'zoë@example.com', 'x', true, false)",
            (accented,),
        )
    _load(env)

    report = validate(env.settings(), MAPPING)
    paths = _paths(report)
    # Every table in SQL; the membership's uuid5 id (no SQL twin: no SHA-1 in core
    # PostgreSQL) is computed by Python from its source key and joined in.
    assert {t: p for t, (p, _) in paths.items()} == dict.fromkeys(paths, "sql"), paths
    assert set(paths) == set(MAPPING.forward.target_tables)
    assert [(r.source, r.key) for r in report.rejected] == [("public.user", {"id": str(upper)})]
    assert "lower-case" in report.rejected[0].reason
    assert report.differences == [] and report.orphan_count == 0, report.to_json(limit=5)

    # One planted difference among all the audit rows is found and named, on both paths.
    with env.target_conn() as c:
        victim = c.execute("SELECT id FROM audit_log ORDER BY id OFFSET 1234 LIMIT 1").fetchone()
        assert victim is not None
        c.execute("UPDATE audit_log SET target = target || '!' WHERE id = %s", victim)
        c.execute("UPDATE \"user\" SET name = 'Zoë' WHERE id = %s", (str(accented),))
    for python_path in (False, True):
        got = validate(env.settings(), MAPPING, save=False, python_path=python_path)
        found = sorted((d.table, d.kind, d.key["id"], tuple(d.columns)) for d in got.differences)
        assert found == [
            ("public.audit_log", "differs", str(victim[0]), ("target",)),
            ("public.user", "differs", str(accented), ("name",)),
        ], python_path
        audit = next(t for t in got.tables if t.table == "public.audit_log")
        assert audit.path == ("python" if python_path else "sql")
        if not python_path:
            assert audit.chunks_mismatched == 1 and audit.chunks > 1000
