"""Issue 22, item 1: a misspelt source column in a mapping never loses data silently.

``check`` refuses the mapping (naming the mapping line, the column and its close match); the
running pipeline writes no row with the column NULL (every row is dead-lettered with the
reason); ``validate`` is not clean and names the mapping error; ``status`` is not ready.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.cli import Background, run_cli
from tests.support import Env, wait_for

TYPO = {"REPLICATOR_MAPPING": "tests.e2e.typo_mapping:MAPPING"}


def _schemas(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE acct (id int PRIMARY KEY, amount bigint NOT NULL, note text)")
        c.execute("INSERT INTO acct SELECT g, g * 100, 'n' || g FROM generate_series(1, 20) g")
    with env.target_conn() as c:
        c.execute('CREATE TABLE accounts (id int PRIMARY KEY, "amountCents" bigint, note text)')


def _flat(r: object) -> str:
    return " ".join((r.stdout + r.stderr).split())  # type: ignore[attr-defined]


def test_a_misspelt_column_is_refused_everywhere_and_never_written_as_null(
    env: Env, tmp_path: Path
) -> None:
    _schemas(env)
    vars_ = {**env.env_vars(), **TYPO, "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "1"}

    r = run_cli(["check"], vars_)
    text = _flat(r)
    assert r.returncode != 0, text
    assert "public.accounts.amountCents reads source column public.acct.amuont" in text
    assert "did you mean amount?" in text
    assert "Traceback" not in text

    r = run_cli(["check"], {**vars_, "REPLICATOR_MAPPING": "tests.e2e.typo_mapping:BAD_KEY"})
    text = _flat(r)
    assert r.returncode != 0, text
    assert "the source_key of the mapping of public.acct names column acct_id" in text
    assert (
        "sequence sync public.acct.id -> public.acct.id: on the target, table public.acct" in text
    )

    with Background(["run"], vars_, tmp_path / "run.log") as proc:
        # 20 rows backfilled, 10 more through live sync: every one is refused.
        wait_for(lambda: _slot_exists(env) or proc.proc.poll() is not None, 60, what="the slot")
        assert proc.proc.poll() is None, proc.output()
        with env.legacy_conn() as c:
            c.execute("INSERT INTO acct SELECT g, g * 100, 'n' || g FROM generate_series(21, 30) g")
        # Rows written while the backfill reads may be refused twice (snapshot and change).
        wait_for(lambda: len(_keys(_letters(vars_))) >= 30, 90, what="30 rows dead-lettered")
        assert proc.proc.poll() is None, proc.output()
        letters = _letters(vars_)
        assert _keys(letters) == {str(i) for i in range(1, 31)}
        assert all("amuont" in x["reason"] and "mapping error" in x["reason"] for x in letters)
        with env.target_conn() as c:
            assert c.execute("SELECT count(*) FROM accounts").fetchone() == (0,)

        r = run_cli(["validate", "--json"], vars_)
        assert r.returncode != 0, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert report["outcome"] != "clean"
        assert any("amuont" in m for m in report["mapping_errors"]), report

        r = run_cli(["status", "--json"], vars_)
        assert json.loads(r.stdout)["ready"] is False, r.stdout
    assert "Traceback" not in proc.output()


def _letters(vars_: dict[str, str]) -> list[dict[str, object]]:
    r = run_cli(["dlq", "list", "--json"], vars_)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []  # type: ignore[no-any-return]


def _keys(letters: list[dict[str, object]]) -> set[str]:
    return {str(x["key"]["id"]) for x in letters}  # type: ignore[index]


def _slot_exists(env: Env) -> bool:
    with env.legacy_conn() as c:
        return (
            c.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (f"{env.name}_fwd",)
            ).fetchone()
            is not None
        )
