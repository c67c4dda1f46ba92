"""Cutover against real PostgreSQL and Kafka with the MCP mapping and a writer running throughout."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import bcrypt
import psycopg
import pytest

from replicator.cutover.switch import Cutover
from replicator.errors import CutoverAborted, PreconditionError, ReplicatorError
from replicator.runtime.pipeline import Pipeline
from replicator.validate.run import validate
from tests.support import Env, wait_for
from transforms.loader import load_mapping

STEPS = [
    "preflight",
    "arm",
    "pre-verify",
    "catch-up",
    "fence",
    "drain",
    "verify",
    "decide",
    "switch",
    "finish",
]
# Every point before the switch hook ran, where a failure must leave the old writer writing.
BEFORE_THE_HOOK = [*STEPS[:8], "decide:new", "switch"]


@pytest.fixture
def synced(env: Env) -> Iterator[tuple[Any, Pipeline]]:
    env.mcp_schemas(scale=1, seed=3)
    s = env.settings(cutover={"max_lag_s": 5.0, "drain_timeout_s": 20.0})
    pipeline = Pipeline(s, load_mapping("transforms.mcp_manager:MAPPING"))
    pipeline.start()
    try:
        wait_for(lambda: _backfill_applied(env), 120, what="the backfill")
        report = validate(s, pipeline.mapping)
        assert report.outcome == "clean", report
        yield s, pipeline
    finally:
        pipeline.shutdown()


def _backfill_applied(env: Env) -> bool:
    with env.target_conn() as c:
        try:
            row = c.execute("SELECT status FROM replicator.backfill LIMIT 1").fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0] == "applied")


class AuditWriter:
    """The application: audit rows on legacy until it is told the target is the writer."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.on_target = threading.Event()
        self.stop = threading.Event()
        self.legacy_ok: list[str] = []
        self.legacy_failed: list[str] = []
        self.target_ok: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        legacy = self.env.legacy_conn()
        target = self.env.target_conn()
        while not self.stop.is_set():
            n += 1
            tag = f"w{n}"
            if self.on_target.is_set():
                target.execute(
                    "INSERT INTO audit_log (action, target, created_at) VALUES (%s, 'x', now())",
                    (tag,),
                )
                self.target_ok.append(tag)
            else:
                try:
                    legacy.execute(
                        "INSERT INTO audit_log (action, target, created_at) VALUES (%s, 'x', now())",
                        (tag,),
                    )
                    self.legacy_ok.append(tag)
                except psycopg.Error:
                    self.legacy_failed.append(tag)
            time.sleep(0.002)
        legacy.close()
        target.close()

    def __enter__(self) -> AuditWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def _tags(conn: psycopg.Connection[Any]) -> set[str]:
    with conn:
        return {
            r[0]
            for r in conn.execute("SELECT action FROM audit_log WHERE action LIKE 'w%'").fetchall()
        }


def test_cutover_with_a_writer_running_loses_and_splits_nothing(env: Env, synced: Any) -> None:
    s, pipeline = synced
    hook_flag = env.legacy_db + ".switched"
    with AuditWriter(env) as w:
        time.sleep(0.5)
        out = Cutover(s, pipeline.mapping, switch_hook=f"touch /tmp/{hook_flag}").run()
        w.on_target.set()
        time.sleep(0.5)
    assert out.switched and out.pause_s is not None
    assert [st.name for st in out.steps] == STEPS
    legacy_rows = _tags(env.legacy_conn())
    target_rows = _tags(env.target_conn())
    # A write refused by the fence never committed on legacy (the target's writes come back
    # through the reverse stream, which is armed at the switch).
    assert legacy_rows - set(w.target_ok) == set(w.legacy_ok)
    assert not set(w.legacy_failed) & legacy_rows
    assert (
        set(w.legacy_ok) <= target_rows
    )  # every write committed before the fence is in the target
    assert (
        set(w.target_ok) <= target_rows and w.target_ok
    )  # after the switch, writes succeed on the target
    with env.legacy_conn() as c, pytest.raises(psycopg.Error, match="fenced"):
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('late', now())")
    with env.target_conn() as c:
        assert (
            c.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (s.slot("rev"),)
            ).fetchone()[0]
            == 1
        )  # type: ignore[index]
        steps = c.execute(
            "SELECT step FROM replicator.cutover_journal WHERE run_id = %s", (out.run_id,)
        ).fetchall()
        assert sorted(r[0] for r in steps) == sorted(STEPS)


