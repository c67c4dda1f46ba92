"""The version matrix: one compact migration per pair of PostgreSQL majors, legacy → target.

Each pair runs the MCP mapping through the CLI: backfill → live sync with a large transaction
(streamed on 14+, as carrier-row controls beside it on 13) that leaves a TOASTed column
unchanged → validate → cutover → a write on the target streamed back → rollback. One cluster per
major, started once for the session (fetched binaries: ``replicator services fetch-pg``; a
major whose binaries are absent is skipped with the command that fetches them). The results
are printed as a table (pair, pass, seconds) at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicator.local import pgversions
from tests.e2e.cli import Background, run_cli
from tests.support import Env, Server, Services, isolated_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.versions]
SUMMARY: list[str] = []  # printed by tests/conftest.py at the end of the session
RESULTS: dict[str, tuple[bool, float]] = {}
PAIRS = [(13, 18), (14, 17), (16, 16), (17, 17), (18, 18), (15, 15)]
MAPPING = "transforms.mcp_manager:MAPPING"


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[Callable[[int], Server]]:
    """A cluster per major, started on first use and stopped at the end if this started it."""
    from replicator.local import services as ls

    started: dict[int, Server] = {}
    stop: list[str] = []

    def server(version: int) -> Server:
        if version not in started:
            if not pgversions.available(version):
                pytest.skip(
                    f"PostgreSQL {version} binaries are absent: `replicator services fetch-pg "
                    f"{version}` (or REPLICATOR_PG_VERSIONS=all deploy/local/bootstrap.sh)"
                )
            name = f"matrix-pg{version}"
            running = ls.status()["postgres"].get(name, {}).get("running", False)
            c = ls.start_postgres(name, version=version)
            if not running:
                stop.append(name)
            srv = Server(c.host, c.port, c.user, c.password)
            with psycopg.connect(srv.dsn(), autocommit=True) as conn:
                # Small, so that the scenario's large transaction is streamed (14+) or spilled.
                conn.execute("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
                conn.execute("SELECT pg_reload_conf()")
            started[version] = srv
        return started[version]

    yield server
    for name in stop:
        with contextlib.suppress(Exception):
            ls.stop_postgres(name)


def _vars(env: Env) -> dict[str, str]:
    return {
        **env.env_vars(),
        "REPLICATOR_MAPPING": MAPPING,
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
        "REPLICATOR_CAPTURE__STREAMING": "true",
        "REPLICATOR_CUTOVER__MAX_LAG_S": "5",
    }


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _backfilled(env: Env) -> bool:
    with env.target_conn() as c:
        try:
            return _one(c, "SELECT status FROM replicator.backfill LIMIT 1") == "applied"
        except psycopg.Error:
            return False


def _died(run: Background) -> bool:
    if run.proc.poll() is not None:
        raise AssertionError(f"`replicator run` exited: {run.output()[-2000:]}")
    return False


def _json(r: Any) -> dict[str, Any]:
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    return out


def _status(vars_: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run_cli(["status", "--json"], vars_).stdout)
    return out


def _scenario(env: Env, tmp_path: Path, legacy_major: int) -> None:
    env.mcp_schemas(scale=1)
    vars_ = _vars(env)
    with env.legacy_conn() as c:
        # A config too large to stay inline (TOASTed), left unchanged by the update below.
        server_id = _one(c, "SELECT id FROM mcp_server ORDER BY id LIMIT 1")
        c.execute(
            "UPDATE mcp_server SET config = json_build_object('blob',"
            " (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400)))"
            " WHERE id = %s",
            (server_id,),
        )
    r = run_cli(["check"], vars_)
    assert r.returncode == 0, r.stdout + r.stderr
    if legacy_major == 13:
        assert "carries no logical messages" in " ".join(r.stdout.split()), r.stdout
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _backfilled(env) or _died(run), 180, what="the backfill")
        with env.legacy_conn() as c:
            slot = f"SELECT failover FROM pg_replication_slots WHERE slot_name = '{env.name}_fwd'"
            if legacy_major >= 17:  # a failover slot where the server has them
                assert _one(c, slot) is True
            if legacy_major == 13:  # heartbeats and markers travel as carrier rows
                assert _one(c, "SELECT count(*) FROM replicator.wal_message") > 0
        with env.legacy_conn() as c, c.transaction():
            # One transaction well past logical_decoding_work_mem (64 kB): streamed on 14+.
            c.execute(
                "INSERT INTO audit_log (action, created_at)"
                " SELECT 'bulk-' || g, now() FROM generate_series(1, 3000) g"
            )
            c.execute("UPDATE mcp_server SET enabled = NOT enabled WHERE id = %s", (server_id,))
        with env.target_conn() as c:
            wait_for(
                lambda: (
                    _one(c, "SELECT count(*) FROM audit_log WHERE action LIKE 'bulk-%'") == 3000
                ),
                90,
                what="the large transaction on the target",
            )
        if legacy_major >= 14:
            with env.legacy_conn() as c:
                streamed = (
                    "SELECT stream_txns FROM pg_stat_replication_slots"
                    f" WHERE slot_name = '{env.name}_fwd'"
                )
                wait_for(lambda: (_one(c, streamed) or 0) > 0, 30, what="a streamed transaction")
        with env.legacy_conn() as c:  # DDL in the stream: a logical message, a carrier row on 13
            c.execute("ALTER TABLE audit_log ADD COLUMN matrix_note text")
        with env.target_conn() as c:
            seen = (
                "SELECT verdict FROM replicator.schema_changes WHERE via = 'event_trigger'"
                " AND table_name = 'public.audit_log'"
            )
            wait_for(lambda: _one(c, seen) == "safe", 60, what="the DDL judged on the target")
        r = run_cli(["validate"], vars_)  # the TOASTed config kept, every row equal
        assert r.returncode == 0, r.stdout + r.stderr

        out = _json(run_cli(["cutover", "--yes", "--json"], vars_, timeout=180))
        assert out["switched"], out
        wait_for(lambda: _status(vars_)["direction"] == "rev", 30, what="the direction")
        with env.target_conn() as c:
            c.execute("INSERT INTO audit_log (action, created_at) VALUES ('on-target', now())")
        with env.legacy_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT 1 FROM audit_log WHERE action = 'on-target'"),
                60,
                what="the reverse stream into legacy",
            )
        out = _json(run_cli(["rollback", "--yes", "--json"], vars_, timeout=180))
        assert out["switched"] and out["action"] == "rollback", out
        wait_for(lambda: _status(vars_)["direction"] == "fwd", 30, what="the direction back")
        with env.legacy_conn() as c:
            c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after', now())")
        with env.target_conn() as c:
            wait_for(
                lambda: _one(c, "SELECT 1 FROM audit_log WHERE action = 'after'"),
                60,
                what="the forward stream re-armed",
            )
    assert "Traceback" not in run.output(), run.output()[-3000:]


@pytest.mark.parametrize("legacy_major,target_major", PAIRS, ids=[f"{a}to{b}" for a, b in PAIRS])
def test_migration_between_majors(
    legacy_major: int,
    target_major: int,
    pg_servers: Callable[[int], Server],
    services: Services,
    tmp_path: Path,
) -> None:
    legacy, target = pg_servers(legacy_major), pg_servers(target_major)
    pair = f"{legacy_major} → {target_major}"
    t0 = time.monotonic()
    ok = False
    try:
        with isolated_env(Services(legacy, target, services.kafka, "versions")) as env:
            _scenario(env, tmp_path, legacy_major)
        ok = True
    finally:
        RESULTS[pair] = (ok, time.monotonic() - t0)
        SUMMARY[:] = [
            "version matrix (legacy → target):",
            f"  {'pair':<10} {'pass':<6} seconds",
            *(
                f"  {p:<10} {'yes' if passed else 'NO':<6} {secs:5.1f}"
                for p, (passed, secs) in RESULTS.items()
            ),
        ]
