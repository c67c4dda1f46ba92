"""The switch's guards one by one, against the real server: a fence revokes what the role
really holds (through a group too) and gives back exactly that; a fence left without a
decision is flagged by `status` and undone by `recover` from its record; the preflight
refuses a side the apply could not write into once fenced."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import psycopg
import pytest

from replicator.cutover import fence as fencing
from replicator.cutover import recover
from replicator.cutover.preflight import _may_set_replication_role
from replicator.status import collect
from tests.e2e.cli import run_cli
from tests.support import Env

TABLES = ["public.item", "public.note"]


@pytest.fixture
def roles(env: Env) -> Iterator[tuple[str, str]]:
    role, group = f"app_{env.name}", f"grp_{env.name}"
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, v text)")
        c.execute("CREATE TABLE note (id int PRIMARY KEY, v text)")
        c.execute(f'CREATE ROLE "{group}" NOLOGIN')
        c.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'pw\' IN ROLE "{group}"')
        c.execute(f'GRANT SELECT, INSERT, UPDATE ON item TO "{group}" WITH GRANT OPTION')
        c.execute(f'GRANT INSERT, DELETE ON note TO "{role}"')
        c.execute("GRANT INSERT ON note TO PUBLIC")
    try:
        yield role, group
    finally:
        with env.legacy_conn() as c:
            for r in (role, group):
                c.execute(f'DROP OWNED BY "{r}"; DROP ROLE "{r}"')


def _acl(env: Env) -> list[tuple[str, str]]:
    with env.legacy_conn() as c:
        rows = c.execute(
            "SELECT relname, array(SELECT x::text FROM unnest(relacl) x ORDER BY 1)::text"
            " FROM pg_class WHERE relname IN ('item', 'note') ORDER BY 1"
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def _can(env: Env, role: str, table: str, priv: str) -> bool:
    with env.legacy_conn() as c:
        row = c.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, priv)).fetchone()
    return bool(row and row[0])


def test_a_fence_revokes_what_the_role_holds_through_a_group_and_gives_back_exactly_that(
    env: Env, roles: tuple[str, str]
) -> None:
    role, group = roles
    before = _acl(env)
    f = fencing.fence(
        env.legacy, TABLES, app_roles=[role], lock_timeout_ms=500, attempts=2, run_id="r1"
    )
    # Taken from whoever held it: the group (item), the role (note), PUBLIC (note's INSERT).
    assert {(g, t, p) for g, t, p in f.revoked} >= {
        (group, "public.item", "INSERT"),
        (role, "public.note", "DELETE"),
        ("PUBLIC", "public.note", "INSERT"),
    }
    for table, priv in (("public.item", "INSERT"), ("public.note", "INSERT")):
        assert not _can(env, role, table, priv), (table, priv)
    assert _can(env, role, "public.item", "SELECT")  # reads are not the fence's business
    st = recover.read_state(env.settings())
    assert st.writer is None and "fenced without a decision" in st.problems[0]
    fencing.unfence(env.legacy)
    assert _acl(env) == before  # exactly: no direct grant to the role, the grant option kept


def test_status_flags_a_fence_without_a_decision_and_recover_puts_it_right(
    env: Env, roles: tuple[str, str]
) -> None:
    """What a switch killed in its pause leaves: legacy fenced and revoked, no decision.
    `status` says legacy is the writer but fenced; `replicator recover` restores it from the
    record on the fenced side (no memory of the dead process needed)."""
    role, _ = roles
    before = _acl(env)
    fencing.fence(env.legacy, TABLES, app_roles=[role], lock_timeout_ms=500, attempts=2)
    s = env.settings()
    st = collect(s)
    assert st.writer is not None and st.writer["writer"] is None
    assert any("fenced without a decision" in r and "replicator recover" in r for r in st.reasons)
    r = run_cli(
        ["recover", "--yes"], {**env.env_vars(), "REPLICATOR_MAPPING": "identity:public.item"}
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "writer: legacy" in r.stdout and "unfenced" in r.stdout
    with env.legacy_conn() as c:
        assert c.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'"
        ).fetchone() == (0,)
    assert _acl(env) == before
    st = collect(s)
    assert st.writer is not None and st.writer["writer"] == "legacy" and not st.writer["problems"]
    again = run_cli(
        ["recover", "--yes"], {**env.env_vars(), "REPLICATOR_MAPPING": "identity:public.item"}
    )
    assert again.returncode == 0 and "nothing to recover" in again.stdout


def test_the_preflight_knows_who_may_set_session_replication_role(env: Env) -> None:
    """Apply writes into a fenced side only as a replica session: a role that may not set
    session_replication_role is named by the preflight with the GRANT that fixes it."""
    role = f"nosu_{env.name}"
    with env.legacy_conn() as c:
        c.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw'")
    try:
        with psycopg.connect(env.legacy.conninfo(user=role, password="pw"), autocommit=True) as c:
            assert not _may_set_replication_role(c)
        with env.legacy_conn() as c:
            c.execute(f'GRANT SET ON PARAMETER session_replication_role TO "{role}"')
        with psycopg.connect(env.legacy.conninfo(user=role, password="pw"), autocommit=True) as c:
            assert _may_set_replication_role(c)
            c.execute("SET session_replication_role = replica")  # what the grant is for
        with env.legacy_conn() as c:
            assert _may_set_replication_role(c)  # a superuser may
    finally:
        with env.legacy_conn() as c:
            c.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def test_a_fence_stopped_before_its_commit_leaves_nothing_behind(env: Env) -> None:
    """Stopped as it asks for its locks (the matrix lands signals inside the wait), the
    fence's session is ended and the side unfenced from its record, on a fresh session."""
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, v text)")
    blocker = psycopg.connect(env.legacy.conninfo())
    blocker.execute("LOCK TABLE item IN ROW EXCLUSIVE MODE")

    def boom(point: str, tables: Sequence[str]) -> None:
        if point == "fence:locking":
            raise KeyboardInterrupt  # what SIGINT is, at the worst moment

    held = psycopg.connect(env.legacy.conninfo(), autocommit=True)
    with pytest.raises(KeyboardInterrupt):
        fencing.fence(
            env.legacy,
            ["public.item"],
            app_roles=[],
            lock_timeout_ms=5000,
            attempts=1,
            conn=held,
            strike=boom,
        )
    blocker.rollback()
    blocker.close()
    with env.legacy_conn() as c:
        c.execute("SELECT pg_sleep(0.2)")
        assert c.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'replicator_fence'"
        ).fetchone() == (0,)
        c.execute("INSERT INTO item VALUES (1, 'writable')")