def test_failure_at_each_step_leaves_legacy_writable_and_sync_running(
    env: Env, synced: Any
) -> None:
    s, pipeline = synced
    for i, step in enumerate(BEFORE_THE_HOOK):
        with pytest.raises(CutoverAborted) as err:
            Cutover(s, pipeline.mapping, fail_at=step).run()
        assert err.value.step == step.split(":")[0]
        assert _decisions(env) == []
        with env.legacy_conn() as c:
            c.execute(
                "INSERT INTO audit_log (action, created_at) VALUES (%s, now())", (f"after-{i}",)
            )
            assert (
                c.execute(
                    "SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'"
                ).fetchone()[0]
                == 0
            )  # type: ignore[index]
        tag = f"after-{i}"
        wait_for(lambda tag=tag: tag in _actions(env), 30, what=f"sync after an abort at {step}")
        with env.target_conn() as c:
            assert (
                c.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                    (s.slot("rev"),),
                ).fetchone()[0]
                == 0
            )  # type: ignore[index]


def test_dry_run_changes_nothing_and_reports_the_pause(env: Env, synced: Any) -> None:
    s, pipeline = synced
    out = Cutover(s, pipeline.mapping).run(dry_run=True)
    assert not out.switched and out.pause_s is not None and out.pause_s < 30
    assert [st.name for st in out.steps] == [*STEPS[:7], "unfence"]
    with env.legacy_conn() as c:
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after-dry-run', now())")
    wait_for(lambda: "after-dry-run" in _actions(env), 30, what="sync after the dry run")


def test_preflight_lists_every_reason(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY)")
    s = env.settings(cutover={"max_lag_s": 0.5})
    with pytest.raises(CutoverAborted) as err:
        Cutover(s, load_mapping("identity:public.item")).run()
    text = str(err.value)
    assert "no backfill has run" in text
    assert "lag" in text


def _decisions(env: Env) -> list[Any]:
    out = []
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn:
            if conn.execute("SELECT to_regclass('replicator.switch_decision')").fetchone()[0]:  # type: ignore[index]
                out += conn.execute(
                    "SELECT action, run_id FROM replicator.switch_decision"
                ).fetchall()
    return out


def _actions(env: Env) -> set[str]:
    with env.target_conn() as c:
        return {r[0] for r in c.execute("SELECT action FROM audit_log").fetchall()}


