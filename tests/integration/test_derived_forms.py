"""Derived SQL forms of the TPC-B mapping's plain Python converters (replicator.derived):
proved on the server and on live rows before use, and a subtly wrong derivation caught.

One scenario on a small copy of pgbench's tables (as ``pgbench -i`` makes them, plus the
history key bench.tpcb_mapping asks for): which column runs where, the compiled plan using the
derived forms, and two injected wrong derivations — one the property test catches, one only
the live sample can (its difference needs a value the generated ones never hold) — each
sending its columns the Python way with the reason, so that neither backfill nor validation
would use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import replicator.derived as derived
from bench import tpcb_mapping as tpcb
from bench.validate import _load
from replicator.check import _paths
from replicator.validate.run import validate
from tests.support import Env
from transforms.compile import CompiledTable, NotCompiled, compile_table
from transforms.derive import form
from transforms.sql_twins import Expr, twin_of

LEGACY_DDL = (
    "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))",
    "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))",
    "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
    "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp,"
    " filler char(22))",
    tpcb.LEGACY_HISTORY_KEY,
    "INSERT INTO pgbench_branches SELECT b, b * 7, NULL FROM generate_series(1, 2) b",
    "INSERT INTO pgbench_tellers SELECT t, 1 + t % 2, -t, 'teller ' || t FROM generate_series(1, 20) t",
    # Live fillers with a doubled letter: nothing the property test generates holds "QQ".
    "INSERT INTO pgbench_accounts SELECT a, 1 + a % 2, a * 3 - 500, CASE WHEN a % 5 = 0"
    " THEN 'QQ ' || a END FROM generate_series(1, 400) a",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) SELECT 1 + h % 20,"
    " 1 + h % 2, 1 + h, h - 50, '2026-01-01'::timestamp + h * interval '1 s', NULL"
    " FROM generate_series(1, 100) h",
    "ANALYZE",
)


@pytest.fixture
def legacy(env: Env) -> Iterator[Any]:
    with env.legacy_conn() as conn:
        for stmt in LEGACY_DDL:
            conn.execute(stmt)
        yield conn
    derived.forget()


def target_exec(env: Env, stmt: str) -> None:
    with env.target_conn() as c:
        c.execute(stmt)


def _where(placements: list[derived.Placement]) -> dict[tuple[str, str], str]:
    return {(p.source, p.column): p.where for p in placements}


def test_derived_forms_are_proved_used_and_a_wrong_one_falls_back(
    env: Env, legacy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cols = {"aid": "int", "bid": "int", "abalance": "int", "filler": "text"}
    derived.forget()
    placements = derived.prove_direction(tpcb.MAPPING.forward, legacy)
    where = _where(placements)
    accounts = "public.pgbench_accounts"
    assert where[(accounts, "account_balance.balance_cents")] == derived.DERIVED
    assert where[(accounts, "account.note")] == derived.DERIVED
    assert where[("public.pgbench_history", "transfer.created_at")] == derived.TWIN  # to_utc
    assert where[(accounts, "account.id")] == derived.COPIED
    assert isinstance(compile_table(tpcb.ACCOUNTS, cols), CompiledTable)
    # The reverse direction's cents_to_units unpacks a divmod: not derived, and it says why.
    with env.target_conn() as target:
        back = derived.prove_direction(tpcb.MAPPING.reverse, target)
    assert {p.where for p in back} <= {derived.PYTHON, derived.COPIED}
    why = {p.column: p.why for p in back}["pgbench_branches.bbalance"]
    assert why == "cents_to_units: no derived form: line 4: only assignments to one name", why

    # Validation proves the forms itself and compares every table in SQL with them.
    for ddl in tpcb.TARGET_DDL:
        target_exec(env, ddl)
    _load(env.legacy, env.target, tpcb.MAPPING)
    report = validate(env.settings(), tpcb.MAPPING, save=False)
    assert report.outcome == "clean" and {t.path for t in report.tables} == {"sql"}, report

    # `replicator check` lists the same, one line per converted column.
    lines = [
        f.message for f in _paths(env.settings(mapping="bench.tpcb_mapping:MAPPING"), tpcb.MAPPING)
    ]
    assert f"{accounts} → account.note: derived SQL" in "\n".join(lines)

    # 1. Subtly wrong: rstrip(" ") derived as btrim (leading blanks stripped too). The
    # property test's "  abc" catches it; the columns go the Python way, and compile with them.
    real = form._Translator._method

    def btrim(name: str, x: Expr, args: list[Expr], line: int) -> Expr:
        e = real(name, x, args, line)
        return Expr(e.sql.replace("rtrim(", "btrim("), e.type, e.checks)

    monkeypatch.setattr(form._Translator, "_method", staticmethod(btrim))
    derived.forget()
    placements = derived.prove_direction(tpcb.MAPPING.forward, legacy)
    note = next(p for p in placements if p.column == "account.note")
    assert note.where == derived.PYTHON and "property test" in note.why, note
    assert "Python gives '  abc'" in note.why or "Python gives" in note.why
    assert twin_of(tpcb.ACCOUNT_FILLER.strip) is None
    assert isinstance(compile_table(tpcb.ACCOUNTS, cols), NotCompiled)
    assert _where(placements)[(accounts, "account_balance.balance_cents")] == derived.DERIVED
    # ... and validation takes the Python path for the accounts, which still agree.
    report = validate(env.settings(), tpcb.MAPPING, save=False)
    paths = {t.table: (t.path, t.path_reason) for t in report.tables}
    assert report.outcome == "clean" and paths["public.account"][0] == "python", paths
    assert paths["public.account_balance"][0] == "python"  # the same source rows

    # 2. Wrong only on values like the live ones: the sample of the live rows catches it.
    def doubled(name: str, x: Expr, args: list[Expr], line: int) -> Expr:
        e = real(name, x, args, line)
        return Expr(
            e.sql.replace("rtrim(", "rtrim(replace(", 1).replace(", ' '", ", 'QQ', 'Q'), ' '", 1),
            e.type,
            e.checks,
        )

    monkeypatch.setattr(form._Translator, "_method", staticmethod(doubled))
    derived.forget()
    note = next(
        p
        for p in derived.prove_direction(tpcb.MAPPING.forward, legacy)
        if p.column == "account.note"
    )
    assert note.where == derived.PYTHON and "live rows" in note.why, note
    assert twin_of(tpcb.ACCOUNT_FILLER.strip) is None
