"""Validation by checksums in both databases (replicator.validate.insql.groups) with the MCP mapping."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

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


def test_one_planted_difference_in_a_million_rows_is_found_and_named(env: Env) -> None:
    """The issue's acceptance case: a million audit rows, built in SQL on both sides at once
    (the target shaped as the transform writes it), one value changed in one target row."""
    _schemas(env)
    n = 1_000_000
    rows = (
        " SELECT g, md5(g::text)::uuid{t},"
        " CASE WHEN g %% 3 = 0 THEN NULL ELSE md5((g * 7)::text)::uuid{t} END,"
        " (ARRAY['login', 'logout', 'create', 'delete'])[1 + g %% 4], 'server/' || g,"
        " CASE WHEN g %% 5 = 0 THEN NULL ELSE {j}_build_object('n', g, 'tag', 'x' || g %% 13) END,"
        " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'"
        " FROM generate_series(1, %s) g"
    )

    def fill(connect: Callable[[], psycopg.Connection[Any]], shaped: str) -> None:
        with connect() as c:
            c.execute(
                "INSERT INTO audit_log (id, organization_id, user_id, action, target, metadata,"
                " created_at)" + shaped,
                (n,),
            )
            c.execute("ANALYZE audit_log")

    with ThreadPoolExecutor(2) as pool:  # one server each
        done = [
            pool.submit(fill, env.legacy_conn, rows.format(t="", j="json")),
            pool.submit(fill, env.target_conn, rows.format(t="::text", j="jsonb")),
        ]
        for f in done:
            f.result()
    with env.target_conn() as c:
        c.execute("UPDATE audit_log SET action = 'logon' WHERE id = 777777")

    report = validate(env.settings(), MAPPING, table="audit_log", save=False)
    assert [(t.table, t.path, t.rows_checked) for t in report.tables] == [
        ("public.audit_log", "sql", n)
    ]
    assert [(d.table, d.kind, d.key, d.columns, d.expected, d.actual) for d in report.differences] == [
        ("public.audit_log", "differs", {"id": "777777"}, ["action"], {"action": "logout"},
         {"action": "logon"})
    ]  # fmt: skip
    assert report.rejected == [] and report.orphan_count == 0 and report.outcome == "different"

    # By key (what --fast and the cutover's verify compare): found through the key's index.
    touched = {"public.audit_log": {(i,) for i in range(777_000, 787_000)}}
    keyed = validate(env.settings(), MAPPING, keys=touched, save=False)
    assert {t.path for t in keyed.tables} == {"sql"}
    assert [(t.rows_checked, t.chunks_mismatched) for t in keyed.tables if t.rows_checked] == [
        (10_000, 1)
    ]
    assert [(d.kind, d.key, d.columns) for d in keyed.differences] == [
        ("differs", {"id": "777777"}, ["action"])
    ]


def test_values_swapped_between_two_columns_or_nulled_are_found_in_sql(env: Env) -> None:
    # Rows are hashed column by column (replicator.validate.insql.plan.row_hash): each column's
    # hash is seeded with its position, so two columns trading values changes the row's hash,
    # and a NULL does not hash like any value.
    _schemas(env)
    generate(env.url("legacy"), scale=1, seed=5, create_schema=False)
    _load(env)
    with env.target_conn() as c:
        swapped = c.execute(
            "SELECT id FROM audit_log WHERE organization_id IS NOT NULL AND user_id IS NOT NULL"
            " AND organization_id <> user_id ORDER BY id LIMIT 1"
        ).fetchone()
        nulled = c.execute(
            "SELECT id FROM audit_log WHERE target IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        assert swapped is not None and nulled is not None
        c.execute(
            "UPDATE audit_log SET organization_id = user_id, user_id = organization_id"
            " WHERE id = %s",
            swapped,
        )
        c.execute("UPDATE audit_log SET target = NULL WHERE id = %s", nulled)
    got = validate(env.settings(), MAPPING, save=False)
    audit = next(t for t in got.tables if t.table == "public.audit_log")
    assert audit.path == "sql"
    found = sorted((d.kind, int(d.key["id"]), tuple(d.columns)) for d in got.differences)
    assert found == sorted(
        [
            ("differs", swapped[0], ("organization_id", "user_id")),
            ("differs", nulled[0], ("target",)),
        ]
    ), got.to_json(limit=5)


def test_a_server_refusing_a_second_session_leaves_one_pair_doing_all_groups(
    env: Env, monkeypatch: Any, caplog: Any
) -> None:
    # Groups are compared two at a time on a second pair of sessions; a server at its
    # connection limit must not fail the validation.
    from connectors import pg
    from replicator.errors import ReplicatorError

    _schemas(env)
    generate(env.url("legacy"), scale=1, seed=7, create_schema=False)
    _load(env)
    real = pg.connect
    refused: list[str] = []

    def connect(conninfo: str, **kw: Any) -> Any:
        # The second pair is opened beside the first: refuse its legacy session (the first
        # one opened by the second pair's opener).
        if sys._getframe(1).f_code.co_name == "_open_pair" and not refused:
            refused.append(conninfo)
            raise ReplicatorError("too many clients already")
        return real(conninfo, **kw)

    monkeypatch.setattr(pg, "connect", connect)
    report = validate(env.settings(), MAPPING, save=False)
    assert report.outcome == "clean", report.to_json(limit=5)
    assert {t.table for t in report.tables} == set(MAPPING.forward.target_tables)
    assert refused and "one group at a time" in caplog.text


@pytest.mark.parametrize("key_text", [True, False], ids=["key-text", "python-values"])
def test_keys_computed_by_python_from_the_key_text_or_its_values(
    env: Env, monkeypatch: Any, key_text: bool
) -> None:
    # The uuid5 ids declare that they read the keys' text alike (takes_key_text): the server's
    # text of the keys is fetched and sent back. A converter without the declaration gets
    # Python values. Either way the SQL path vouches for every membership and names a wrong id.
    import transforms.compile

    if not key_text:
        monkeypatch.setattr(transforms.compile, "reads_key_text", lambda fn: False)
    _schemas(env)
    generate(env.url("legacy"), scale=1, seed=5, create_schema=False)
    _load(env)
    with env.target_conn() as c:
        row = c.execute("SELECT id FROM member ORDER BY id LIMIT 1").fetchone()
        assert row is not None
        wrong = str(uuid.uuid4())
        c.execute("UPDATE member SET id = %s WHERE id = %s", (wrong, row[0]))
    report = validate(env.settings(), MAPPING, save=False)
    assert _paths(report)["public.member"] == ("sql", None)
    found = sorted((d.table, d.kind, d.key["id"]) for d in report.differences)
    assert found == [("public.member", "extra", wrong), ("public.member", "missing", row[0])]