def test_cutover_rollback_cutover_round_trip(env: Env, synced: Any) -> None:
    s, pipeline = synced
    out = Cutover(s, pipeline.mapping).run()
    assert out.switched
    wait_for(
        lambda: pipeline.direction == "rev" and pipeline.workers,
        30,
        what="the reverse direction to run",
    )
    # A new user signs up through the real Better-Auth instance (user, credential account and a
    # session; the session has no legacy counterpart and is filtered).
    signed_up = env.better_auth("sign-up", "fresh@example.com", "fresh-password", "Fresh User")
    assert signed_up["exit"] == 0, signed_up
    new_id = signed_up["userId"]
    with env.target_conn() as c:
        c.execute(
            'UPDATE "user" SET name = \'Renamed On Target\' WHERE id = (SELECT min(id) FROM "user" WHERE id <> %s)',
            (new_id,),
        )
        gone = c.execute(
            'SELECT min(u.id) FROM "user" u WHERE u.id <> %s AND NOT EXISTS '
            "(SELECT 1 FROM member m WHERE m.user_id = u.id)",
            (new_id,),
        ).fetchone()[0]  # type: ignore[index]
        c.execute("DELETE FROM account WHERE user_id = %s", (gone,))
        c.execute('DELETE FROM "user" WHERE id = %s', (gone,))
        c.execute(
            "UPDATE mcp_server SET config = '{\"changed\": true}'::jsonb WHERE id = (SELECT min(id) FROM mcp_server)"
        )
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('on-target', now())")

    def legacy_caught_up() -> bool:
        with env.legacy_conn() as c:
            new = c.execute(
                'SELECT email, hashed_password FROM "user" WHERE id = %s', (new_id,)
            ).fetchone()
            deleted = c.execute('SELECT 1 FROM "user" WHERE id = %s', (gone,)).fetchone()
            cfg = c.execute("SELECT config FROM mcp_server ORDER BY id LIMIT 1").fetchone()
            audit = c.execute("SELECT 1 FROM audit_log WHERE action = 'on-target'").fetchone()
            return bool(
                new
                and new[1].startswith("$2b$")
                and bcrypt.checkpw(b"fresh-password", new[1].encode())  # legacy can verify it
                and deleted is None
                and cfg
                and cfg[0] == {"changed": True}
                and audit
            )

    wait_for(legacy_caught_up, 60, what="legacy to receive the target's writes")

    def ddl_in_window(step: Any) -> None:  # issue #31: the target's DDL after the preflight
        if step.name == "catch-up":
            with env.target_conn() as c:
                c.execute("CREATE INDEX audit_target ON audit_log (target)")

    with pytest.raises(CutoverAborted, match="target schema changed during the rollback's"):
        Cutover(s, pipeline.mapping, action="rollback", report=ddl_in_window).run()
    with env.target_conn() as c:  # still the writer
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('kept', now())")
    back = Cutover(s, pipeline.mapping, action="rollback").run()
    assert back.switched
    with env.target_conn() as c, pytest.raises(psycopg.Error, match="fenced"):
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('late', now())")
    wait_for(
        lambda: pipeline.direction == "fwd" and pipeline.workers,
        30,
        what="the forward direction again",
    )
    with env.legacy_conn() as c:  # legacy is the writer again, and its writes flow forward
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after-rollback', now())")
    wait_for(lambda: "after-rollback" in _actions(env), 60, what="forward sync after the rollback")
    report = validate(s, pipeline.mapping)
    assert report.outcome == "clean", report.differences
    again = Cutover(s, pipeline.mapping).run()
    assert again.switched
    with env.legacy_conn() as lc, env.target_conn() as tc:
        for action in ("on-target", "after-rollback"):
            assert (
                lc.execute(
                    "SELECT count(*) FROM audit_log WHERE action = %s", (action,)
                ).fetchone()[0]
                == 1
            )  # type: ignore[index]
            assert (
                tc.execute(
                    "SELECT count(*) FROM audit_log WHERE action = %s", (action,)
                ).fetchone()[0]
                == 1
            )  # type: ignore[index]


def test_failure_at_each_rollback_step_leaves_the_target_writable(env: Env, synced: Any) -> None:
    s, pipeline = synced
    assert Cutover(s, pipeline.mapping).run().switched
    wait_for(
        lambda: pipeline.direction == "rev" and pipeline.workers, 30, what="the reverse direction"
    )
    for i, step in enumerate(BEFORE_THE_HOOK):
        with pytest.raises(CutoverAborted):
            Cutover(s, pipeline.mapping, action="rollback", fail_at=step).run()
        assert _decisions(env) == []
        # Both sides: the target writes, legacy stays fenced (an abort once unfenced both).
        assert _fenced(env.legacy_conn()), f"legacy unfenced by an abort at {step}"
        assert not _fenced(env.target_conn())
        tag = f"target-{i}"
        with env.target_conn() as c:
            c.execute("INSERT INTO audit_log (action, created_at) VALUES (%s, now())", (tag,))
        with env.legacy_conn() as c:
            wait_for(
                lambda tag=tag: c.execute(
                    "SELECT 1 FROM audit_log WHERE action = %s", (tag,)
                ).fetchone(),
                30,
                what=f"reverse sync after an abort at {step}",
            )


