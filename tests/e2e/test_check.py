"""`replicator check` as an operator meets it: every problem named, with its fix."""

from __future__ import annotations

import pytest

from tests.e2e.cli import run_cli
from tests.support import Env, Services


def test_check_passes_on_a_good_setup(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
    with env.target_conn() as c:
        c.execute("CREATE TABLE item (id int PRIMARY KEY, title text)")
    r = run_cli(["check"], {**env.env_vars(), "REPLICATOR_MAPPING": "identity:public.item"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout


def test_check_reports_every_problem_at_once(env: Env) -> None:
    with env.legacy_conn() as c:
        c.execute("CREATE TABLE nokey (a int, b text)")
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.nokey,public.missing",
        "REPLICATOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    r = run_cli(["check"], vars_)
    assert r.returncode != 0
    text = " ".join((r.stdout + r.stderr).split())
    assert "no primary key" in text and "REPLICA IDENTITY FULL" in text
    assert "public.missing does not exist" in text
    assert "127.0.0.1:1" in text  # Kafka unreachable, named
    assert "Traceback" not in text


def test_wrong_password_says_authentication_failed_and_never_prints_it(env: Env) -> None:
    secret = "Wr0ng-Secret-XYZ"
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.item",
        "REPLICATOR_SOURCE__PASSWORD": secret,
    }
    r = run_cli(["check"], vars_)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "authentication failed" in out
    assert secret not in out
    assert "Traceback" not in out


def test_wal_level_replica_is_named_with_the_fix(services: Services) -> None:
    if services.kind != "local":
        pytest.skip("needs a second local cluster with wal_level=replica")
    from replicator.local import services as ls

    cluster = ls.start_postgres("check_replica", wal_level="replica")
    try:
        import psycopg

        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS item (id int PRIMARY KEY)")
        vars_ = {
            "REPLICATOR_SOURCE__PORT": str(cluster.port),
            "REPLICATOR_SOURCE__PASSWORD": cluster.password,
            "REPLICATOR_SOURCE__DBNAME": "postgres",
            "REPLICATOR_TARGET__PORT": str(cluster.port),
            "REPLICATOR_TARGET__PASSWORD": cluster.password,
            "REPLICATOR_TARGET__DBNAME": "postgres",
            "REPLICATOR_KAFKA__BOOTSTRAP_SERVERS": services.kafka,
            "REPLICATOR_MAPPING": "identity:public.item",
        }
        r = run_cli(["check"], vars_)
        assert r.returncode != 0
        text = " ".join((r.stdout + r.stderr).split())
        assert "wal_level is replica" in text
        assert "ALTER SYSTEM SET wal_level = logical" in text
    finally:
        ls.destroy_postgres("check_replica")


MCP = {"REPLICATOR_MAPPING": "transforms.mcp_manager:MAPPING"}


def test_check_passes_on_the_drizzle_schema_and_lists_every_drift(env: Env) -> None:
    env.mcp_schemas()
    r = run_cli(["check"], {**env.env_vars(), **MCP})
    assert r.returncode == 0, r.stdout + r.stderr
    with env.target_conn() as c:
        c.execute('ALTER TABLE "user" DROP COLUMN timezone')
        c.execute("ALTER TABLE mcp_server ALTER COLUMN name TYPE varchar(8)")
        c.execute("ALTER TABLE organization ADD COLUMN billing_id text NOT NULL")
    r = run_cli(["check"], {**env.env_vars(), **MCP})
    assert r.returncode != 0
    text = " ".join((r.stdout + r.stderr).split())
    assert "public.user.timezone is written by the mapping but does not exist" in text
    assert "public.mcp_server.name is character varying(8) on the target" in text
    assert "public.organization.billing_id is NOT NULL without a default" in text
    assert "Traceback" not in text


def test_check_refuses_a_partition_key_outside_a_tables_key(env: Env) -> None:
    # Scale-out routes a row by its partition key: one its rows can change under the same
    # primary key (or that a delete's old image lacks) would put the row's changes on two
    # partitions. REPLICA IDENTITY FULL carries it in every image, but a row can still move.
    ddl = (
        "CREATE TABLE member (org int, id int, PRIMARY KEY (org, id));"
        "CREATE TABLE server (id int PRIMARY KEY, org int);"
        "CREATE TABLE note (id int PRIMARY KEY, org int);"
        "ALTER TABLE note REPLICA IDENTITY FULL;"
        "CREATE TABLE plain (id int PRIMARY KEY)"
    )
    for conn in (env.legacy_conn(), env.target_conn()):
        with conn as c:
            c.execute(ddl)
    vars_ = {
        **env.env_vars(),
        "REPLICATOR_MAPPING": "identity:public.member,public.server,public.note,public.plain",
        "REPLICATOR_KAFKA__PARTITIONS": "3",
        "REPLICATOR_APPLY__PARTITION_KEY": "org",
    }
    r = run_cli(["check"], vars_)
    assert r.returncode == 2, r.stdout + r.stderr
    text = " ".join((r.stdout + r.stderr).split())
    for table in ("public.server", "public.note"):
        assert f"apply.partition_key 'org' is not part of the key of {table} (id)" in text, text
        assert f"make org part of the primary key of {table}" in text
    assert "of the key of public.member" not in text and "public.plain" not in text
    assert "Traceback" not in text
    # The capture refuses to start with it, with the same reasons.
    started = run_cli(["capture"], vars_, timeout=60)
    assert started.returncode == 2, started.stdout + started.stderr
    assert "is not part of the key of public.server" in started.stdout + started.stderr
    # Partitioned by each table's own key instead: clean.
    fixed = run_cli(["check"], {**vars_, "REPLICATOR_APPLY__PARTITION_KEY": ""})
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
