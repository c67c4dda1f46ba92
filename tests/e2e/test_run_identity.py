"""Issue 2's end-to-end proof: `replicator run` moves inserts, updates and deletes on a legacy
table into the target through a real Kafka broker."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cli import Background
from tests.support import Env, wait_for


def test_run_replicates_one_table_through_kafka(env: Env, tmp_path: Path) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL, body text)")
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL, body text)")
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1",
    }
    with Background(["run"], vars_, tmp_path / "run.log") as proc:
        # The slot exists once the process is up: writes from then on are captured.
        wait_for(lambda: _slot_exists(env) or proc.proc.poll() is not None, 60, what="the slot")
        assert proc.proc.poll() is None, proc.output()
        with env.legacy_conn() as c:
            c.execute(
                "INSERT INTO item SELECT g, 'title ' || g, repeat('x', g) FROM generate_series(1, 50) g"
            )
            c.execute("UPDATE item SET title = 'changed' WHERE id % 5 = 0")
            c.execute("DELETE FROM item WHERE id > 45")
            with c.transaction():
                c.execute("INSERT INTO item VALUES (100, 'in a txn', NULL)")
                c.execute("UPDATE item SET body = 'edited' WHERE id = 100")
        expected = _rows(env.legacy_conn())
        wait_for(lambda: _rows(env.target_conn()) == expected, 60, what="target to equal legacy")
        assert proc.proc.poll() is None, proc.output()
    out = proc.output()
    assert "Traceback" not in out, out
    assert env.legacy.password.get_secret_value() not in out


def _slot_exists(env: Env) -> bool:
    with env.legacy_conn() as c:
        return (
            c.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (f"{env.name}_fwd",)
            ).fetchone()
            is not None
        )


def _rows(conn: object) -> list[tuple[object, ...]]:
    with conn as c:  # type: ignore[attr-defined]
        return c.execute("SELECT id, title, body FROM item ORDER BY id").fetchall()  # type: ignore[no-any-return]
