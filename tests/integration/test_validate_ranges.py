"""Continuous validation by key range (replicator.runtime.continuous,
replicator.validate.insql.ranges), against the real servers with tiny ranges: a table is walked
in several ranges with its cursor kept on the target, and a new walker (a restart) continues
from the range where the last one stopped; a direct write to the target inside a range is
found and its key reported, holding the cursor until the range is clean again; a clean manual
validation clears the flag."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from replicator.runtime.continuous import ContinuousValidation, ensure, read_points
from replicator.runtime.pipeline import Pipeline
from replicator.state import ensure_schema
from replicator.validate.insql.ranges import RangeAsk
from replicator.validate.report import Report
from replicator.validate.run import validate
from tests.e2e.cli import run_cli
from tests.integration.test_validate import loaded  # noqa: F401 (a fixture)
from tests.support import Env, wait_for
from transforms.mcp_manager import MAPPING

AUDIT = "public.audit_log"  # 2,000 rows, keyed by an integer id copied as is


def _one(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def _checker(env: Env, range_rows: int = 300) -> ContinuousValidation:
    s = env.settings(
        validation={"continuous": True, "rows_per_s": 1_000_000, "range_rows": range_rows}
    )
    return ContinuousValidation(s, MAPPING)


def _stop_after(checker: ContinuousValidation, n: int) -> None:
    """The walker is stopped (as `replicator run` is) once it has checked ``n`` ranges."""
    inner = checker.check_range

    def check_range(table: str, ask: RangeAsk) -> Report:
        got = inner(table, ask)
        if len(checker.checked) + 1 >= n:
            checker.stop.set()
        return got

    checker.check_range = check_range  # type: ignore[method-assign]


def _cursor(conn: psycopg.Connection[Any], table: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT cursor_key, pass_lsn::text, pass_ranges, verified_lsn::text"
        " FROM replicator.verified_through WHERE table_name = %s",
        (table,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_table_is_walked_in_ranges_and_a_restart_continues_from_the_cursor(
    loaded: Env,  # noqa: F811
) -> None:
    env = loaded
    first = _checker(env)
    _stop_after(first, 3)
    with env.legacy_conn() as legacy, env.target_conn() as target:
        target.autocommit = True
        ensure_schema(target)
        ensure(target)
        got = first.check(legacy, target, AUDIT)
        assert got.outcome == "clean"
        assert [(a, b) for _, a, b in first.checked] == [
            (None, "300"),
            ("300", "600"),
            ("600", "900"),
        ]
        cursor, pass_lsn, ranges, verified = _cursor(target, AUDIT)
        assert (cursor, ranges, verified) == ("900", 3, None) and pass_lsn is not None
        # What status and the page show of the pass under way.
        shown = read_points(target)[AUDIT]["pass"]
        assert shown is not None and (shown["ranges"], shown["after"]) == (3, "900"), shown
        assert shown["rows"] > 0 and shown["began_at"]
        # A restart: a new walker, the same table first (its pass is open), from the cursor.
        again = _checker(env)
        assert again._order(target)[0] == AUDIT
        assert again.check(legacy, target, AUDIT).outcome == "clean"
        assert [(a, b) for _, a, b in again.checked] == [
            ("900", "1200"),
            ("1200", "1500"),
            ("1500", "1800"),
            ("1800", None),  # open-ended: target rows above every legacy key are checked too
        ]
        cursor, now_pass, ranges, verified = _cursor(target, AUDIT)
        # The pass ended clean: the point is its start, and no pass is open.
        assert (cursor, now_pass, verified) == (None, None, pass_lsn)
        assert read_points(target)[AUDIT]["outcome"] == "clean"
        assert read_points(target)[AUDIT]["rows_checked"] == 2000
        assert read_points(target)[AUDIT]["pass"] is None


def test_a_1_to_2_split_is_checked_by_range_on_both_target_tables(loaded: Env) -> None:  # noqa: F811
    """user → user + account (account keyed by (user_id, provider_id)): one range restricts
    both, and a range with a direct write to account finds it."""
    env = loaded
    with env.target_conn() as c:
        users = [str(r[0]) for r in c.execute("SELECT id FROM public.user")]
        assert len(users) > 6
        victim = users[len(users) // 2]
        c.execute(
            "UPDATE account SET provider_id = provider_id || 'x' WHERE user_id = %s", (victim,)
        )
        c.commit()
    s = _checker(env).s
    whole: list[tuple[str | None, str | None]] = []
    after: str | None = None
    found: list[dict[str, str]] = []
    while True:
        got = validate(s, MAPPING, table="public.account", save=False, key_range=RangeAsk(after, 3))
        rng = next(iter(got.ranges.values()))[0]
        assert not isinstance(rng, str), rng  # restricted, not checked whole
        whole.append((rng.lo, rng.hi))
        found += [d.key for d in got.differences]
        if rng.hi is None:
            break
        after = rng.hi
    assert len(whole) >= 3
    assert any(d.get("user_id") == victim for d in found), found


def test_a_direct_target_write_in_a_range_is_found_and_a_clean_validate_clears_it(
    loaded: Env,  # noqa: F811
) -> None:
    env = loaded
    checker = _checker(env)
    with env.legacy_conn() as legacy, env.target_conn() as target:
        target.autocommit = True
        ensure_schema(target)
        ensure(target)
        target.execute("UPDATE audit_log SET action = action || '-x' WHERE id = 1000")
        got = checker.check(legacy, target, AUDIT)
        assert got.outcome == "different"
        assert [d.key for d in got.differences] == [{"id": "1000"}]
        # Stopped at the range holding the key; the ranges before it were clean.
        assert [(a, b) for _, a, b in checker.checked][-1] == ("900", "1200")
        point = read_points(target)[AUDIT]
        assert point["outcome"] == "different" and point["verified_at"] is None
        assert point["keys"] == [{"table": AUDIT, "kind": "differs", "key": {"id": "1000"}}]
        assert _cursor(target, AUDIT)[0] == "900"  # held: the range is checked again next
        # Fixed behind the walk's back, and a manual validation of the table finds it clean:
        # the flag is cleared (it said so), and the cutover preflight no longer refuses.
        target.execute("UPDATE audit_log SET action = left(action, -2) WHERE id = 1000")
        report = validate(checker.s, MAPPING, table="audit_log")
        assert report.outcome == "clean" and report.cleared_flags == [AUDIT]
        assert report.to_json()["cleared_flags"] == [AUDIT]
        assert read_points(target)[AUDIT]["outcome"] == "clean"
        # The walk's next visit re-checks the held range, then finishes the pass.
        again = _checker(env)
        assert again.check(legacy, target, AUDIT).outcome == "clean"
        assert again.checked[0][1:] == ("900", "1200") and again.checked[-1][2] is None
        assert read_points(target)[AUDIT]["verified_lsn"] is not None


def test_a_row_in_flight_during_a_range_is_not_reported(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live sync runs; a legacy row of the range is changed after the range's target snapshot
    was taken and before its legacy one (the row is in flight): the range's candidate is checked
    again once apply has caught up, converges, and the pass ends clean."""
    from replicator.validate.insql import passes

    env.mcp_schemas(scale=1, seed=9)
    s = env.settings(validation={"rows_per_s": 1_000_000, "range_rows": 300})
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()
    try:
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT count(*) FROM audit_log") == 2000,
                timeout=90,
                what="the backfill applied",
            )
        real = passes.run_group
        changed: list[bool] = []

        def run_group(plan: Any, *args: Any) -> Any:
            legacy_sql = next(iter(plan.tables.values())).legacy_sql
            if not changed and '"id" > 900 AND "id" <= 1200' in legacy_sql:
                changed.append(True)
                with env.legacy_conn() as lc:
                    lc.execute("UPDATE audit_log SET action = 'in-flight' WHERE id = 1000")
                    lc.commit()
            return real(plan, *args)

        monkeypatch.setattr(passes, "run_group", run_group)
        checker = ContinuousValidation(s, MAPPING)
        with env.legacy_conn() as legacy, env.target_conn() as target:
            target.autocommit = True
            ensure(target)
            got = checker.check(legacy, target, AUDIT)
            assert changed, "the range holding id 1000 was never checked"
            assert got.outcome == "clean", got.to_json(limit=3)["differences"]
            assert got.tables[0].in_flight == 1
            assert read_points(target)[AUDIT]["verified_lsn"] is not None
    finally:
        pipeline.shutdown()


