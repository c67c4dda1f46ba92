"""The whole scenario as a managed service's roles run it (issue #30): no superuser anywhere.

The imitation (docs/managed.md): on each server a role that owns the databases and tables it
replicates, with what a managed provider lets its admin grant — ``REPLICATION`` (RDS's
``rds_replication``), ``GRANT SET ON PARAMETER session_replication_role`` (PostgreSQL 15+) and
``EXECUTE`` on the replication-origin functions. The test's superuser only creates the roles
and hands out those grants; every command runs as the managed roles.

First ``check`` runs with only what a provider gives by default (legacy: REPLICATION; target:
the parameter) and must name each missing grant with the statement that grants it, per side and
direction. After granting exactly those, ``check`` passes and the scenario runs end to end —
backfill → live sync → validate → cutover → rollback → teardown, the MCP mapping — with the
switch invariants asserted on both sides (docs/cutover.md): I1 at most one side unfenced at every
sampled instant, I2 exactly one side takes the application's writes and ``status`` names it,
I3 every committed write on the final writer, I4 the application's privileges as they began.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.cli import Background, run_cli
from tests.support import Env, Server, Services, isolated_env, wait_for

MAPPING = "transforms.mcp_manager:MAPPING"
SECRET = "managed-secret"
ORIGIN_FUNCTIONS = (
    "pg_replication_origin_create(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_drop(text)",
)


@dataclass
class Managed:
    env: Env  # every connection of this Env is the managed role's
    admin: Env  # the same databases as the superuser
    owner: str
    app: str
    committed: dict[str, str] = field(default_factory=dict)  # tag → side

    def conn(self, side: str, *, app: bool = False) -> psycopg.Connection[Any]:
        db = self.env.legacy if side == "legacy" else self.env.target
        if app:
            return psycopg.connect(
                db.conninfo(user=self.app, password="app-secret"), autocommit=True
            )
        return psycopg.connect(db.conninfo(), autocommit=True)

    def admin_conn(self, side: str) -> psycopg.Connection[Any]:
        return self.admin.legacy_conn() if side == "legacy" else self.admin.target_conn()


def _as(server: Server, user: str) -> Server:
    return Server(server.host, server.port, user, SECRET, server.dbname)


@pytest.fixture
def managed(services: Services) -> Iterator[Managed]:
    with isolated_env(services) as admin:
        owner, app = f"own_{admin.name}", f"app_{admin.name}"
        mine = Services(
            _as(services.legacy, owner), _as(services.target, owner), services.kafka, "managed"
        )
        m = Managed(Env(mine, admin.name, admin.legacy_db, admin.target_db), admin, owner, app)
        for side, db, extra in (
            ("legacy", admin.legacy_db, "REPLICATION"),  # what rds_replication grants
            ("target", admin.target_db, ""),
        ):
            with m.admin_conn(side) as c:
                c.execute(
                    f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE {extra}"
                    f" PASSWORD '{SECRET}'"
                )
                c.execute(f"CREATE ROLE {app} LOGIN PASSWORD 'app-secret'")
                c.execute(f'ALTER DATABASE "{db}" OWNER TO {owner}')
        with m.admin_conn("target") as c:  # what a PostgreSQL 15+ provider lets its admin grant
            c.execute(f"GRANT SET ON PARAMETER session_replication_role TO {owner}")
        m.env.mcp_schemas()  # owned by the managed role, as an application's migrations make them
        for side in ("legacy", "target"):
            with m.conn(side) as c:
                c.execute(
                    f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}"
                )
                c.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}")
        yield m
    # The databases are gone (isolated_env); then what outlives them: the parameter grant and
    # the roles.
    for server in (services.legacy, services.target):
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            with contextlib.suppress(psycopg.Error):
                c.execute(f"REVOKE SET ON PARAMETER session_replication_role FROM {owner}")
            for role in (app, owner):
                with contextlib.suppress(psycopg.Error):
                    c.execute(f"DROP ROLE IF EXISTS {role}")


def _vars(m: Managed) -> dict[str, str]:
    return {
        **m.env.env_vars(),
        "REPLICATOR_MAPPING": MAPPING,
        "REPLICATOR_CAPTURE__HEARTBEAT_INTERVAL_S": "0.5",
        "REPLICATOR_CUTOVER__MAX_LAG_S": "5",
        "REPLICATOR_CUTOVER__APP_ROLES": json.dumps([m.app]),
    }


def _grant_the_rest(m: Managed) -> None:
    """Exactly what `check` asked for, run as the superuser (a provider's admin role)."""
    with m.admin_conn("legacy") as c:
        c.execute(f"GRANT SET ON PARAMETER session_replication_role TO {m.owner}")
        for fn in ORIGIN_FUNCTIONS:
            c.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {m.owner}")
    with m.admin_conn("target") as c:
        c.execute(f"ALTER ROLE {m.owner} REPLICATION")
        for fn in ORIGIN_FUNCTIONS:
            c.execute(f"GRANT EXECUTE ON FUNCTION {fn} TO {m.owner}")


class Monitor:
    """I1: samples both sides' fence every few ms; never may both be unfenced."""

    def __init__(self, m: Managed) -> None:
        self.m = m
        self.stop = threading.Event()
        self.samples = 0
        self.both_open = 0
        self.error: BaseException | None = None
        # Before the first cutover the target is not fenced by the replicator: I1 there is the
        # application's (docs/cutover.md). Counted once the first fence is in place.
        self.fenced_once = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        q = "SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'"
        try:
            with self.m.admin_conn("legacy") as lc, self.m.admin_conn("target") as tc:
                while not self.stop.is_set():
                    legacy = lc.execute(q).fetchone()[0]  # type: ignore[index]
                    target = tc.execute(q).fetchone()[0]  # type: ignore[index]
                    self.samples += 1
                    if not legacy and not target and self.fenced_once:
                        self.both_open += 1
                    time.sleep(0.003)
        except BaseException as exc:  # a monitor that died would prove nothing: say so
            self.error = exc


def _write(m: Managed, side: str, tag: str) -> bool:
    try:
        with m.conn(side, app=True) as c:
            c.execute("INSERT INTO audit_log (action, created_at) VALUES (%s, now())", (tag,))
    except psycopg.Error:
        return False
    m.committed[tag] = side
    return True


def _accepts(m: Managed, side: str) -> bool:
    try:
        with m.conn(side, app=True) as c:
            c.autocommit = False
            c.execute("INSERT INTO audit_log (action, created_at) VALUES ('probe', now())")
            c.rollback()
            return True
    except psycopg.Error:
        return False


def _acl(m: Managed) -> dict[str, list[tuple[str, str]]]:
    q = (
        "SELECT c.relname, array(SELECT x::text FROM unnest(c.relacl) x ORDER BY 1)::text"
        " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"
        " ORDER BY 1"
    )
    out = {}
    for side in ("legacy", "target"):
        with m.admin_conn(side) as c:
            out[side] = [(str(a), str(b)) for a, b in c.execute(q).fetchall()]
    return out


def _status(vars_: dict[str, str]) -> dict[str, Any]:
    r = run_cli(["status", "--json"], vars_)
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _backfilled(m: Managed) -> bool:
    with m.conn("target") as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
    return bool(row and row[0] == "applied")


def _on(m: Managed, side: str, tags: set[str]) -> bool:
    with m.conn(side) as c:
        rows = c.execute("SELECT action FROM audit_log WHERE action LIKE 'm-%'").fetchall()
    return tags <= {r[0] for r in rows}


def test_managed_roles_check_then_the_whole_scenario(managed: Managed, tmp_path: Path) -> None:
    m = managed
    vars_ = _vars(m)
    r = run_cli(["check"], {**vars_, "COLUMNS": "2000"})  # one finding a line, unwrapped
    text = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, text
    assert "Traceback" not in text
    owner = m.owner
    for statement in (
        # the reverse apply into legacy, and its echo guard
        f"GRANT SET ON PARAMETER session_replication_role TO {owner};",
        # the reverse capture from the target
        f"ALTER ROLE {owner} REPLICATION;",
        # the echo guard of each direction's apply
        f"GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO {owner};",
        f"GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO {owner};",
        f"GRANT EXECUTE ON FUNCTION pg_replication_origin_drop(text) TO {owner};",
    ):
        assert statement in text, (statement, text)
    for side, direction in (("legacy", "rev"), ("target", "fwd"), ("target", "rev")):
        assert f"{side} ({direction})" in text, (side, direction, text)

    _grant_the_rest(m)
    r = run_cli(["check"], vars_)
    assert r.returncode == 0, r.stdout + r.stderr

    acl_before = _acl(m)
    mon = Monitor(m)
    mon.thread.start()
    with Background(["run"], vars_, tmp_path / "run.log") as run:
        wait_for(lambda: _backfilled(m), 180, what="the backfill")
        assert _write(m, "legacy", "m-fwd-1")
        wait_for(lambda: _on(m, "target", {"m-fwd-1"}), 60, what="the forward stream")
        r = run_cli(["validate"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr

        r = run_cli(["cutover", "--yes", "--json"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        mon.fenced_once = True
        wait_for(lambda: _status(vars_)["direction"] == "rev", 30, what="the direction")
        acl_target_writer = _acl(m)["target"]
        assert not _write(m, "legacy", "m-late"), "fenced legacy took the application's write"
        assert _write(m, "target", "m-rev-1")
        wait_for(lambda: _on(m, "legacy", {"m-rev-1"}), 60, what="the reverse stream")

        r = run_cli(["rollback", "--yes", "--json"], vars_)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: _status(vars_)["direction"] == "fwd", 30, what="the direction back")
        assert not _write(m, "target", "m-late-2"), "fenced target took the application's write"
        assert _write(m, "legacy", "m-fwd-2")
        wait_for(lambda: _on(m, "target", {"m-fwd-2"}), 60, what="the forward stream again")
    mon.stop.set()
    mon.thread.join()
    out = run.output()
    assert "Traceback" not in out, out
    # The one warning a managed role earns: no DDL event trigger (a superuser's right), the
    # documented degraded mode of docs/drift.md; every grant the scenario needs was given.
    warned = [line for line in out.splitlines() if "WARNING" in line]
    assert all("no DDL event trigger" in line for line in warned), warned

    # I1
    assert mon.error is None and mon.samples > 10, (mon.samples, mon.error)
    assert mon.both_open == 0, f"both sides unfenced in {mon.both_open} samples"
    # I2
    assert [s for s in ("legacy", "target") if _accepts(m, s)] == ["legacy"]
    st = _status(vars_)
    assert st["writer"]["writer"] == "legacy" and not st["writer"].get("problems"), st["writer"]
    # I3: every committed write is on the final writer (and, replicated, on the other side)
    assert _on(m, "legacy", set(m.committed)), m.committed
    # I4: legacy's privileges end as they began; the target's were the same while it was the
    # writer, and it ends fenced as after any rollback: the application's writes revoked there.
    acl = _acl(m)
    assert acl["legacy"] == acl_before["legacy"]
    assert acl_target_writer == acl_before["target"]
    with m.admin_conn("target") as c:
        row = c.execute(
            "SELECT bool_or(has_table_privilege(%s, 'public.audit_log', p))"
            " FROM unnest(array['INSERT', 'UPDATE', 'DELETE']) p",
            (m.app,),
        ).fetchone()
    assert row == (False,), "the application still writes to the fenced target"

    r = run_cli(["teardown", "--yes"], vars_)
    assert r.returncode == 0, r.stdout + r.stderr
    for side in ("legacy", "target"):
        with m.admin_conn(side) as c:
            left = c.execute(
                "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s)"
                " + (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE %s)",
                (f"{m.env.name}%", f"replicator_{m.env.name}_%"),
            ).fetchone()
            assert left == (0,), (side, left)
