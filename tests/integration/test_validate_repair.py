"""`validate --repair` under live sync with the MCP mapping: a missing row, an extra row and a
changed column are repaired through the pipeline while a writer runs; the dry run changes
nothing; the checked-again run is clean; a second repair finds nothing to do; a legacy update
of a repaired key made during the repair is kept (the repair is ordered before it)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors import pg
from replicator.cutover.switch import Cutover
from replicator.runtime.pipeline import Pipeline
from replicator.validate.repair import check, repair, store_repair
from replicator.validate.run import validate
from replicator.web.details import read_details
from tests.e2e.cli import run_cli
from tests.integration.test_cutover import synced  # noqa: F401 (a fixture)
from tests.integration.test_validate import _schemas, _url, loaded  # noqa: F401 (a fixture)
from tests.support import Env, mcp_writer, wait_for
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate


def _one(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def test_differences_of_each_kind_are_repaired_under_a_writer(env: Env) -> None:
    _schemas(env)
    s = env.settings()
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()
    stop = threading.Event()
    try:
        generate(_url(env.legacy), scale=1, seed=5, create_schema=False)
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT count(*) FROM audit_log") == 2000,
                timeout=60,
                what="generated rows applied",
            )
        counts: dict[str, int] = {}
        writer = threading.Thread(target=mcp_writer, args=(env, stop, counts), daemon=True)
        writer.start()
        wait_for(lambda: counts.get("txns", 0) > 10, timeout=20, what="writer running")
        with env.legacy_conn() as c:
            org = str(_one(c, "SELECT id FROM organization ORDER BY id LIMIT 1"))  # never written
        with env.target_conn() as c:
            key = str(_one(c, "SELECT id FROM member ORDER BY id LIMIT 1"))  # not written
            c.execute("DELETE FROM member WHERE id = %s", (key,))
            c.execute("UPDATE organization SET slug = slug || '-x' WHERE id = %s", (org,))
            c.execute(
                "INSERT INTO audit_log (id, action, created_at) VALUES (987654321, 'forged', now())"
            )
        wanted = {
            ("public.member", "missing", (key,)),
            ("public.organization", "differs", (org,)),
            ("public.audit_log", "extra", ("987654321",)),
        }
        report = validate(s, MAPPING)
        found = {(d.table, d.kind, tuple(d.key.values())) for d in report.differences}
        assert found == wanted, report.to_json(limit=10)

        # The dry run lists what it would do and does nothing; the CLI says the same.
        cli = run_cli(["validate", "--repair", "--dry-run", "--json"], env.env_vars())
        assert cli.returncode == 1, cli.stdout + cli.stderr
        planned = json.loads(cli.stdout)["repair"]
        assert planned["dry_run"] and planned["counts"]["planned"] == 3, planned["actions"]
        dry = repair(s, MAPPING, report, dry_run=True)
        assert {(a.table, a.action, a.result) for a in dry.actions} == {
            ("public.member", "resend", "planned"),
            ("public.organization", "resend", "planned"),
            ("public.audit_log", "delete", "planned"),
        }
        assert dry.repair_id is None
        org_sources = next(a.sources for a in dry.actions if a.table == "public.organization")
        assert dry.to_json()["actions"] and [
            (x["table"], [str(v) for v in x["key"]]) for x in org_sources
        ] == [("public.organization", [org])]
        with env.target_conn() as c:
            assert _one(c, "SELECT count(*) FROM audit_log WHERE id = 987654321") == 1

        # The repair, with an update of a repaired key racing it: the update is kept.
        def race() -> None:
            with env.legacy_conn() as c:
                c.execute("UPDATE organization SET name = 'newer' WHERE id = %s", (org,))

        racer = threading.Timer(0.05, race)
        racer.start()
        fixed = repair(s, MAPPING, report)
        racer.join()
        assert fixed.repair_id is not None and fixed.repair_id.startswith("repair-")
        after = validate(s, MAPPING)
        check(fixed, after)
        assert after.outcome == "clean", after.to_json(limit=10)
        store_repair(s, fixed)  # as the CLI does: the page's validation card shows it
        sessions = pg.Sessions()
        try:
            shown = read_details(s, "fwd", sessions)["repair"]
        finally:
            sessions.close()
        assert shown["id"] == fixed.repair_id and shown["counts"]["repaired"] == 3, shown
        assert {(a.table, a.result) for a in fixed.actions} == {
            ("public.member", "repaired"),
            ("public.organization", "repaired"),
            ("public.audit_log", "repaired"),
        }, fixed.to_json()
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT name FROM organization WHERE id = %s", org) == "newer",
                what="the racing update on the target",
            )
            assert _one(c, "SELECT count(*) FROM audit_log WHERE id = 987654321") == 0
            assert _one(c, "SELECT count(*) FROM member WHERE id = %s", key) == 1
            # A repair is no backfill: status and the page still show the backfill (none here).
            assert (
                _one(c, "SELECT count(*) FROM replicator.backfill WHERE status <> 'applied'") == 0
            )

        # Idempotent: the same report repaired again changes nothing and stays clean.
        again = repair(s, MAPPING, report)
        check(again, validate(s, MAPPING))
        assert {a.result for a in again.actions} == {"repaired"}
        stop.set()
        writer.join()
        assert validate(s, MAPPING).outcome == "clean"
    finally:
        stop.set()
        pipeline.shutdown()


def test_after_a_cutover_legacy_is_repaired_from_the_target(env: Env, synced: Any) -> None:  # noqa: F811
    """The reverse direction: legacy rows changed, lost or added behind the reverse stream's
    back are repaired from the target through the reverse snapshot path."""
    s, pipeline = synced
    assert Cutover(s, pipeline.mapping).run().switched
    wait_for(lambda: pipeline.direction == "rev" and pipeline.workers, 30, what="rev running")
    with env.legacy_conn() as c:
        c.execute("SET session_replication_role = replica")  # past the fence, as an operator
        org = str(_one(c, "SELECT id FROM organization ORDER BY id LIMIT 1"))
        c.execute("UPDATE organization SET slug = slug || '-x' WHERE id = %s", (org,))
        gone = str(_one(c, "SELECT id FROM api_key ORDER BY id LIMIT 1"))
        c.execute("DELETE FROM api_key WHERE id = %s", (gone,))
        added = _one(
            c,
            "INSERT INTO audit_log (action, created_at) VALUES ('behind', now()) RETURNING id",
        )
    report = validate(s, pipeline.mapping)
    found = {(d.table, d.kind) for d in report.differences}
    assert found == {
        ("public.organization", "differs"),
        ("public.apikey", "extra"),
        ("public.audit_log", "missing"),
    }, report.to_json(limit=10)
    fixed = repair(s, pipeline.mapping, report)
    assert fixed.direction == "rev"
    after = validate(s, pipeline.mapping)
    check(fixed, after)
    assert after.outcome == "clean", after.to_json(limit=10)
    assert {a.result for a in fixed.actions} == {"repaired"}, fixed.to_json()
    with env.legacy_conn() as c:
        assert _one(c, "SELECT count(*) FROM api_key WHERE id = %s", gone) == 1
        assert _one(c, "SELECT count(*) FROM audit_log WHERE id = %s", added) == 0
        assert not str(_one(c, "SELECT slug FROM organization WHERE id = %s", org)).endswith("-x")


def test_kill_9_during_a_full_validation_then_resume(loaded: Env, tmp_path: Path) -> None:  # noqa: F811
    """A full validation killed with SIGKILL after four of its table groups: `validate
    --resume` checks only what it had not finished and says how much it re-used; nothing is
    left to resume after it."""
    env = loaded
    killed = run_cli(
        ["validate", "--json"], {**env.env_vars(), "REPLICATOR_VALIDATE_FAULT": "sigkill-after:4"}
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    with env.target_conn() as c:
        assert _one(c, "SELECT count(*) FROM replicator.validation_runs") == 0
    done = run_cli(["validate", "--resume", "--json"], env.env_vars())
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "clean"
    resumed = out["resumed"]
    assert resumed["groups_reused"] == 4 and resumed["groups_checked"] >= 1, resumed
    assert resumed["rows_reused"] > 0
    assert {t["table"] for t in out["tables"]} == set(MAPPING.forward.target_tables)
    again = run_cli(["validate", "--resume"], env.env_vars())
    assert again.returncode == 2 and "no interrupted full validation" in again.stdout + again.stderr


def test_continuous_validation_catches_a_direct_target_write_and_marks_the_point(
    env: Env,
) -> None:
    """`[validation] continuous = true`: every table gets a verified-through point, a walk of
    clean tables stands in for a full validation; a row changed on the target behind the
    replicator's back is found within the budgeted time, status, /metrics and the preflight
    say so, and a repair makes the point move again."""
    from replicator.cutover.switch import Cutover
    from replicator.runtime.continuous import read_points
    from replicator.status.metrics import StatusCollector
    from replicator.status.overview import collect
    from replicator.validate.report import last_validation

    _schemas(env)
    s = env.settings(validation={"continuous": True, "rows_per_s": 20_000})
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()
    try:
        generate(_url(env.legacy), scale=1, seed=9, create_schema=False)
        tables = set(MAPPING.forward.target_tables)
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT count(*) FROM audit_log") == 2000,
                timeout=60,
                what="generated rows applied",
            )
            # Every table checked clean after all rows were applied (a walk that began while
            # they arrived may have found some still missing).
            since = _one(c, "SELECT now()")

            def verified() -> bool:
                p = read_points(c)
                return p.keys() == tables and all(
                    v["outcome"] == "clean" and v["verified_at"] >= since.isoformat()
                    for v in p.values()
                )

            wait_for(verified, timeout=90, what="every table verified")
            wait_for(lambda: last_validation(c, scope="full") is not None, 60, what="a walk")
            walk = last_validation(c, scope="full")
            assert walk is not None and walk["outcome"] == "clean"
            # No `replicator validate` has run: the walk stands in for it at the preflight.
            assert Cutover(s, MAPPING)._validation_problems(c) == []
            org = str(_one(c, "SELECT id FROM organization ORDER BY id LIMIT 1"))
            before = read_points(c)["public.organization"]
            assert before["verified_lsn"] and before["verified_at"]
            c.execute("UPDATE organization SET slug = slug || '-x' WHERE id = %s", (org,))
            wait_for(
                lambda: read_points(c)["public.organization"]["outcome"] == "different",
                timeout=30,
                what="the direct write found",
            )
            after = read_points(c)["public.organization"]
            assert after["keys"] == [
                {"table": "public.organization", "kind": "differs", "key": {"id": org}}
            ]
            assert after["verified_at"] is not None  # the last clean point is kept
            problems = Cutover(s, MAPPING)._validation_problems(c)
            assert any("continuous validation finds public.organization" in p for p in problems)
        st = collect(s)
        assert st.target is not None and st.target.verified["public.organization"]["outcome"]
        assert any("public.organization different" in r for r in st.reasons), st.reasons
        metrics = {
            (m.name, sample.labels.get("table")): sample.value
            for m in StatusCollector(s).collect()
            for sample in m.samples
        }
        assert metrics["replicator_verified_different", "public.organization"] == 1.0
        assert ("replicator_verified_through_age_seconds", "public.apikey") in metrics

        fixed = repair(s, MAPPING, validate(s, MAPPING, table="organization"))
        assert {a.table for a in fixed.actions} == {"public.organization"}
        check(fixed, validate(s, MAPPING))  # as `validate --repair` does: the full run after
        assert {a.result for a in fixed.actions} == {"repaired"}
        with env.target_conn() as c:
            wait_for(
                lambda: read_points(c)["public.organization"]["outcome"] == "clean",
                timeout=30,
                what="the point to move again",
            )
            assert Cutover(s, MAPPING)._validation_problems(c) == []
    finally:
        pipeline.shutdown()


def test_a_repair_refuses_while_a_switch_decision_is_pending(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cutover stopped in its hook: the application may write to the target already, the
    pipeline still reads "fwd". A forward repair then would load legacy's older rows (and
    delete target rows) over the target's newer writes: it refuses, and sends nothing."""
    from datetime import UTC, datetime

    from replicator.capture import prepare_source
    from replicator.cutover import decision
    from replicator.errors import PreconditionError
    from replicator.state import ensure_schema
    from replicator.validate import repair as repair_mod
    from replicator.validate.report import Difference, Report, key_text

    _schemas(env)
    s = env.settings()
    prepare_source(s, s.source, MAPPING.forward.source_tables, "fwd")  # live sync's slot
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn:
            ensure_schema(conn)
            decision.ensure_table(conn)
            conn.execute(decision.record(s.name, "cutover", "run-1", "fwd", "rev"))
    report = Report("full", None, datetime.now(UTC))
    report.differences = [Difference("public.audit_log", "extra", {"id": "7"})]
    report.provenance = {("public.audit_log", key_text({"id": "7"})): set()}
    monkeypatch.setattr(repair_mod, "WAIT_APPLIED_S", 2.0)  # without the guard: no apply runs
    with pytest.raises(PreconditionError, match="switch") as err:
        repair(s, MAPPING, report, direction="fwd")
    assert "stopped after its point of no return" in err.value.message
    with env.target_conn() as c:
        assert _one(c, "SELECT count(*) FROM replicator.backfill WHERE id LIKE 'repair-%%'") == 0


