"""`status` and `dlq` as an operator uses them against a running pipeline."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs/status.schema.json").read_text())
ITEM = "CREATE TABLE item (id int PRIMARY KEY, title text NOT NULL)"


def _vars(env: Env, **extra: str) -> dict[str, str]:
    return {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
        "REPLICATOR_CUTOVER__MAX_LAG_S": "2",
        **extra,
    }


def _status(vars_: dict[str, str]) -> dict[str, Any]:
    r = run_cli(["status", "--json"], vars_)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    jsonschema.validate(out, SCHEMA)
    assert (r.returncode == 0) == out["ready"]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lag(vars_: dict[str, str]) -> float:
    lag = _status(vars_)["target"]["end_to_end_lag_s"]
    return float("nan") if lag is None else float(lag)


def test_status_follows_lag_and_readiness_and_metrics_are_served(env: Env, tmp_path: Path) -> None:
    env.mcp_schemas()  # validation needs a mapping with keys: the shipped one
    port = _free_port()
    vars_ = _vars(env, REPLICATOR_MAPPING="transforms.mcp_manager:MAPPING")
    cap = Background(
        ["capture"], {**vars_, "REPLICATOR_METRICS__PORT": str(port)}, tmp_path / "c.log"
    )
    apply = Background(["apply"], vars_, tmp_path / "a.log")
    try:
        wait_for(lambda: _lag(vars_) < 1.0, 60, what="lag under a second")
        with env.legacy_conn() as c:
            c.execute(
                "INSERT INTO organization (id, name, slug, created_at) VALUES"
                " (gen_random_uuid(), 'Acme', 'acme', now())"
            )
        r = run_cli(["validate"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: _status(vars_)["ready"], 30, what="ready for cutover")

        apply.stop()  # apply stopped: lag grows, the verdict flips
        wait_for(lambda: _lag(vars_) > 3.0, 30, what="lag to grow while apply is stopped")
        st = _status(vars_)
        assert not st["ready"] and any("over the threshold" in r for r in st["reasons"])

        apply = Background(["apply"], vars_, tmp_path / "a2.log")
        wait_for(lambda: _lag(vars_) < 1.0, 60, what="lag back under a second")
        wait_for(lambda: _status(vars_)["ready"], 30, what="ready again")

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for series in (
            "replicator_end_to_end_lag_seconds",
            "replicator_source_slot_lag_bytes",
            "replicator_source_retained_wal_bytes",
            "replicator_kafka_consumer_lag_messages",
            "replicator_apply_rows_total",
            "replicator_dlq_messages",
            "replicator_ready",
            "replicator_part_up",
        ):
            assert f"\n{series}{{" in text, series
    finally:
        apply.stop()
        cap.stop()
    assert "Traceback" not in cap.output() + apply.output()

    # Target unreachable: the rest is still reported, and what is missing is named.
    r = run_cli(["status", "--json"], {**vars_, "REPLICATOR_TARGET__PORT": "1"})
    assert r.returncode == 1
    st = json.loads(r.stdout)
    jsonschema.validate(st, SCHEMA)
    assert st["source"]["slot_exists"] and st["kafka"] is not None
    assert st["target"] is None and "target" in {u["part"] for u in st["unreachable"]}
    assert "Traceback" not in r.stderr


def test_poison_row_is_listed_replayed_after_the_fix_and_purged(env: Env, tmp_path: Path) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEM)
    with env.target_conn() as c:
        c.execute(ITEM)
        c.execute("ALTER TABLE item ADD CONSTRAINT no_bad CHECK (title <> 'bad')")
    vars_ = _vars(env)
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _status(vars_)["source"]["slot_active"], 60, what="the pipeline")
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (1, 'ok'), (2, 'bad'), (3, 'ok')")
            c.execute("INSERT INTO item VALUES (4, 'later')")
        with env.target_conn() as c:
            wait_for(
                lambda: c.execute("SELECT count(*) FROM item").fetchone()[0] == 3,  # type: ignore[index]
                30,
                what="the rows around the poison row",
            )
        letters = wait_for(lambda: _letters(vars_), 30, what="the dead letter")
        assert [(x["table"], x["key"]) for x in letters] == [("public.item", {"id": "2"})]
        assert "no_bad" in letters[0]["reason"]
        assert len(_letters(vars_, "item")) == len(_letters(vars_, "public.item")) == 1
        assert _letters(vars_, "tem") == []  # a table name, not a suffix
        shown = run_cli(["dlq", "show", letters[0]["position"]], vars_)
        assert shown.returncode == 0 and '"commit_lsn"' in shown.stdout

        r = run_cli(["dlq", "replay", "--all"], vars_)  # the cause is still there
        assert r.returncode == 1 and "failed again" in r.stdout
        with env.target_conn() as c:
            c.execute("ALTER TABLE item DROP CONSTRAINT no_bad")
        r = run_cli(["dlq", "replay", "--all"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        with env.target_conn() as c:
            assert c.execute("SELECT title FROM item WHERE id = 2").fetchone() == ("bad",)
        assert _letters(vars_) == []

        with env.target_conn() as c:
            c.execute("ALTER TABLE item ADD CONSTRAINT no_worse CHECK (title <> 'worse')")
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (5, 'worse')")
        wait_for(lambda: _letters(vars_), 30, what="a second dead letter")
        r = run_cli(["dlq", "purge", "--all", "--yes"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _letters(vars_) == []
    assert "Traceback" not in run.output()


def _letters(vars_: dict[str, str], table: str | None = None) -> list[dict[str, Any]]:
    r = run_cli(["dlq", "list", "--json", *(["--table", table] if table else [])], vars_)
    assert r.returncode == 0, r.stdout + r.stderr
    out: list[dict[str, Any]] = json.loads(r.stdout)
    return out
