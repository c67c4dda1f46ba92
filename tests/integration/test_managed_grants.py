"""A role without superuser (a managed service's) meets a clear refusal with the statement that
fixes it, never a quiet change of behaviour (docs/managed.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest

from connectors.pgsource import source_problems
from replicator.apply.session import connect_session
from replicator.config import DatabaseSettings
from replicator.errors import PermissionDenied, ReplicatorError
from replicator.roles.grants import ORIGIN_FUNCTIONS, missing_grants
from replicator.teardown import plan, teardown
from tests.support import Env, Server

SECRET = "managed-pw"


def _as(env: Env, role: str) -> DatabaseSettings:
    legacy = env.services.legacy
    return Server(legacy.host, legacy.port, role, SECRET).settings(env.legacy_db)


@pytest.fixture
def role(env: Env) -> Iterator[str]:
    """A non-superuser owner of the test's legacy database, with nothing granted."""
    name = f"mgd_{env.name}"
    with env.legacy_conn() as c:
        c.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER PASSWORD '{SECRET}'")
        c.execute(f'ALTER DATABASE "{env.legacy_db}" OWNER TO {name}')
    try:
        yield name
    finally:
        with env.legacy_conn() as c:
            c.execute(f'ALTER DATABASE "{env.legacy_db}" OWNER TO CURRENT_USER')
            c.execute(f"REVOKE SET ON PARAMETER session_replication_role FROM {name}")
            with contextlib.suppress(psycopg.Error):
                c.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


def test_the_apply_refuses_without_session_replication_role_and_names_the_grant(
    env: Env, role: str
) -> None:
    """It used to warn and apply with foreign keys on (and meet a fence it cannot pass)."""
    db = _as(env, role)
    with pytest.raises(PermissionDenied) as caught:
        connect_session(db, env.name, "rev")
    assert f"GRANT SET ON PARAMETER session_replication_role TO {role};" in (
        caught.value.hint or ""
    )
    assert "may not set session_replication_role" in caught.value.message
    with env.legacy_conn() as c:
        c.execute(f"GRANT SET ON PARAMETER session_replication_role TO {role}")
    conn = connect_session(db, env.name, "rev")
    try:
        assert conn.execute("SHOW session_replication_role").fetchone() == ("replica",)
    finally:
        conn.close()


def test_teardown_names_the_grant_that_lets_it_drop_an_origin(env: Env, role: str) -> None:
    origin = f"replicator_{env.name}_rev_0"
    with env.legacy_conn() as c:
        c.execute("SELECT pg_replication_origin_create(%s)", (origin,))
    s = env.settings(source=_as(env, role))
    items = plan(s)
    assert [(i.kind, i.name) for i in items] == [("origin", origin)]
    with pytest.raises(ReplicatorError) as caught:
        teardown(s, items)
    assert f"GRANT EXECUTE ON FUNCTION pg_replication_origin_drop(text) TO {role};" in (
        caught.value.hint or ""
    )


def test_rds_replication_membership_is_what_check_asks_for_on_rds(env: Env, role: str) -> None:
    """RDS grants replication through a role, and refuses ALTER ROLE … REPLICATION: where
    ``rds_replication`` exists, `check` asks for it and counts membership as enough."""
    with env.legacy_conn() as c:
        made = not c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication'").fetchone()
        if made:  # this server imitates RDS for the test's length
            c.execute("CREATE ROLE rds_replication NOLOGIN")
    try:
        with psycopg.connect(_as(env, role).conninfo(), autocommit=True) as c:
            hints = [p.hint for p in source_problems(c, [])]
        assert f"GRANT rds_replication TO {role};" in hints, hints
        with env.legacy_conn() as c:
            c.execute(f"GRANT rds_replication TO {role}")
        with psycopg.connect(_as(env, role).conninfo(), autocommit=True) as c:
            assert source_problems(c, []) == []
    finally:
        with env.legacy_conn() as c:
            if made:
                c.execute("DROP ROLE rds_replication")
            else:
                c.execute(f"REVOKE rds_replication FROM {role}")


def test_an_rds_superuser_member_may_install_the_ddl_trigger(env: Env, role: str) -> None:
    """RDS gives event triggers to rds_superuser's members, not to superusers alone."""
    from replicator.drift.trigger import may_install

    with env.legacy_conn() as c:
        made = not c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser'").fetchone()
        if made:  # this server imitates RDS for the test's length
            c.execute("CREATE ROLE rds_superuser NOLOGIN")
    try:
        with psycopg.connect(_as(env, role).conninfo(), autocommit=True) as c:
            assert not may_install(c)
        with env.legacy_conn() as c:
            c.execute(f"GRANT rds_superuser TO {role}")
        with psycopg.connect(_as(env, role).conninfo(), autocommit=True) as c:
            assert may_install(c)
    finally:
        with env.legacy_conn() as c:
            c.execute(f"REVOKE rds_superuser FROM {role}")
            if made:
                c.execute("DROP ROLE rds_superuser")


def test_missing_grants_names_ownership_sequences_the_parameter_and_origins(
    env: Env, role: str
) -> None:
    """Per side and direction, each with its statement; none left once they are run."""
    with env.legacy_conn() as c:  # made by someone else: the role neither owns nor may setval
        c.execute("CREATE TABLE item (id serial PRIMARY KEY, title text)")

    def missing() -> list[tuple[str, str]]:
        with psycopg.connect(_as(env, role).conninfo(), autocommit=True) as c:
            found = missing_grants(
                c,
                "legacy",
                capture=["fwd"],
                apply=["rev"],
                capture_tables=["public.item"],
                apply_tables=["public.item"],
            )
        return [(m.message.split(":")[0], m.statement) for m in found]

    want = [
        ("legacy (fwd)", f"ALTER TABLE public.item OWNER TO {role};"),
        ("legacy (rev)", f"GRANT SET ON PARAMETER session_replication_role TO {role};"),
        *(
            ("legacy (rev)", f"GRANT EXECUTE ON FUNCTION {fn} TO {role};")
            for fn in ORIGIN_FUNCTIONS
        ),
        ("legacy (rev)", f"GRANT UPDATE ON SEQUENCE item_id_seq TO {role};"),
    ]
    assert missing() == want
    with env.legacy_conn() as c:
        for _, statement in want:
            c.execute(statement)
    assert missing() == []
