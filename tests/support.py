"""Where the test services come from, and per-test isolation.

Services start once per session, in this order of preference:

1. ``REPLICATOR_TEST_LEGACY_DSN``, ``REPLICATOR_TEST_TARGET_DSN``, ``REPLICATOR_TEST_KAFKA``
   (bootstrap servers) when given: nothing is started or stopped;
2. testcontainers, when a Docker engine answers;
3. the local services of ``replicator.local.services`` (what CI and this machine use): the ones
   this session started are stopped at the end, so no process is left behind.

Each test then gets its own databases (on both servers), its own pipeline name, and so its own
slot, publication and topics.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from replicator.config import DatabaseSettings, Settings


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str
    dbname: str = "postgres"

    def settings(self, dbname: str | None = None) -> DatabaseSettings:
        return DatabaseSettings(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.dbname,
            sslmode="disable",
        )

    def dsn(self, dbname: str | None = None) -> str:
        return self.settings(dbname).conninfo()

    @staticmethod
    def from_dsn(dsn: str) -> Server:
        d = conninfo_to_dict(dsn)
        return Server(
            host=str(d.get("host", "127.0.0.1")),
            port=int(d.get("port") or 5432),
            user=str(d.get("user", "postgres")),
            password=str(d.get("password", "")),
            dbname=str(d.get("dbname", "postgres")),
        )


@dataclass
class Services:
    legacy: Server
    target: Server
    kafka: str
    kind: str
    _stop: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for fn in reversed(self._stop):
            with contextlib.suppress(Exception):
                fn()


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def start_services() -> Services:
    env = os.environ
    if env.get("REPLICATOR_TEST_LEGACY_DSN") and env.get("REPLICATOR_TEST_KAFKA"):
        legacy = Server.from_dsn(env["REPLICATOR_TEST_LEGACY_DSN"])
        target = Server.from_dsn(
            env.get("REPLICATOR_TEST_TARGET_DSN", env["REPLICATOR_TEST_LEGACY_DSN"])
        )
        return Services(legacy, target, env["REPLICATOR_TEST_KAFKA"], "environment")
    if env.get("REPLICATOR_TEST_NO_DOCKER") != "1" and _docker_answers():
        return _containers()
    return _local()


def _containers() -> Services:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    pgs = []
    for _ in range(2):
        c = PostgresContainer("postgres:15", username="postgres", password="postgres")
        c.with_command(
            "postgres -c wal_level=logical -c max_replication_slots=40 -c max_wal_senders=40"
        )
        c.start()
        pgs.append(c)
    kafka = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft()
    kafka.start()
    servers = [
        Server(c.get_container_host_ip(), int(c.get_exposed_port(5432)), "postgres", "postgres")
        for c in pgs
    ]
    svc = Services(servers[0], servers[1], kafka.get_bootstrap_server(), "testcontainers")
    svc._stop += [c.stop for c in pgs] + [kafka.stop]
    return svc


def _local() -> Services:
    from replicator.local import services as ls

    svc_stop: list[Callable[[], None]] = []
    status = ls.status()
    clusters = {}
    for name in ("legacy", "target"):
        was_running = status["postgres"].get(name, {}).get("running", False)
        clusters[name] = ls.start_postgres(name)
        if not was_running:
            svc_stop.append(lambda n=name: ls.stop_postgres(n))  # type: ignore[misc]
    kafka_running = bool(status["kafka"] and status["kafka"]["running"])
    broker = ls.start_kafka()
    if not kafka_running:
        svc_stop.append(ls.stop_kafka)

    def server(c: ls.PgCluster) -> Server:
        return Server(c.host, c.port, c.user, c.password)

    svc = Services(
        server(clusters["legacy"]), server(clusters["target"]), broker.bootstrap, "local"
    )
    svc._stop = svc_stop
    return svc


# -- per-test isolation ------------------------------------------------------------------------


@dataclass
class Env:
    """One test's own databases and pipeline."""

    services: Services
    name: str
    legacy_db: str
    target_db: str

    @property
    def legacy(self) -> DatabaseSettings:
        return self.services.legacy.settings(self.legacy_db)

    @property
    def target(self) -> DatabaseSettings:
        return self.services.target.settings(self.target_db)

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "name": self.name,
            "source": self.legacy,
            "target": self.target,
            "kafka": {"bootstrap_servers": self.services.kafka},
            "capture": {"heartbeat_interval_s": 1.0, "status_interval_s": 0.5},
            "apply": {"batch_max_wait_ms": 20},
        }
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                base[k] = {**base[k], **v}
            else:
                base[k] = v
        os.environ["REPLICATOR_CONFIG"] = os.devnull
        return Settings(**base)

    def url(self, side: str) -> str:
        """A URL DSN (what drizzle-kit and the schema helpers take) for "legacy" or "target"."""
        return (self.legacy if side == "legacy" else self.target).url()

    def mcp_schemas(self, scale: int = 0, seed: int = 1) -> None:
        """The MCP Manager legacy schema (filled at ``scale``) and the Drizzle target schema."""
        from transforms.mcp_manager.generate import generate
        from transforms.mcp_manager.legacy import create_legacy_schema
        from transforms.mcp_manager.target_schema import apply_target_schema

        create_legacy_schema(self.url("legacy"))
        if scale:
            generate(self.url("legacy"), scale=scale, seed=seed)
        apply_target_schema(self.url("target"))

    def better_auth(self, *args: str) -> dict[str, Any]:
        """Runs the real Better-Auth instance against the target (``sign-in EMAIL PASSWORD`` or
        ``sign-up EMAIL PASSWORD NAME``): its JSON answer plus ``exit`` (0 ok, 1 refused)."""
        drizzle = Path(__file__).resolve().parents[1] / "transforms" / "mcp_manager" / "drizzle"
        r = subprocess.run(
            [str(drizzle / "node_modules" / ".bin" / "tsx"), "auth-cli.ts", *args],
            cwd=drizzle,
            env={**os.environ, "DATABASE_URL": self.url("target")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = r.stdout.strip().splitlines()
        if r.returncode not in (0, 1) or not lines:
            raise AssertionError(
                f"auth-cli {args[0]} failed ({r.returncode}): {r.stdout}{r.stderr}"
            )
        answer: Any = json.loads(lines[-1])
        if isinstance(answer, list):  # api-keys: one answer per operation
            return {"exit": r.returncode, "answers": answer}
        return {"exit": r.returncode, **answer}

    def legacy_conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.legacy.conninfo(), autocommit=True)

    def target_conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.target.conninfo(), autocommit=True)

    def env_vars(self) -> dict[str, str]:
        """The same settings as REPLICATOR_* variables, for running the CLI."""
        out = {
            "REPLICATOR_NAME": self.name,
            "REPLICATOR_KAFKA__BOOTSTRAP_SERVERS": self.services.kafka,
        }
        for side, db in (("SOURCE", self.legacy), ("TARGET", self.target)):
            out.update(
                {
                    f"REPLICATOR_{side}__HOST": db.host,
                    f"REPLICATOR_{side}__PORT": str(db.port),
                    f"REPLICATOR_{side}__USER": db.user,
                    f"REPLICATOR_{side}__PASSWORD": db.password.get_secret_value(),
                    f"REPLICATOR_{side}__DBNAME": db.dbname,
                    f"REPLICATOR_{side}__SSLMODE": "disable",
                }
            )
        return out