def test_an_interrupted_repair_does_not_hold_live_sync(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair that stops after its marker (a source read failing, Ctrl-C, Kafka): apply holds
    every change after the marker until the repair's snapshot_done, and a repair is not resumed
    like a backfill — live sync stopped for good. Its end is sent as it stops."""
    from datetime import UTC, datetime

    from replicator.validate import repair as repair_mod
    from replicator.validate.context import wait_marker_applied
    from replicator.validate.report import Difference, Report, key_text

    _schemas(env)
    s = env.settings()
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()
    try:
        with env.target_conn() as c:
            wait_for(
                lambda: (
                    _one(
                        c,
                        "SELECT count(*) FROM replicator.backfill WHERE reading OR status <> 'applied'",
                    )
                    == 0
                ),
                timeout=60,
                what="the first backfill applied",
            )
        report = Report("full", None, datetime.now(UTC))
        report.differences = [Difference("public.organization", "differs", {"id": "o1"})]
        report.provenance = {
            ("public.organization", key_text({"id": "o1"})): {("public.organization", ("o1",))}
        }

        def read_fails(*args: Any, **kwargs: Any) -> list[bytes]:
            raise KeyboardInterrupt  # after the marker went into the log

        monkeypatch.setattr(repair_mod, "_rows", read_fails)
        with pytest.raises(KeyboardInterrupt):
            repair(s, MAPPING, report, direction="fwd")
        with env.legacy_conn() as legacy, env.target_conn() as target:
            assert wait_marker_applied(s, legacy, target, 30.0), "apply still held"
    finally:
        pipeline.shutdown()
