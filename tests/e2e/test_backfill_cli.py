"""`replicator backfill` as an operator runs it: re-sync a drifted table while live sync runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"
NOTE = "CREATE TABLE note (id int PRIMARY KEY, body text)"


def _vars(env: Env) -> dict[str, str]:
    return {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item,public.note",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }


def _rows(conn: Any, table: str) -> list[Any]:
    with conn as c:
        return c.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def test_backfill_resyncs_a_drifted_table_while_live_sync_runs(env: Env, tmp_path: Path) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
        c.execute(NOTE)
        c.execute("INSERT INTO item SELECT g, 'item ' || g FROM generate_series(1, 3000) g")
        c.execute("INSERT INTO note SELECT g, 'note ' || g FROM generate_series(1, 50) g")
    with env.target_conn() as c:
        c.execute(ITEM)
        c.execute(NOTE)
    vars_ = _vars(env)
    run = Background(["run"], vars_, tmp_path / "run.log")
    try:
        wait_for(
            lambda: _rows(env.target_conn(), "item") == _rows(env.legacy_conn(), "item"),
            120,
            what="the first backfill",
        )
        with env.target_conn() as c:  # someone "fixed" the target by hand
            c.execute("DELETE FROM item WHERE id <= 100")
            c.execute("UPDATE item SET title = 'drift' WHERE id BETWEEN 500 AND 600")
            c.execute("INSERT INTO item VALUES (999999, 'extra')")
            c.execute("UPDATE note SET body = 'left alone' WHERE id = 1")

        stop = threading.Event()

        def write() -> None:  # the application keeps writing meanwhile
            with env.legacy_conn() as c:
                i = 10_000
                while not stop.wait(0.02):
                    c.execute("INSERT INTO item VALUES (%s, 'live')", (i,))
                    c.execute("UPDATE item SET title = 'live' WHERE id = %s", (i - 9_000,))
                    i += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            r = run_cli(["backfill", "--table", "item", "--chunk-rows", "500"], vars_, timeout=300)
        finally:
            stop.set()
            writer.join()
        assert r.returncode == 0, r.stdout + r.stderr + run.output()
        assert "every chunk is in Kafka" in r.stdout

        wait_for(
            lambda: _rows(env.target_conn(), "item") == _rows(env.legacy_conn(), "item"),
            60,
            what="target item == legacy item after the re-sync",
        )
        assert _rows(env.target_conn(), "note")[0] == (1, "left alone")  # not re-synced
        status = run_cli(["status", "--json"], vars_)
        assert json.loads(status.stdout)["target"]["backfill"]["status"] == "applied", status
    finally:
        assert run.stop() == 0, run.output()


def test_backfill_of_a_table_that_is_not_mapped_says_which_are(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
        c.execute(NOTE)
    r = run_cli(["backfill", "--table", "nope"], _vars(env), timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not a mapped source table: public.nope" in r.stderr
    assert "public.item" in r.stderr and "Traceback" not in r.stderr
