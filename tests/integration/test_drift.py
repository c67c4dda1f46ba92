"""Schema drift through a running pipeline (issue #31, docs/drift.md): DDL on legacy reaches the
target's ``replicator.schema_changes`` in-stream, judged through the MCP mapping; a rename of a
column the mapping reads blocks the cutover and dead-letters the rows it affects (never NULLs)
until the source (or mapping) is fixed and ``drift resolve`` accepts it; the replayed letter
then lands and nothing is lost. One scenario, many assertions (CI budget)."""

from __future__ import annotations

import json
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest

from replicator.status.metrics import StatusCollector
from tests.e2e.cli import Background, run_cli
from tests.support import Env, mcp_writer, wait_for

USER = (
    'INSERT INTO "user" (id, email, full_name, hashed_password, is_active, is_superuser,'
    " created_at) VALUES (%s, %s, 'U', '$2b$10$x', true, false, now())"
)
USER_RENAMED = USER.replace("full_name", "display_name")


def _changes(env: Env) -> list[tuple[Any, ...]]:
    with env.target_conn() as c:
        return c.execute(
            "SELECT tag, table_name, verdict, reason, fix, resolved_at IS NOT NULL"
            " FROM replicator.schema_changes WHERE via <> 'catalog' ORDER BY commit_lsn, seq"
        ).fetchall()


def _catalog_changes(env: Env) -> list[tuple[Any, ...]]:
    with env.target_conn() as c:
        return c.execute(
            "SELECT table_name, verdict, reason, resolved_at IS NOT NULL"
            " FROM replicator.schema_changes WHERE via = 'catalog' ORDER BY id"
        ).fetchall()


def _reference_taken(env: Env) -> bool:
    with env.target_conn() as c:
        return c.execute("SELECT count(*) FROM replicator.catalog_seen").fetchone() == (1,)


def _metrics(env: Env) -> str:
    registry = CollectorRegistry()
    registry.register(StatusCollector(env.settings(mapping="transforms.mcp_manager:MAPPING")))
    return generate_latest(registry).decode()


def _status(vars_: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run_cli(["status", "--json"], vars_).stdout)
    return out