def test_rollback_verify_refuses_a_legacy_row_that_differs(env: Env, synced: Any) -> None:
    """The rollback re-checks the legacy rows the reverse stream wrote: one changed on legacy
    behind its back stops the rollback at verify, and the target stays the writer."""
    s, pipeline = synced
    assert Cutover(s, pipeline.mapping).run().switched
    wait_for(
        lambda: pipeline.direction == "rev" and pipeline.workers, 30, what="the reverse direction"
    )
    with env.target_conn() as c:
        uid = c.execute('SELECT min(id) FROM "user"').fetchone()[0]  # type: ignore[index]
        c.execute("UPDATE \"user\" SET name = 'Renamed On Target' WHERE id = %s", (uid,))

    def legacy_name() -> Any:
        with env.legacy_conn() as c:
            return c.execute('SELECT full_name FROM "user" WHERE id = %s', (uid,)).fetchone()[0]  # type: ignore[index]

    wait_for(lambda: legacy_name() == "Renamed On Target", 60, what="the reverse stream")
    with env.legacy_conn() as c:  # behind the fence's back, as only a superuser can
        c.execute("SET session_replication_role = replica")
        c.execute("UPDATE \"user\" SET full_name = 'Drifted' WHERE id = %s", (uid,))
    with pytest.raises(CutoverAborted) as failed:
        Cutover(s, pipeline.mapping, action="rollback").run()
    assert failed.value.step == "verify", failed.value
    with env.target_conn() as c:  # still the writer
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after-abort', now())")
    assert pipeline.direction == "rev"


def test_cutover_verify_checks_changes_made_after_the_preflight(env: Env, synced: Any) -> None:
    """The pre-fence verification proves the changes topic up to its end, and verify in the pause
    reads only the tail: a row changed on legacy after that verification, then wrong on the
    target, still stops the cutover at verify, and legacy stays the writer (unfenced)."""
    s, _pipeline = synced
    with env.legacy_conn() as c:
        sid = c.execute("SELECT min(id) FROM mcp_server").fetchone()[0]  # type: ignore[index]

    def between_steps(step: Any) -> None:
        if step.name == "catch-up":  # after the last check before the fence
            with env.legacy_conn() as c:
                c.execute("UPDATE mcp_server SET name = 'after preflight' WHERE id = %s", (sid,))
        elif step.name == "drain":  # applied by now; then damaged on the target
            with env.target_conn() as c:
                c.execute("UPDATE mcp_server SET name = 'damaged' WHERE id = %s", (sid,))

    with pytest.raises(CutoverAborted) as failed:
        Cutover(s, _pipeline.mapping, report=between_steps).run()
    assert failed.value.step == "verify", failed.value
    with env.legacy_conn() as c:  # unfenced: still the writer
        c.execute("UPDATE mcp_server SET name = 'writable' WHERE id = %s", (sid,))


def test_legacy_ddl_in_the_cutovers_window_stops_it_and_legacy_stays_the_writer(
    env: Env, synced: Any
) -> None:
    """Issue #31: the preflight judged the mapping against the schema before it; DDL after it
    (here a new index, even a safe change) stops the switch, which leaves legacy the writer."""
    s, _pipeline = synced

    def between_steps(step: Any) -> None:
        if step.name == "catch-up":  # after the last check before the fence
            with env.legacy_conn() as c:
                c.execute("CREATE INDEX audit_action ON audit_log (action)")

    with pytest.raises(CutoverAborted) as failed:
        Cutover(s, _pipeline.mapping, report=between_steps).run()
    assert failed.value.step == "verify", failed.value
    assert "schema changed during the cutover's window: CREATE INDEX" in failed.value.message
    with env.legacy_conn() as c:  # unfenced: still the writer
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after', now())")


def _fenced(conn: psycopg.Connection[Any]) -> bool:
    with conn:
        row = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'")
        return bool(row.fetchone()[0])  # type: ignore[index]


class _HookThatDies(Cutover):
    """A switch hook that may have switched the application, then died (a timeout, a kill)."""

    def _run_hook(self) -> None:
        raise ReplicatorError("the hook's process was killed")