@contextlib.contextmanager
def isolated_env(services: Services) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:8]
    env = Env(services, name=f"t{tag}", legacy_db=f"legacy_{tag}", target_db=f"target_{tag}")
    with psycopg.connect(services.legacy.dsn(), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{env.legacy_db}"')
    with psycopg.connect(services.target.dsn(), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{env.target_db}"')
    try:
        yield env
    finally:
        _drop(services.legacy, env.legacy_db)
        _drop(services.target, env.target_db)
        for server in (services.legacy, services.target):
            drop_origins(server, f"replicator_{env.name}_")
        from connectors.kafka_io import delete_topics

        with contextlib.suppress(Exception):
            delete_topics(
                services.kafka,
                [
                    f"{env.name}.{d}.{k}"
                    for d in ("fwd", "rev")
                    for k in ("changes", "snapshot", "dlq")
                ],
            )


def drop_origins(server: Server, prefix: str) -> None:
    """Replication origins are cluster-wide and outlive the test's databases; each one used
    holds one of max_replication_slots' tracking states, so they must go with the test."""
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        names = c.execute(
            "SELECT roname FROM pg_replication_origin WHERE starts_with(roname, %s)", (prefix,)
        ).fetchall()
        for (name,) in names:
            with contextlib.suppress(psycopg.Error):  # still in use: a running test's
                c.execute("SELECT pg_replication_origin_drop(%s)", (name,))


def _drop(server: Server, dbname: str) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        for _ in range(50):
            slots = c.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                (dbname,),
            ).fetchall()
            if not slots:
                break
            for slot, pid in slots:
                if pid:
                    c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                with contextlib.suppress(psycopg.Error):
                    c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            time.sleep(0.1)
        c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until ``predicate`` returns a truthy value; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}; last value {last!r}"
    )