def test_ddl_is_judged_blocks_cutover_and_resolves(env: Env, tmp_path: Path) -> None:
    env.mcp_schemas(scale=1)
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "transforms.mcp_manager:MAPPING",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }
    good, renamed = str(uuid.uuid4()), str(uuid.uuid4())
    with Background(["run"], vars_, tmp_path / "run.log"):
        wait_for(
            lambda: (_status(vars_).get("source") or {}).get("slot_active"), 60, what="the pipeline"
        )
        wait_for(
            lambda: (
                ((_status(vars_).get("target") or {}).get("backfill") or {}).get("status")
                == "applied"
            ),
            60,
            what="the backfill",
        )
        stop, counts = threading.Event(), {}  # the application keeps writing meanwhile
        writer = threading.Thread(target=mcp_writer, args=(env, stop, counts), daemon=True)
        writer.start()
        with env.legacy_conn() as c:
            evts = c.execute("SELECT count(*) FROM pg_event_trigger").fetchone()
            assert evts is not None and evts[0] == 2  # installed by the pipeline's setup
            c.execute('ALTER TABLE "user" ADD COLUMN nickname text')
            c.execute("CREATE TABLE public.newthing (id int PRIMARY KEY)")
            c.execute("DROP TABLE public.newthing")  # the sql_drop trigger's record
            c.execute("ALTER TABLE organization ALTER COLUMN name TYPE varchar(200)")
            c.execute('ALTER TABLE "user" RENAME COLUMN full_name TO display_name')
            c.execute(USER_RENAMED, (renamed, "r@example.com"))
        wait_for(lambda: _reference_taken(env), 30, what="the target watch's first look")
        # The Drizzle team's migration, while the stream runs: existing rows get a value, new
        # ones must bring one.
        with env.target_conn() as c, c.transaction():
            c.execute("ALTER TABLE member ADD COLUMN team_id text NOT NULL DEFAULT 'x'")
            c.execute("ALTER TABLE member ALTER COLUMN team_id DROP DEFAULT")
        seen = wait_for(lambda: len(_changes(env)) >= 5 and _changes(env), 30, what="5 changes")
        verdicts = [(t, tbl, v) for t, tbl, v, *_ in seen]
        assert verdicts == [
            ("ALTER TABLE", "public.user", "safe"),
            ("CREATE TABLE", "public.newthing", "safe"),
            ("DROP TABLE", "public.newthing", "safe"),
            ("ALTER TABLE", "public.organization", "compatible"),
            ("ALTER TABLE", "public.user", "needs_mapping_change"),
        ], seen
        assert "nickname" in seen[0][3]
        assert "not mapped" in seen[1][3] and "map public.newthing" in seen[1][4]
        assert "public.user.name reads public.user.full_name" in seen[4][3]
        assert "display_name" in seen[4][4]  # the fix names the column it may read now
        # The row written under the rename is a dead letter naming the column, not a NULL name.
        letters = wait_for(
            lambda: json.loads(run_cli(["dlq", "list", "--json"], vars_).stdout), 30, what="letter"
        )
        assert len(letters) == 1 and "full_name" in letters[0]["reason"]
        with env.target_conn() as c:
            assert _users_of(env, renamed, good) == 0  # not written with a NULL name
        target_change = wait_for(lambda: _catalog_changes(env), 30, what="the target's change")
        assert target_change[0][:2] == ("public.member", "needs_mapping_change"), target_change
        assert "team_id is NOT NULL without a default" in target_change[0][2]
        r = run_cli(["validate", "--json"], vars_)  # the refused user is missing: not clean
        assert r.returncode != 0, r.stdout + r.stderr
        st = _status(vars_)
        sc = st["target"]["schema_changes"]
        assert sc["counts"] == {"safe": 3, "compatible": 1, "needs_mapping_change": 2}
        assert len(sc["blocking"]) == 2 and any("schema change" in r for r in st["reasons"])
        metrics = _metrics(env)
        assert re.search(
            r'replicator_schema_changes_total\{[^}]*verdict="needs_mapping_change"\} 2\.0', metrics
        )
        assert re.search(r'replicator_schema_changes_total\{[^}]*verdict="safe"\} 3\.0', metrics)
        shown = run_cli(["status"], vars_).stdout  # the table an operator reads
        assert "drift" in shown and "needs_mapping_change" in shown, shown
        drift_list = run_cli(["drift", "list"], vars_)
        assert "BLOCKS CUTOVER" in drift_list.stdout, drift_list.stdout + drift_list.stderr
        r = run_cli(["cutover", "--dry-run", "--yes"], vars_)
        assert r.returncode != 0 and "needs a mapping change" in r.stdout + r.stderr

        # Not fixed yet: resolve refuses and says what is still wrong.
        r = run_cli(["drift", "resolve"], vars_)
        assert r.returncode == 2 and "full_name" in r.stdout + r.stderr
        with env.legacy_conn() as c:
            c.execute('ALTER TABLE "user" RENAME COLUMN display_name TO full_name')
            c.execute(USER, (good, "g@example.com"))
        with env.target_conn() as c:
            c.execute("ALTER TABLE member ALTER COLUMN team_id SET DEFAULT 'none'")
        wait_for(lambda: len(_catalog_changes(env)) == 2, 30, what="the target's fix")
        wait_for(lambda: len(_changes(env)) >= 6, 30, what="the fix's own change")
        assert _changes(env)[5][2] == "safe"
        r = run_cli(["drift", "resolve"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        stop.set()
        writer.join()
        assert counts["txns"] > 0
        assert "1 dead letter(s) of public.user replayed, 0 still failing" in r.stdout, r.stdout
        assert all(c[5] for c in _changes(env) if c[2] == "needs_mapping_change")
        assert _catalog_changes(env)[0][3]  # the target's change is resolved too
        assert _status(vars_)["target"]["schema_changes"]["blocking"] == []
        # The refused row was replayed by the resolution: re-read from the source with the
        # columns it has now (the letter logged the renamed one). Nothing lost.
        assert json.loads(run_cli(["dlq", "list", "--json"], vars_).stdout) == []
        with env.target_conn() as c:
            how = c.execute(
                "SELECT resolution FROM replicator.schema_changes WHERE table_name = 'public.user'"
                " AND verdict = 'needs_mapping_change'"
            ).fetchone()
        assert how and "1 dead letter(s) of public.user replayed" in how[0], how
        wait_for(lambda: _users_of(env, renamed, good) == 2, 30, what="both users on the target")
        r = run_cli(["validate", "--json"], vars_)
        assert json.loads(r.stdout)["outcome"] == "clean", r.stdout + r.stderr
        # Without the event trigger (a role that may not create one): the fallback sees the
        # changed relation when the table is next written.
        with env.legacy_conn() as c:
            c.execute(f"DROP EVENT TRIGGER replicator_{env.name}_ddl")
            c.execute('ALTER TABLE "user" ADD COLUMN age int')
            c.execute(USER, (str(uuid.uuid4()), "h@example.com"))
        wait_for(lambda: len(_changes(env)) >= 7, 30, what="the relation's change")
        with env.target_conn() as c:
            via, verdict, reason = c.execute(
                "SELECT via, verdict, reason FROM replicator.schema_changes ORDER BY id DESC LIMIT 1"
            ).fetchone() or ("", "", "")
        assert (via, verdict) == ("relation", "safe") and "age" in reason, reason
        # Allowed now: the cutover the drift refused goes through.
        r = run_cli(["cutover", "--yes"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(["teardown", "--dry-run"], vars_)
    assert "replicator_" in r.stdout and "ddl" in r.stdout, r.stdout + r.stderr


def _users_of(env: Env, *ids: str) -> int:
    with env.target_conn() as c:
        row = c.execute(
            'SELECT count(*) FROM "user" WHERE id = ANY(%s::text[])', (list(ids),)
        ).fetchone()
    return int(row[0]) if row else 0


def test_apply_ddl_replays_an_identity_tables_alter_in_order(env: Env, tmp_path: Path) -> None:
    """drift.apply_ddl: legacy's ALTER TABLE of an identity: table runs on the target at its
    place in the stream, so the row written after it lands with its new column."""
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_DRIFT__APPLY_DDL": "true",
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
    }
    with Background(["run"], vars_, tmp_path / "run.log"):
        wait_for(
            lambda: (_status(vars_).get("source") or {}).get("slot_active"), 60, what="the pipeline"
        )
        with env.legacy_conn() as c:
            c.execute("INSERT INTO item VALUES (1, 'before')")
            c.execute("ALTER TABLE item ADD COLUMN note text")
            c.execute("INSERT INTO item VALUES (2, 'after', 'noted')")

        def landed() -> Any:
            with env.target_conn() as c:
                try:
                    return c.execute("SELECT id, note FROM item ORDER BY id").fetchall()
                except Exception:  # the column is not there yet
                    return None

        assert wait_for(
            lambda: (rows := landed()) and len(rows) == 2 and rows, 30, what="rows"
        ) == [
            (1, None),
            (2, "noted"),
        ]
        (verdict, reason), *_ = _changes_of(env)
        assert verdict == "safe" and reason.startswith("replayed on the target"), reason


def _changes_of(env: Env) -> list[tuple[Any, ...]]:
    with env.target_conn() as c:
        return c.execute(
            "SELECT verdict, reason FROM replicator.schema_changes ORDER BY id"
        ).fetchall()


def test_the_applications_own_role_runs_its_ddl_as_before(env: Env) -> None:
    """The trigger never stands in the application's way: its migration role (no right on the
    replicator schema) alters its table as before, and a capture that fails only warns."""
    from psycopg.conninfo import make_conninfo

    from replicator.drift.trigger import install

    role = f"app_{env.name}"
    with env.legacy_conn() as c:
        assert install(c, env.name)
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        c.execute(f"CREATE TABLE owned (id int PRIMARY KEY); ALTER TABLE owned OWNER TO {role}")
    try:
        app = make_conninfo(env.legacy.conninfo(), user=role, password="pw")
        with psycopg.connect(app, autocommit=True) as a:
            a.execute("ALTER TABLE owned ADD COLUMN x text")
        with env.legacy_conn() as c:
            c.execute("DROP FUNCTION replicator.ddl_emit(jsonb)")  # the capture now fails
        warnings: list[str] = []
        with psycopg.connect(app, autocommit=True) as a:
            a.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
            a.execute("ALTER TABLE owned ADD COLUMN y text")
            a.execute("DROP TABLE owned")
        assert any("not captured" in w for w in warnings), warnings
    finally:
        with env.legacy_conn() as c:
            c.execute("DROP TABLE IF EXISTS owned")
            c.execute(f"DROP ROLE {role}")


def test_check_says_what_is_lost_without_the_event_trigger(env: Env) -> None:
    """A source role that may not create event triggers: the pipeline runs on the Relation
    fallback, and `check` names what that loses (a finding, not a failure)."""
    from replicator.check import _source
    from transforms.identity import identity_mapping

    role = f"rep_{env.name}"
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY)")
        c.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw'")
        c.execute(f"GRANT SELECT ON item TO {role}")
    try:
        from pydantic import SecretStr

        src = env.legacy.model_copy(update={"user": role, "password": SecretStr("pw")})
        s = env.settings(source=src)
        findings = _source(s, identity_mapping(["public.item"]))
        drift = [f for f in findings if f.check == "drift"]
        assert len(drift) == 1 and drift[0].ok, findings
        assert "seen only when a changed table is next written" in drift[0].message
        assert "superuser" in (drift[0].hint or "")
    finally:
        with env.legacy_conn() as c:
            c.execute(f"DROP OWNED BY {role}")
            c.execute(f"DROP ROLE {role}")
