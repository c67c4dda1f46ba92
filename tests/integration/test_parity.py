"""Query parity against real PostgreSQL: the MCP Manager's pairs agree on a faithful target
and under a writer while live sync runs; a converter bug in one target row is a difference
named with its pair; a target missing an index is named with the statement that fixes it;
bad parity files are named with their pair."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from connectors import pg
from replicator.cutover.switch import Cutover
from replicator.errors import ConfigError
from replicator.local.demo import parity_for_demo
from replicator.parity import last_parity, load, parse, run_parity
from replicator.runtime.pipeline import Pipeline
from replicator.status.overview import collect
from replicator.web.details import read_details
from tests.e2e.cli import run_cli
from tests.support import Env, mcp_writer, wait_for
from transforms.mcp_manager import MAPPING
from transforms.mcp_manager.generate import generate

MCP_PARITY = Path(__file__).resolve().parents[2] / "transforms" / "mcp_manager" / "parity.toml"


def _count(env: Env, sql: str) -> int:
    with env.target_conn() as c:
        row = c.execute(sql).fetchone()
    return int(row[0]) if row else -1


def test_mcp_pairs_under_live_sync(env: Env) -> None:
    env.mcp_schemas()
    s = env.settings()
    pipeline = Pipeline(s, MAPPING)
    pipeline.start()  # slot first: the generated rows arrive as live changes
    stop = threading.Event()
    try:
        generate(env.url("legacy"), scale=1, seed=5, create_schema=False)
        wait_for(
            lambda: _count(env, "SELECT count(*) FROM audit_log") == 2000,
            timeout=60,
            what="generated rows applied",
        )
        counts: dict[str, int] = {}
        writer = threading.Thread(target=mcp_writer, args=(env, stop, counts), daemon=True)
        writer.start()
        wait_for(lambda: counts.get("txns", 0) > 5, timeout=20, what="writer running")

        # Every pair agrees while the writer changes servers, audit entries, organizations
        # and keys: a read taken while writes flow is no false difference.
        # As the demo runs them, printing the table.
        console = Console(record=True, width=200)
        report = parity_for_demo(s, console, runs=5)
        table = console.export_text()
        assert "user by email (sign-in)" in table and "agrees" in table and "outcome:" in table
        assert report.live
        verdicts = {p.name: p.verdict for p in report.pairs}
        assert set(verdicts.values()) <= {"agrees", "slow"}, report.to_json()
        assert all(p.rows_legacy > 0 and p.param_sets > 0 for p in report.pairs)
        stored = _last(env)
        assert stored is not None and stored["id"] == report.run_id

        # A converter bug in one target row (a member's role), where the writer never writes.
        with env.target_conn() as c:
            # The first organization the params query samples (md5 of the same id text).
            c.execute(
                "UPDATE member SET role = 'owner-x' WHERE id = (SELECT min(id) FROM member"
                " WHERE organization_id = (SELECT id FROM organization ORDER BY md5(id) LIMIT 1))"
            )
        report = run_parity(s, load(MCP_PARITY), runs=2)
        bad = {p.name: p for p in report.pairs if p.verdict == "differs"}
        assert list(bad) == ["organization members with roles"], report.to_json()
        assert "owner-x" in (bad["organization members with roles"].difference or "")
        assert report.outcome == "different" and report.exit_code == 1

        # Into the decision: status shows the stored run; the gate refuses the cutover.
        shown = collect(s).target.parity  # type: ignore[union-attr]
        assert shown is not None and shown["age_s"] < 60, shown
        # (how many miss a goal depends on the machine's load: not asserted)
        assert (shown["outcome"], shown["pairs"], shown["differing"]) == ("different", 8, 1)
        sessions = pg.Sessions()
        try:  # the web page's details: each pair's verdict and what differs, as text
            page = read_details(s, "fwd", sessions)["parity"]
        finally:
            sessions.close()
        members = [p for p in page["pairs"] if p["name"] == "organization members with roles"]
        assert members[0]["verdict"] == "differs" and "owner-x" in members[0]["note"], page
        gated = Cutover(env.settings(cutover={"require_parity": True}), MAPPING)
        problems = gated.preflight()
        assert any("last parity run is different (1 pair(s) differ" in p for p in problems)
    finally:
        stop.set()
        pipeline.shutdown()


def _last(env: Env) -> dict[str, object] | None:
    with env.target_conn() as c:
        return last_parity(c)


ITEMS = """
CREATE TABLE item (id {id} PRIMARY KEY, code text NOT NULL, n int NOT NULL);
INSERT INTO item SELECT md5(i::text)::uuid, 'c' || i, i FROM generate_series(1, 100000) i;
ANALYZE item;
"""

# Below 1 ms (min_ms) the ratio is not judged: an index lookup is the round trip's time.
PAIRS = """
max_ratio = 5
max_ms = 2000