def test_a_switch_stopped_after_its_hook_stays_fenced_and_a_rerun_finishes_it(
    env: Env, synced: Any
) -> None:
    """Past the point of no return the old writer is never unfenced: a failure after the hook
    (recording the direction) or inside it (a hook that died) leaves the decision on both
    sides, `status` names it, and the same command run again finishes the switch."""
    from replicator.status import collect

    s, pipeline = synced
    with pytest.raises(CutoverAborted, match="again to finish") as stopped:
        Cutover(s, pipeline.mapping, fail_at="finish:source").run()
    assert stopped.value.step == "finish"
    assert _fenced(env.legacy_conn()) and not _fenced(env.target_conn())
    assert {r[0] for r in _decisions(env)} == {"cutover"}  # the source side still holds it
    st = collect(s)
    assert st.switching is not None and st.switching["action"] == "cutover"
    assert any("`replicator cutover --yes` again" in r for r in st.reasons), st.reasons
    with pytest.raises(PreconditionError, match="cutover"):
        Cutover(s, pipeline.mapping, action="rollback").run()  # not while a cutover is open
    done = Cutover(s, pipeline.mapping).run()
    assert done.switched and done.resumed_run_id
    assert [x.name for x in done.steps] == ["resume", "switch", "finish"]
    assert _decisions(env) == [] and _fenced(env.legacy_conn())
    wait_for(lambda: pipeline.direction == "rev" and pipeline.workers, 30, what="reverse")
    with env.target_conn() as c:
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after-resume', now())")
    with env.legacy_conn() as c:
        wait_for(
            lambda: c.execute("SELECT 1 FROM audit_log WHERE action = 'after-resume'").fetchone(),
            60,
            what="the target's write through the reverse stream",
        )

    with pytest.raises(CutoverAborted, match="stays fenced"):
        _HookThatDies(s, pipeline.mapping, action="rollback").run()
    assert _fenced(env.target_conn())  # the hook may have switched: the target stays fenced
    assert {r[0] for r in _decisions(env)} == {"rollback"}
    back = Cutover(s, pipeline.mapping, action="rollback").run()
    assert back.switched and back.resumed_run_id
    assert _decisions(env) == [] and not _fenced(env.legacy_conn())
    wait_for(lambda: pipeline.direction == "fwd" and pipeline.workers, 30, what="forward")


def test_a_hook_that_refuses_leaves_legacy_the_writer(env: Env, synced: Any) -> None:
    """A hook exiting non-zero says it did not switch: the decision is taken back first, then
    legacy is unfenced and the reverse slot dropped."""
    s, pipeline = synced
    with pytest.raises(CutoverAborted, match="switch hook exited with 1"):
        Cutover(s, pipeline.mapping, switch_hook="false").run()
    assert _decisions(env) == [] and not _fenced(env.legacy_conn())
    with env.legacy_conn() as c:
        c.execute("INSERT INTO audit_log (action, created_at) VALUES ('after-refusal', now())")
    wait_for(lambda: "after-refusal" in _actions(env), 30, what="sync after a refused hook")


def test_a_write_queued_behind_the_fence_never_commits_on_legacy(env: Env, synced: Any) -> None:
    """A transaction in flight holds the fence's lock back; a write that arrives meanwhile
    queues behind the fence, then meets its trigger once the fence commits. The in-flight
    write, committed before the fence, reaches the target."""
    s, pipeline = synced
    inflight = psycopg.connect(env.legacy.conninfo())  # a transaction left open
    inflight.execute("INSERT INTO audit_log (action, created_at) VALUES ('in-flight', now())")
    queued: list[BaseException | None] = []

    def queue_a_write() -> None:
        with env.legacy_conn() as c:
            try:
                c.execute("INSERT INTO audit_log (action, created_at) VALUES ('queued', now())")
                queued.append(None)
            except psycopg.Error as exc:
                queued.append(exc)

    def fence_waiting() -> bool:
        with env.legacy_conn() as c:
            row = c.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'ExclusiveLock'"
                " AND relation = 'audit_log'::regclass"
            ).fetchone()
            return bool(row and row[0])

    result: list[Any] = []

    def cutover() -> None:
        try:
            result.append(Cutover(s, pipeline.mapping, lock_timeout_ms=20_000).run())
        except BaseException as exc:
            result.append(exc)

    cut = threading.Thread(target=cutover, daemon=True)
    cut.start()
    wait_for(
        lambda: fence_waiting() or result, 90, what="the fence to wait for the in-flight write"
    )
    assert not result, result
    writer = threading.Thread(target=queue_a_write, daemon=True)
    writer.start()
    time.sleep(0.3)  # the write is queued behind the fence's lock request
    assert not queued
    inflight.commit()
    writer.join(30)
    cut.join(60)
    inflight.close()
    assert result and not isinstance(result[0], BaseException) and result[0].switched, result
    assert isinstance(queued[0], psycopg.Error) and "fenced" in str(queued[0])
    with env.legacy_conn() as c:
        rows = {r[0] for r in c.execute("SELECT action FROM audit_log").fetchall()}
    assert "in-flight" in rows and "queued" not in rows
    assert "in-flight" in _actions(env)