def test_kill_9_during_a_full_validation_then_resume_continues_within_the_table(
    loaded: Env,  # noqa: F811
) -> None:
    """A full validation checks audit_log (2,000 rows) in ranges of 400 and is killed with
    SIGKILL once three ranges are recorded clean: `validate --resume` continues audit_log after
    the third range (not from its start) and says how much it re-used."""
    env = loaded
    small = {**env.env_vars(), "REPLICATOR_VALIDATION__RANGE_ROWS": "400"}
    killed = run_cli(
        ["validate", "--json"], {**small, "REPLICATOR_VALIDATE_FAULT": "sigkill-after-ranges:3"}
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    with env.target_conn() as c:
        through = c.execute(
            "SELECT through, ranges FROM replicator.validation_progress WHERE grp = %s", (AUDIT,)
        ).fetchall()
        assert through == [("1200", 3)]
    done = run_cli(["validate", "--resume", "--json"], small)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "clean"
    resumed = out["resumed"]
    assert resumed["ranges_reused"] == 3 and resumed["tables_resumed_in_range"] == [AUDIT]
    assert resumed["rows_reused"] >= 1200
    audit = next(t for t in out["tables"] if t["table"] == AUDIT)
    assert audit["rows_checked"] == 2000  # 1,200 re-used, the last 800 checked now
    text = run_cli(["validate", "--resume"], small)  # nothing left: the run finished
    assert text.returncode == 2
