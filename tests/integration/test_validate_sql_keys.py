"""Validation by source key in both databases (replicator.validate.insql.keys): what ``validate
--fast`` and the cutover's verify compare, with the MCP mapping. The SQL path must give the
Python path's report (same differences, rejected rows, counts), with Python judging only the
keys whose md5 differ or that the SQL form does not vouch for."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from replicator.cutover.verify import KeyedCheck
from replicator.runtime.pipeline import Pipeline
from replicator.validate.expect import SourceKey
from replicator.validate.insql import keys as sql_keys
from replicator.validate.insql import passes
from replicator.validate.report import Report
from replicator.validate.run import validate
from tests.integration.test_validate import _load, _schemas
from tests.support import Env, mcp_writer, wait_for
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate


def _entries(report: Report) -> list[tuple[Any, ...]]:
    return sorted(
        (d.table, d.kind, tuple(sorted(d.key.items())), tuple(d.columns),
         tuple(sorted(d.expected.items())), tuple(sorted(d.actual.items())))
        for d in report.differences
    )  # fmt: skip


def _counts(report: Report) -> dict[str, tuple[int, int, int]]:
    return {t.table: (t.rows_checked, t.expected_rows, t.target_rows) for t in report.tables}


@pytest.fixture
def folded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, set[SourceKey]]]]:
    """The source keys the SQL path hands to Python, call by call."""
    calls: list[dict[str, set[SourceKey]]] = []
    real = sql_keys.fold_keys

    def spy(conn: Any, direction: Any, keys: Any, shapes: Any, *, partial: bool) -> Any:
        calls.append({s: set(k) for s, k in keys.items()})
        return real(conn, direction, keys, shapes, partial=partial)

    monkeypatch.setattr(sql_keys, "fold_keys", spy)
    yield calls


def _ids(c: Any, query: str) -> list[Any]:
    return [r[0] for r in c.execute(query).fetchall()]


def test_touched_keys_compared_in_sql_give_the_python_report(
    env: Env, folded: list[dict[str, set[SourceKey]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _schemas(env)
    generate(env.url("legacy"), scale=1, seed=5, create_schema=False)
    _load(env)
    with env.legacy_conn() as c:
        users = _ids(c, 'SELECT id FROM "user" ORDER BY id LIMIT 12')
        profiles = _ids(c, "SELECT user_id FROM user_profile ORDER BY user_id LIMIT 8")
        members = [
            tuple(r)
            for r in c.execute(
                "SELECT organization_id, user_id FROM organization_member ORDER BY 1, 2 LIMIT 6"
            ).fetchall()
        ]
        audits = _ids(c, "SELECT id FROM audit_log ORDER BY id LIMIT 300")
        servers = _ids(c, "SELECT id FROM mcp_server ORDER BY id LIMIT 5")
        keys_ = _ids(c, "SELECT id FROM api_key ORDER BY id LIMIT 5")
        # On legacy only: refused by the transform (dead-lettered), and a vanished row.
        upper = uuid.uuid4()
        c.execute(
            'INSERT INTO "user" (id, email, hashed_password, is_active, is_superuser)'
            " VALUES (%s, 'Upper@Example.com', 'x', true, false)",
            (upper,),
        )
        c.execute("DELETE FROM audit_log WHERE id = %s", (audits[-1],))
        # Accepted by Python, but not plain ASCII: flagged by SQL, judged by Python (missing).
        accented = uuid.uuid4()
        c.execute(
            'INSERT INTO "user" (id, email, hashed_password, is_active, is_superuser)'
            " VALUES (%s, 'zoë@example.com', 'x', true, false)",
            (accented,),
        )
    with env.target_conn() as c:  # planted differences, one per kind of writer
        c.execute("SET session_replication_role = replica")  # as apply writes: no FK triggers
        c.execute("UPDATE audit_log SET target = 'planted' WHERE id = %s", (audits[100],))
        c.execute("UPDATE \"user\" SET bio = 'planted' WHERE id = %s", (str(profiles[3]),))
        c.execute("UPDATE \"user\" SET name = 'planted' WHERE id = %s", (str(users[2]),))
        c.execute("UPDATE account SET password = 'planted' WHERE user_id = %s", (str(users[5]),))
        c.execute(
            "UPDATE member SET role = 'planted' WHERE organization_id = %s AND user_id = %s",
            (str(members[1][0]), str(members[1][1])),
        )
        c.execute("DELETE FROM mcp_server WHERE id = %s", (servers[2],))
    touched: dict[str, set[SourceKey]] = {
        "public.user": {(u,) for u in [*users, upper, accented]},
        "public.user_profile": {(p,) for p in profiles},
        "public.organization_member": set(members),
        "public.audit_log": {(a,) for a in audits},
        "public.mcp_server": {(s,) for s in servers},
        "public.api_key": {(k,) for k in keys_},
    }
    s = env.settings()
    sql = validate(s, MAPPING, keys=touched, save=False)
    python = validate(s, MAPPING, keys=touched, save=False, python_path=True)
    # One group kept on the Python path (as a custom transform would), the rest in SQL.
    real_plan = passes.group_plan

    def audit_in_python(ctx: Any, group: list[str]) -> Any:
        return "forced" if "public.audit_log" in group else real_plan(ctx, group)

    monkeypatch.setattr(passes, "group_plan", audit_in_python)
    mixed = validate(s, MAPPING, keys=touched, save=False)
    monkeypatch.setattr(passes, "group_plan", real_plan)
    assert {t.table: (t.path, t.path_reason) for t in mixed.tables}["public.audit_log"] == (
        "python",
        "forced",
    )
    assert {t.path for t in mixed.tables if t.table != "public.audit_log"} == {"sql"}
    assert _entries(mixed) == _entries(python) and _counts(mixed) == _counts(python)
    folded.clear()
    sql = validate(s, MAPPING, keys=touched, save=False)
    assert {t.path for t in sql.tables} == {"sql"}, [(t.table, t.path_reason) for t in sql.tables]
    assert {t.path for t in python.tables} == {"python"}
    assert _entries(sql) == _entries(python)
    kinds = sorted((d.table, d.kind, tuple(d.columns)) for d in sql.differences)
    assert kinds == [
        ("public.account", "differs", ("password",)),
        ("public.account", "missing", ()),
        ("public.audit_log", "differs", ("target",)),
        ("public.audit_log", "extra", ()),
        ("public.mcp_server", "missing", ()),
        ("public.member", "differs", ("role",)),
        ("public.user", "differs", ("bio",)),
        ("public.user", "differs", ("name",)),
        ("public.user", "missing", ()),
    ], kinds
    missing = {d.table: d.key for d in sql.differences if d.kind == "missing"}
    assert missing["public.user"] == {"id": str(accented)}
    assert missing["public.account"]["user_id"] == str(accented)
    keyed = {(d.table, d.kind): d.key for d in sql.differences if d.table != "public.user"}
    assert keyed[("public.audit_log", "extra")] == {"id": str(audits[-1])}
    assert keyed[("public.mcp_server", "missing")] == {"id": str(servers[2])}
    assert keyed[("public.account", "differs")]["user_id"] == str(users[5])
    assert [(r.source, r.key, r.reason) for r in sql.rejected] == [
        (r.source, r.key, r.reason) for r in python.rejected
    ]
    assert [(r.source, r.key) for r in sql.rejected] == [("public.user", {"id": str(upper)})]
    assert _counts(sql) == _counts(python)
    assert sql.rows_checked == python.rows_checked > 300
    # Python saw only what differs or what the SQL form left to it: not the 300 audit rows.
    seen = {s: set(k) for call in folded for s, k in call.items()}
    assert seen["public.audit_log"] == {(audits[100],), (audits[-1],)}
    assert len(seen.get("public.mcp_server", ())) == 1
    audit = next(t for t in sql.tables if t.table == "public.audit_log")
    assert (audit.chunks, audit.chunks_mismatched) == (299, 1)  # keys compared in SQL


def test_the_cutovers_keyed_check_in_sql_and_in_python(
    env: Env, folded: list[dict[str, set[SourceKey]]]
) -> None:
    _schemas(env)
    generate(env.url("legacy"), scale=1, seed=9, create_schema=False)
    _load(env)
    with env.legacy_conn() as c:
        audits = _ids(c, "SELECT id FROM audit_log ORDER BY id LIMIT 5")
        users = _ids(c, 'SELECT id FROM "user" ORDER BY id LIMIT 3')
    with env.target_conn() as c:
        c.execute("UPDATE audit_log SET action = 'planted' WHERE id = %s", (audits[3],))
    keys: dict[str, set[SourceKey]] = {
        "public.audit_log": {(a,) for a in audits},
        "public.user": {(u,) for u in users},
    }
    found = {}
    for python_path in (False, True):
        check = KeyedCheck(env.settings(), MAPPING, python_path=python_path)
        try:
            clean = check.compare({"public.user": keys["public.user"]}, set())
            assert not clean and clean.rows_checked > 0
            found[python_path] = check.compare(keys, set())
        finally:
            check.close()
    sql, python = found[False], found[True]
    assert [(d.table, d.kind, d.key, d.columns) for d in sql.differences] == [
        ("public.audit_log", "differs", {"id": str(audits[3])}, ["action"])
    ]
    assert sql.differences == python.differences
    assert sql.keys == python.keys == {"public.audit_log": {(audits[3],)}}
    assert (sql.full, sql.rejected, sql.rows_checked) == (
        python.full,
        python.rejected,
        python.rows_checked,
    )
    # The SQL path handed Python the one differing row only.
    assert folded == [{"public.audit_log": {(audits[3],)}}]


def test_fast_validation_under_live_sync_finds_a_planted_difference_in_sql(env: Env) -> None:
    _schemas(env)
    s = env.settings()
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()  # slot first: the generated rows arrive through the changes topic
    stop = threading.Event()
    try:
        generate(env.url("legacy"), scale=1, seed=13, create_schema=False)
        with env.target_conn() as c:
            wait_for(
                lambda: c.execute("SELECT count(*) FROM audit_log").fetchone() == (2000,),
                timeout=60,
                what="generated rows applied",
            )
        assert validate(s, MAPPING).outcome == "clean"
        counts: dict[str, int] = {}
        writer = threading.Thread(target=mcp_writer, args=(env, stop, counts), daemon=True)
        writer.start()
        wait_for(lambda: counts.get("txns", 0) > 10, timeout=20, what="writer running")
        with env.legacy_conn() as c:
            server = _ids(c, "SELECT id FROM mcp_server ORDER BY id LIMIT 1")[0]
            c.execute("UPDATE mcp_server SET url = 'https://fast.example' WHERE id = %s", (server,))
        with env.target_conn() as c:
            wait_for(
                lambda: (
                    c.execute("SELECT url FROM mcp_server WHERE id = %s", (server,)).fetchone()
                    == ("https://fast.example",)
                ),
                what="the change applied",
            )
            c.execute("UPDATE mcp_server SET command = 'planted' WHERE id = %s", (server,))
        for python_path in (False, True):
            fast = validate(s, MAPPING, fast=True, save=False, python_path=python_path)
            assert fast.live and fast.scope == "fast"
            paths = {t.table: t.path for t in fast.tables}
            assert paths["public.mcp_server"] == ("python" if python_path else "sql")
            assert [(d.table, d.kind, d.key, d.columns) for d in fast.differences] == [
                ("public.mcp_server", "differs", {"id": str(server)}, ["command"])
            ], (python_path, fast.to_json(limit=5))
            assert fast.unsettled_count == 0
    finally:
        stop.set()
        pipeline.shutdown()


def test_listed_keys_reach_the_server_as_they_are(env: Env) -> None:
    """Keys are listed in the statement as array literals: any text must come back unchanged."""
    from replicator.validate.insql.groups import SESSION_SQL, array_literal

    tricky = ['a"b', "back\\slash", "it's", "{}", "NULL", "a,b", " padded ", "zoë ⇄", "", None]
    with env.legacy_conn() as c:
        c.execute(SESSION_SQL)
        got = c.execute(f"SELECT {array_literal(tricky)}::text[]").fetchone()
    assert got == (tricky,)


def test_a_mapping_whose_sql_holds_a_percent_sign(env: Env) -> None:
    """Compiled SQL may hold '%' (a constant, a mapped value): statements that also take
    parameters must not read it as a placeholder, in the full and in the keyed comparison."""
    from transforms.api import MappingSet
    from transforms.declarative import Target, const, direction, table_mapping

    item = table_mapping(
        "public.item",
        [Target("public.item", key={"id": "id"}, columns={"name": "name", "note": const("100%")})],
        source_key=("id",),
    )
    mapping = MappingSet("pct", forward=direction(item), reverse=direction())
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, name text)")
        c.execute("INSERT INTO item SELECT g, 'n' || g FROM generate_series(1, 50) g")
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, name text, note text)")
        c.execute("INSERT INTO item SELECT g, 'n' || g, '100%' FROM generate_series(1, 50) g")
        c.execute("UPDATE item SET note = '99%' WHERE id = 7")
    full = validate(env.settings(), mapping, save=False)
    keyed = validate(env.settings(), mapping, keys={"public.item": {(7,), (8,)}}, save=False)
    for report in (full, keyed):
        assert [t.path for t in report.tables] == ["sql"]
        assert [(d.kind, d.key, d.columns, d.actual) for d in report.differences] == [
            ("differs", {"id": "7"}, ["note"], {"note": "99%"})
        ]