def test_application_roles_get_their_write_privileges_back_when_their_side_writes_again(
    env: Env, synced: Any
) -> None:
    """The fence revokes the application roles' writes on the old writer; the switch that makes
    that side the writer again (here a rollback, run by another process than the cutover) gives
    back exactly what was revoked — the record lives on the fenced side, not in memory."""
    _, pipeline = synced
    role = f"app_{env.name}"
    tables = ["public.audit_log", "public.mcp_server"]
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute(f'CREATE ROLE "{role}"')
            for t in tables:
                c.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO "{role}"')

    def can_insert(conn: Any) -> bool:
        with conn as c:
            row = c.execute(
                "SELECT has_table_privilege(%s, 'public.audit_log', 'INSERT')", (role,)
            ).fetchone()
        return bool(row and row[0])

    s = env.settings(cutover={"max_lag_s": 5.0, "drain_timeout_s": 20.0, "app_roles": [role]})
    try:
        assert Cutover(s, pipeline.mapping).run().switched
        assert not can_insert(env.legacy_conn()) and can_insert(env.target_conn())
        wait_for(lambda: pipeline.direction == "rev" and pipeline.workers, 30, what="reverse")
        assert Cutover(s, pipeline.mapping, action="rollback").run().switched
        assert can_insert(env.legacy_conn()) and not can_insert(env.target_conn())
        with env.legacy_conn() as c:
            left = c.execute("SELECT count(*) FROM replicator.fence_revoked").fetchone()
        assert left == (0,)
        wait_for(lambda: pipeline.direction == "fwd" and pipeline.workers, 30, what="forward")
        assert Cutover(s, pipeline.mapping).run().switched
        assert not can_insert(env.legacy_conn()) and can_insert(env.target_conn())
    finally:
        for conn in (env.legacy_conn(), env.target_conn()):
            with conn as c:
                c.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def test_rollback_verify_refuses_a_target_write_the_reverse_mapping_refuses(
    env: Env, synced: Any
) -> None:
    """A write on the target inside the rollback's window that the reverse mapping refuses (a
    credential account whose password was set NULL) would be missing on legacy: the verify
    stops the rollback, and the target stays the writer with legacy fenced."""
    s, pipeline = synced
    assert Cutover(s, pipeline.mapping).run().switched
    wait_for(
        lambda: pipeline.direction == "rev" and pipeline.workers, 30, what="the reverse direction"
    )

    def between_steps(step: Any) -> None:
        if step.name == "catch-up":  # after the preflight read the reverse stream
            with env.target_conn() as c:
                c.execute(
                    "UPDATE account SET password = NULL WHERE id = (SELECT min(id) FROM account"
                    " WHERE provider_id = 'credential')"
                )

    with pytest.raises(CutoverAborted) as failed:
        Cutover(s, pipeline.mapping, action="rollback", report=between_steps).run()
    assert failed.value.step == "verify", failed.value
    assert "refused by the reverse mapping" in failed.value.message
    assert _fenced(env.legacy_conn()) and not _fenced(env.target_conn())
    assert pipeline.direction == "rev"