[[pair]]
name = "item by code"
params = "SELECT code FROM item ORDER BY id LIMIT 5"
legacy = "SELECT id, n FROM item WHERE code = %(code)s"
target = "SELECT id, n FROM item WHERE code = %(code)s"

[[pair]]
name = "item by id"
params = "SELECT id FROM item ORDER BY id LIMIT 5"
legacy = "SELECT id, n FROM item WHERE id = %(id)s"
target = "SELECT id, n FROM item WHERE id = %(id)s"
max_ratio = 100  # this pair is about its parameters: a busy machine does not fail it
[pair.target_params]
id = "uuid_to_text"
"""


GOOD = "SELECT id FROM item WHERE id::text = %(id)s::text"


def _bad(
    env: Env, legacy: str = GOOD, target: str = GOOD, params: str = "SELECT id FROM item LIMIT 1"
) -> str:
    text = (
        f"[[pair]]\nname = 'broken'\nparams = \"{params}\"\n"
        f'legacy = "{legacy}"\ntarget = "{target}"\n'
    )
    with pytest.raises(ConfigError) as err:
        run_parity(env.settings(), parse(Path("parity.toml"), text), runs=1, save=False)
    return str(err.value)


def test_missing_index_keys_and_bad_files(env: Env, tmp_path: Path) -> None:
    with env.legacy_conn() as c:
        c.execute(ITEMS.format(id="uuid"))
        c.execute("CREATE INDEX ON item (code)")
    with env.target_conn() as c:
        c.execute(ITEMS.format(id="text"))  # ids as text: the key converter's job
    s = env.settings()
    report = run_parity(s, parse(Path("parity.toml"), PAIRS), runs=15)
    assert not report.live
    by_code, by_id = report.pairs
    # Parameters through the key converter: the target takes the legacy uuid as text.
    assert by_id.verdict == "agrees" and by_id.param_sets == 5 and by_id.rows_target == 5
    assert by_code.verdict == "slow" and by_code.difference is None, by_code.to_json()
    assert by_code.plan is not None
    assert "sequential scan of public.item" in by_code.plan.findings[0]
    assert by_code.plan.suggestions == ["CREATE INDEX CONCURRENTLY ON public.item (code);"]
    assert report.exit_code == 4

    with env.target_conn() as c:  # what the report says to run
        c.execute(by_code.plan.suggestions[0])
    # The command, as an operator runs it: the JSON report, exit 0 once both pairs pass.
    (tmp_path / "parity.toml").write_text(PAIRS)
    done = run_cli(
        ["parity", "-f", str(tmp_path / "parity.toml"), "--runs", "15", "--json"], env.env_vars()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "pass" and [p["verdict"] for p in out["pairs"]] == ["agrees", "agrees"]
    assert set(out["pairs"][0]["latency_ms"]["target"]) == {"p50", "p95", "p99"}
    # A bad file is an error naming the pair and the fix, exit 2, no trace.
    bad = PAIRS.replace('name = "item by id"', 'name = "item by id"\ncompare = "bag"')
    (tmp_path / "parity.toml").write_text(bad)
    done = run_cli(["parity", "-f", str(tmp_path / "parity.toml")], env.env_vars())
    assert done.returncode == 2 and "pair #2 'item by id': compare = 'bag'" in done.stderr, (
        done.stderr
    )
    assert "fix:" in done.stderr and "Traceback" not in done.stderr

    # Bad files: each error names the pair, the side and what the server said.
    msg = _bad(env, legacy="SELECT * FROM nowhere WHERE id = %(id)s")
    assert "'broken': the legacy query fails" in msg and '"nowhere" does not exist' in msg
    msg = _bad(env, target="SELEC id FROM item WHERE id = %(id)s")
    assert "'broken': the target query fails: syntax error" in msg
    msg = _bad(env, legacy="SELECT id FROM item WHERE id = %s AND n = %s")
    assert "'broken': the legacy query has 2 %s placeholder(s)" in msg and "1 value(s)" in msg
    msg = _bad(env, target="SELECT id FROM item WHERE code = %(code)s")
    assert "'broken': the target query wants code" in msg
    msg = _bad(env, params="SELECT id FROM item WHERE false")
    assert "'broken': the params query found no rows" in msg
    msg = _bad(env, params="SELECT id FROM item WHERE nope")
    assert "'broken': the legacy query fails" in msg and "nope" in msg

    # Live sync whose apply does not run (its slot exists, nothing applies): the first pair's
    # marker times out and the pair is unsettled, the target lagging; the next pair does not
    # wait again (two waits would take 6 s).
    with env.legacy_conn() as c:
        c.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (s.slot("fwd"),))
    started = time.monotonic()
    report = run_parity(s, parse(Path("parity.toml"), PAIRS), runs=1, marker_timeout_s=3)
    assert time.monotonic() - started < 5.5
    assert report.live and [p.verdict for p in report.pairs] == ["unsettled", "unsettled"]
    assert "the target lags" in (report.pairs[0].unsettled or "") and report.exit_code == 3