def test_a_direction_that_cannot_be_read_is_never_guessed(env: Env) -> None:
    """The pipeline follows the direction recorded on the target: when the target cannot be
    read it keeps running as it is (a guessed "fwd" after a cutover dropped the live reverse
    slot), and a capture never makes a missing reverse slot at the current WAL."""
    from replicator.capture import prepare_source
    from replicator.errors import PreconditionError
    from replicator.runtime.pipeline import DirectionWatch

    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, v text)")
    s = env.settings()
    gone = env.settings(target={**s.target.model_dump(), "port": 1, "connect_timeout": 2})
    watch = DirectionWatch(gone)
    try:
        assert watch.read() is None
    finally:
        watch.close()
    watch = DirectionWatch(s)
    try:
        assert watch.read() == "fwd"  # nothing recorded anywhere: a pipeline never switched
    finally:
        watch.close()
    with pytest.raises(PreconditionError, match=r"reverse slot .* is gone"):
        prepare_source(s, env.legacy, ["public.item"], "rev")
    assert prepare_source(s, env.legacy, ["public.item"], "fwd") is not None  # a first slot


def test_a_fenced_side_that_lost_a_trigger_is_flagged_and_mended(env: Env) -> None:
    """The side that is not the writer stays fenced by its record: a table whose trigger went
    (dropped by hand, the table recreated) is named by `status`, and `recover` puts it back."""
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, v text)")
        c.execute("CREATE TABLE note (id int PRIMARY KEY, v text)")
    fencing.fence(env.target, TABLES, app_roles=[], lock_timeout_ms=500, attempts=2, run_id="r")
    s = env.settings()
    assert recover.read_state(s).problems == []  # the target fenced, legacy writes: as it should
    with env.target_conn() as c:
        c.execute("DROP TRIGGER replicator_fence ON note")
    st = recover.read_state(s)
    assert any("lost the fence trigger" in p and "public.note" in p for p in st.problems), st
    lock = recover.SwitchLock.take(s)
    try:
        done = recover.restore(s, lock)
    finally:
        lock.release()
    assert any("fence trigger put back" in d for d in done), done
    assert recover.read_state(s).problems == []
    with env.target_conn() as c, pytest.raises(psycopg.Error, match="fenced"):
        c.execute("INSERT INTO note VALUES (1, 'x')")
