"""`cutover` and `rollback` as an operator runs them: refused while a dead letter is pending,
rehearsed with --dry-run once it is replayed, run after a purge, stopped past the point of no
return and finished by running it again, then rolled back; --json is one unwrapped line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

MAPPING = "transforms.mcp_manager:MAPPING"


def _vars(env: Env, **extra: str) -> dict[str, str]:
    return {
        **env.env_vars(),
        "REPLICATOR_MAPPING": MAPPING,
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
        "REPLICATOR_CUTOVER__MAX_LAG_S": "5",
        **extra,
    }


def _json_line(r: Any) -> dict[str, Any]:
    """The outcome: exactly one line on stdout, whatever the terminal width."""
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    out: dict[str, Any] = json.loads(lines[0])
    return out


def _letters(vars_: dict[str, str]) -> list[dict[str, Any]]:
    r = run_cli(["dlq", "list", "--json"], vars_)
    assert r.returncode == 0, r.stdout + r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out


def _status(vars_: dict[str, str]) -> dict[str, Any]:
    r = run_cli(["status", "--json"], vars_)
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _poison(env: Env, vars_: dict[str, str], action: str) -> None:
    """An audit row the target refuses: one dead letter."""
    with env.target_conn() as c:
        c.execute(
            sql.SQL("ALTER TABLE audit_log ADD CONSTRAINT no_poison CHECK (action <> {})").format(
                sql.Literal(action)
            )
        )
    with env.legacy_conn() as c:
        c.execute("INSERT INTO audit_log (action, created_at) VALUES (%s, now())", (action,))
    wait_for(lambda: _letters(vars_), 60, what="the dead letter")
    with env.target_conn() as c:
        c.execute("ALTER TABLE audit_log DROP CONSTRAINT no_poison")


def _backfilled(env: Env) -> bool:
    with env.target_conn() as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
    return bool(row and row[0] == "applied")


def test_cutover_and_rollback_through_the_cli(env: Env, tmp_path: Path) -> None:
    env.mcp_schemas()
    vars_ = _vars(env)
    narrow = {**vars_, "COLUMNS": "40"}  # JSON must not wrap, however narrow the terminal
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _backfilled(env), 180, what="the backfill")
        r = run_cli(["validate"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr

        _poison(env, vars_, "poison-1")
        r = run_cli(["cutover", "--dry-run", "--json"], narrow)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        assert "dead-letter queue holds 1 letter" in " ".join(r.stderr.split())
        r = run_cli(["dlq", "replay", "--all"], vars_)  # the constraint is gone: it applies
        assert r.returncode == 0, r.stdout + r.stderr
        r = run_cli(["cutover", "--dry-run", "--json"], narrow)
        assert r.returncode == 0, r.stdout + r.stderr
        out = _json_line(r)
        assert out["dry_run"] and not out["switched"] and out["steps"][-1]["name"] == "unfence"

        _poison(env, vars_, "poison-2")
        with env.legacy_conn() as c:  # no longer wanted: deleted on legacy, its letter purged
            c.execute("DELETE FROM audit_log WHERE action = 'poison-2'")
        r = run_cli(["dlq", "purge", "--all", "--yes"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        # Stopped after the switch (the direction not recorded on legacy): fenced, explained.
        r = run_cli(
            ["cutover", "--yes", "--json"],
            {**narrow, "REPLICATOR_CUTOVER_FAIL_AT": "finish:source"},
        )
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        assert "again to finish" in " ".join(r.stderr.split())
        st = _status(vars_)
        assert st["switching"]["action"] == "cutover" and not st["ready"]
        assert any("replicator cutover --yes` again" in x for x in st["reasons"]), st
        with env.legacy_conn() as c:
            try:
                c.execute("INSERT INTO audit_log (action, created_at) VALUES ('late', now())")
                raise AssertionError("legacy took a write after the decision")
            except psycopg.Error as exc:
                assert "fenced" in str(exc)
        r = run_cli(["cutover", "--yes", "--json"], narrow)
        assert r.returncode == 0, r.stdout + r.stderr
        out = _json_line(r)
        assert out["switched"] and out["resumed_run_id"]
        wait_for(lambda: _status(vars_)["direction"] == "rev", 30, what="the direction")

        with env.target_conn() as c:
            c.execute("INSERT INTO audit_log (action, created_at) VALUES ('on-target', now())")
        with env.legacy_conn() as c:
            wait_for(
                lambda: c.execute("SELECT 1 FROM audit_log WHERE action = 'on-target'").fetchone(),
                60,
                what="the reverse stream",
            )
        r = run_cli(["rollback", "--yes", "--json"], narrow)
        assert r.returncode == 0, r.stdout + r.stderr
        out = _json_line(r)
        assert out["switched"] and out["action"] == "rollback" and out["pause_s"] < 30
        wait_for(lambda: _status(vars_)["direction"] == "fwd", 30, what="the direction back")
        r = run_cli(["rollback", "--yes"], vars_)  # nothing left to roll back: said plainly
        assert r.returncode == 2 and "nothing to roll back" in r.stderr, r.stderr
    assert "Traceback" not in run.output()
