"""Issue 34: a first backfill loads empty target tables without their secondary indexes and
foreign keys, and restores them exactly — across a kill -9 during the load and one during the
rebuild — while a table that already held rows keeps its own untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

PARENT = "CREATE TABLE parent (id int PRIMARY KEY, code text NOT NULL)"
ITEM = (
    "CREATE TABLE item (id int PRIMARY KEY, parent_id int, title text NOT NULL, n int,"
    " CONSTRAINT item_n_check CHECK (n >= 0))"
)
NOTE = "CREATE TABLE note (id int PRIMARY KEY, body text)"
TARGET_EXTRAS = [
    "CREATE INDEX item_title_lower ON item (lower(title)) WHERE n > 10",
    "CREATE INDEX item_parent_cover ON item (parent_id DESC NULLS LAST) INCLUDE (n)",
    "CREATE INDEX item_n_hash ON item USING hash (n) WITH (fillfactor = 80)",
    "CREATE UNIQUE INDEX item_title_unique ON item (title, id)",
    "ALTER TABLE item ADD CONSTRAINT item_parent_fk FOREIGN KEY (parent_id) REFERENCES parent (id)"
    " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
    "CREATE INDEX note_body ON note (body)",
    "INSERT INTO note VALUES (1000000, 'already here')",  # held a row: never set aside
]
ROWS = 30_000


def _catalog(env: Env) -> dict[str, Any]:
    """Every index and constraint of the three tables: name -> (oid, definition, valid)."""
    with env.target_conn() as c:
        idx = c.execute(
            "SELECT c.relname, c.oid::int, pg_get_indexdef(c.oid), i.indisvalid FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid IN ('item'::regclass, 'note'::regclass, 'parent'::regclass)"
        ).fetchall()
        cons = c.execute(
            "SELECT conname, oid::int, pg_get_constraintdef(oid), convalidated FROM pg_constraint"
            " WHERE conrelid IN ('item'::regclass, 'note'::regclass, 'parent'::regclass)"
        ).fetchall()
    return {str(r[0]): (r[1], r[2], r[3]) for r in [*idx, *cons]}


def _records(env: Env) -> set[str]:
    with env.target_conn() as c:
        return {str(r[0]) for r in c.execute("SELECT name FROM replicator.set_aside").fetchall()}


def _backfill_status(env: Env) -> str | None:
    with env.target_conn() as c:
        if c.execute("SELECT to_regclass('replicator.backfill')").fetchone() == (None,):
            return None
        row = c.execute("SELECT status FROM replicator.backfill").fetchone()
    return None if row is None else str(row[0])


def _every_object_or_its_record(env: Env, before: dict[str, Any]) -> set[str]:
    """The invariant after any kill: each original is on the target or recorded, never lost."""
    now, records = _catalog(env), _records(env)
    lost = [n for n in before if n not in now and n not in records]
    assert not lost, f"neither on the target nor recorded: {lost}"
    return records


def test_indexes_set_aside_for_the_load_come_back_identical_across_kills(
    env: Env, tmp_path: Path
) -> None:
    with env.legacy_conn() as c:
        for ddl in (PARENT, ITEM, NOTE):
            c.execute(ddl)
        c.execute("INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 100) g")
        c.execute(
            "INSERT INTO item SELECT g, 1 + g % 100, 'title ' || g, g % 50"
            f" FROM generate_series(1, {ROWS}) g"
        )
        c.execute("INSERT INTO note SELECT g, 'note ' || g FROM generate_series(1, 20) g")
    with env.target_conn() as c:
        for ddl in (PARENT, ITEM, NOTE, *TARGET_EXTRAS):
            c.execute(ddl)
    before = _catalog(env)
    aside = {"item_title_lower", "item_parent_cover", "item_n_hash", "item_parent_fk"}
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.parent,public.item,public.note",
        "REPLICATOR_BACKFILL__CHUNK_ROWS": "500",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }

    # 1. kill -9 during the load: the snapshot phase has begun, the objects are set aside.
    run = Background(["run"], vars_, tmp_path / "run1.log")
    wait_for(
        lambda: _records(env) if _backfill_status(env) == "snapshot" else False,
        90,
        what="the snapshot phase with indexes set aside",
        interval=0.02,
    )
    run.kill9()
    assert _backfill_status(env) == "snapshot", "the load had finished before the kill"
    with env.target_conn() as c:
        loaded = c.execute("SELECT count(*) FROM item").fetchone()
    assert loaded is not None and loaded[0] < ROWS, "the load had finished before the kill"
    assert _every_object_or_its_record(env, before) == aside  # exactly those, nothing kept
    now = _catalog(env)
    for kept in ("item_pkey", "item_title_unique", "item_n_check", "note_body", "note_pkey"):
        assert now[kept] == before[kept], kept  # same oid: never dropped
    status = json.loads(run_cli(["status", "--json"], vars_).stdout)
    assert {o["name"] for o in status["target"]["backfill"]["set_aside"]} == aside, status
    why = [r for r in status["reasons"] if r.startswith("public.item lacks")]
    assert why and "`replicator run` (or `replicator apply`) rebuilds them" in why[0], status

    # Their definitions live in the state: teardown will not drop it from under them.
    refused = run_cli(["teardown", "--drop-state", "--dry-run"], vars_)
    flat = " ".join(refused.stderr.split())
    assert refused.returncode == 2 and "item_parent_fk" in flat, refused
    assert "until `replicator status` lists none set aside" in flat and "Traceback" not in flat

    # 2. kill -9 during the rebuild: a session holding item's ROW EXCLUSIVE lock keeps the
    # load going but makes the first CREATE INDEX wait, which is where the kill lands.
    with env.target_conn() as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE item IN ROW EXCLUSIVE MODE")
        run = Background(["run"], vars_, tmp_path / "run2.log")

        def rebuilding() -> bool:
            assert run.proc.poll() is None, run.output()
            with env.target_conn() as c:
                return bool(
                    c.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'CREATE INDEX%%'"
                    ).fetchone()[0]  # type: ignore[index]
                )

        wait_for(rebuilding, 90, what="an index rebuild waiting for the lock", interval=0.05)
        run.kill9()
        blocker.rollback()
    assert _backfill_status(env) == "applied"
    wait_for(
        lambda: _every_object_or_its_record(env, before) == aside,
        30,
        what="the killed rebuild's transactions to roll back",
    )

    check = run_cli(["check"], vars_)  # a table: its cells wrap, words stay whole
    words = set(check.stdout.replace("│", " ").replace(",", " ").split())
    assert check.returncode == 2 and {"item_parent_fk", "item_n_hash", "rebuilds"} <= words, check

    # 3. The next run rebuilds everything, identical to the originals, the foreign key valid.
    with Background(["run"], vars_, tmp_path / "run3.log") as run:
        wait_for(lambda: not _records(env), 90, what="the rebuild")
        after = _catalog(env)
        assert {n: v[1:] for n, v in after.items()} == {n: v[1:] for n, v in before.items()}
        assert after["item_parent_fk"][2] is True  # validated, not NOT VALID
        for n in set(before) - aside:
            assert after[n][0] == before[n][0], n  # the untouched ones were never re-created
        with env.legacy_conn() as c:
            want = c.execute("SELECT * FROM item ORDER BY id").fetchall()
        with env.target_conn() as c:
            assert c.execute("SELECT * FROM item ORDER BY id").fetchall() == want
            assert c.execute("SELECT count(*) FROM note").fetchone() == (21,)
    assert "Traceback" not in run.output()