def wait_progressing(
    observe: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    stall: float,
    what: str,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
) -> Any:
    """Poll ``observe()`` until ``done(value)`` holds; return that value.

    No fixed deadline: a slow machine takes as long as it takes, but a wait that sees the same
    value for ``stall`` seconds fails at once, saying what it waited for, what it last saw and
    since when. ``observe`` may raise to fail the wait early (a pipeline that stopped).
    """
    started = clock()
    last = observe()
    since = started
    while not done(last):
        sleep(interval)
        value = observe()
        now = clock()
        if value != last:
            last, since = value, now
        elif now - since >= stall:
            raise AssertionError(
                f"no progress for {now - since:.0f}s waiting for {what} "
                f"(after {now - started:.0f}s); last seen: {last!r}"
            )
    return last


def read_topic(bootstrap: str, topic: str, timeout: float = 10.0, **security: Any) -> list[bytes]:
    """Every message of partition 0 of ``topic`` up to its current end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **security)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(r.value for r in records if r.offset < end)
        return out
    finally:
        consumer.close()


def mcp_writer(env: Env, stop: threading.Event, counts: dict[str, int]) -> None:
    """Keeps changing legacy: new audit rows, edited servers and organizations, deleted keys."""
    rng = random.Random(3)
    with env.legacy_conn() as c:
        servers = [r[0] for r in c.execute("SELECT id FROM mcp_server").fetchall()]
        orgs = [r[0] for r in c.execute("SELECT id FROM organization ORDER BY id").fetchall()]
        keys = [r[0] for r in c.execute("SELECT id FROM api_key").fetchall()]
        rng.shuffle(keys)
        while not stop.is_set():
            with c.transaction():
                c.execute(
                    "INSERT INTO audit_log (organization_id, action, metadata, created_at)"
                    " VALUES (%s, 'login', '{\"n\": 1}', now())",
                    (rng.choice(orgs),),
                )
                c.execute(
                    "UPDATE mcp_server SET enabled = NOT enabled, updated_at = now() WHERE id = %s",
                    (rng.choice(servers),),
                )
                if rng.random() < 0.3:
                    c.execute(
                        "UPDATE organization SET name = %s WHERE id = %s",
                        (f"org {uuid.uuid4().hex[:6]}", rng.choice(orgs[1:])),
                    )
                if keys and rng.random() < 0.2:
                    c.execute("DELETE FROM api_key WHERE id = %s", (keys.pop(),))
            counts["txns"] = counts.get("txns", 0) + 1
            time.sleep(0.05)  # ~15 txn/s: busy, yet each row rarely changes twice a second
