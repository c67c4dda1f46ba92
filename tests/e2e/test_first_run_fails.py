"""Issue #28, finding 9, as a new user meets it: a first `replicator run` with a wrong target
password creates the slot and stops before its backfill began. Once the password is fixed, the
next run must still backfill — and converge although live changes streamed before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"


def _rows(conn: Any) -> list[Any]:
    with conn as c:
        return c.execute("SELECT id, title FROM item ORDER BY id").fetchall()


def test_a_run_after_a_first_run_that_failed_before_its_backfill_still_backfills(
    env: Env, tmp_path: Path
) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
        c.execute("INSERT INTO item SELECT g, 'before ' || g FROM generate_series(1, 500) g")
    with env.target_conn() as c:
        c.execute(ITEM)
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "tests.e2e.web_mapping:MAPPING",  # keyed: validate needs it
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }
    wrong = {**vars_, "REPLICATOR_TARGET__PASSWORD": "not-the-password"}

    first = run_cli(["run"], wrong, timeout=120)
    assert first.returncode == 2, first.stdout + first.stderr
    with env.legacy_conn() as c:  # the slot is there: a later run is not a fresh pipeline
        assert c.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (f"{env.name}_fwd",)
        ).fetchone()
        # Written while nothing runs: in the slot, streamed by the next run before its backfill.
        c.execute("INSERT INTO item SELECT g, 'meanwhile ' || g FROM generate_series(501, 600) g")
        c.execute("UPDATE item SET title = 'updated meanwhile' WHERE id % 7 = 0")
        c.execute("DELETE FROM item WHERE id % 11 = 0")

    with Background(["run"], vars_, tmp_path / "run.log") as proc:
        with env.legacy_conn() as c:  # and while it runs
            c.execute("INSERT INTO item VALUES (1000, 'live')")
            c.execute("UPDATE item SET title = 'live update' WHERE id = 3")
            c.execute("DELETE FROM item WHERE id = 4")
        expected = _rows(env.legacy_conn())
        wait_for(
            lambda: _rows(env.target_conn()) == expected or proc.proc.poll() is not None,
            120,
            what="the target to equal legacy",
        )
        assert proc.proc.poll() is None, proc.output()
        assert _rows(env.target_conn()) == expected
        status = run_cli(["status", "--json"], vars_)
        assert json.loads(status.stdout)["target"]["backfill"]["status"] == "applied", status
        valid = run_cli(["validate"], vars_, timeout=120)
        assert valid.returncode == 0, valid.stdout + valid.stderr
