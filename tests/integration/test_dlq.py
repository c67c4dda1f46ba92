"""Dead letters through a running pipeline: what a letter names, and what a replay writes.

The plain path (a CHECK constraint, replay after dropping it, purge) is in tests/e2e/test_ops.py;
here: a validation failure of the shipped mapping names its column, the list filters, and a
replay follows the source row's current state (never the logged, older values).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"
USER = (
    'INSERT INTO "user" (id, email, full_name, hashed_password, is_active, is_superuser,'
    " created_at) VALUES (%s, %s, 'U', '$2b$10$x', true, false, now())"
)


def _vars(env: Env, mapping: str) -> dict[str, str]:
    return {
        **env.env_vars(),
        "REPLICATOR_MAPPING": mapping,
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }


def _live(vars_: dict[str, str]) -> bool:
    # status exits 1 while not ready for cutover; its JSON is printed either way.
    r = run_cli(["status", "--json"], vars_)
    try:
        return bool(json.loads(r.stdout)["source"]["slot_active"])
    except (ValueError, KeyError, TypeError):
        return False


def _letters(vars_: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    r = run_cli(["dlq", "list", "--json", *extra], vars_)
    assert r.returncode == 0, r.stdout + r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out


def _count(env: Env, query: str, *args: object) -> int:
    with env.target_conn() as c:
        row = c.execute(query, args).fetchone()
    return int(row[0]) if row else 0


def test_validation_failure_names_the_column_and_waits_for_the_fix(
    env: Env, tmp_path: Path
) -> None:
    env.mcp_schemas()
    vars_ = _vars(env, "transforms.mcp_manager:MAPPING")
    good1, bad, good2 = (str(uuid.uuid4()) for _ in range(3))
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _live(vars_), 60, what="the pipeline")
        with env.legacy_conn() as c:
            c.execute(USER, (good1, "a@example.com"))
            c.execute(USER, (bad, "not-an-email"))
            c.execute(USER, (good2, "b@example.com"))
        wait_for(
            lambda: _count(env, 'SELECT count(*) FROM "user"') == 2,
            30,
            what="the users around the invalid one",
        )
        letters = wait_for(lambda: _letters(vars_), 30, what="the dead letter")
        assert len(letters) == 1
        (letter,) = letters
        assert (letter["table"], letter["key"], letter["column"]) == (
            "public.user",
            {"id": bad},
            "email",
        )
        assert "not an email address" in letter["reason"]
        assert letter["commit_lsn"] and letter["error"] == "TransformError"

        # Filters: by table (a suffix is enough) and by direction.
        assert _letters(vars_, "--table", "user") == letters
        assert _letters(vars_, "--table", "organization") == []
        assert _letters(vars_, "--direction", "rev") == []
        table = run_cli(["dlq", "list"], vars_)
        assert table.returncode == 0 and letter["position"] in table.stdout

        # The cause is still there: the letter stays, with the reason, and the exit code says so.
        r = run_cli(["dlq", "replay", letter["position"]], vars_)
        assert r.returncode == 1 and "failed again" in r.stdout
        assert "not an email address" in r.stdout
        assert [x["position"] for x in _letters(vars_)] == [letter["position"]]

        # Fixed at the source; the stream applies the update, the replay is then a no-op write.
        with env.legacy_conn() as c:
            c.execute('UPDATE "user" SET email = %s WHERE id = %s', ("fixed@example.com", bad))
        wait_for(
            lambda: _count(env, 'SELECT count(*) FROM "user" WHERE id = %s', bad) == 1,
            30,
            what="the fixed user",
        )
        r = run_cli(["dlq", "replay", "--all"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _letters(vars_) == []
        assert _count(env, "SELECT count(*) FROM account WHERE user_id = %s", bad) == 1
    assert "Traceback" not in run.output()


def test_replay_writes_the_current_source_row_never_the_logged_one(
    env: Env, tmp_path: Path
) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
    with env.target_conn() as c:
        c.execute(ITEM)
        c.execute("ALTER TABLE item ADD CONSTRAINT no_bad CHECK (title <> 'bad')")
    vars_ = _vars(env, "identity:public.item")
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _live(vars_), 60, what="the pipeline")
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (1, 'ok'), (2, 'bad'), (3, 'bad')")
            c.execute("INSERT INTO item VALUES (4, 'later')")
        wait_for(lambda: len(_letters(vars_)) == 2, 30, what="two dead letters")
        assert _count(env, "SELECT count(*) FROM item") == 2  # 1 and 4 applied
        letters = _letters(vars_)
        assert [x["key"] for x in letters] == [{"id": "2"}, {"id": "3"}]
        assert all("no_bad" in x["reason"] and x["table"] == "public.item" for x in letters)

        shown = run_cli(["dlq", "show", letters[0]["position"]], vars_)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        full = json.loads(shown.stdout)
        assert full["key"] == {"id": "2"} and full["change"] and full["commit_lsn"]
        missing = run_cli(["dlq", "show", "0:999999"], vars_)
        assert missing.returncode != 0 and "no pending letter" in missing.stdout + missing.stderr

        # Meanwhile the stream moved on: 2 got a newer value, 3 was deleted.
        with env.legacy_conn() as c:
            c.execute("UPDATE item SET title = 'newer' WHERE id = 2")
            c.execute("DELETE FROM item WHERE id = 3")
        wait_for(
            lambda: _count(env, "SELECT count(*) FROM item WHERE title = 'newer'") == 1,
            30,
            what="the newer value",
        )
        with env.target_conn() as c:
            c.execute("ALTER TABLE item DROP CONSTRAINT no_bad")
        r = run_cli(["dlq", "replay", "--all"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 replayed, 0 still failing" in r.stdout
        with env.target_conn() as c:
            rows = c.execute("SELECT id, title FROM item ORDER BY id").fetchall()
        # Not 'bad' for 2 (the logged value), and 3 not resurrected.
        assert rows == [(1, "ok"), (2, "newer"), (4, "later")]
        assert _letters(vars_) == []
        again = run_cli(["dlq", "replay", letters[0]["position"]], vars_)
        assert again.returncode != 0 and "no pending letter" in again.stdout + again.stderr
    assert "Traceback" not in run.output()
