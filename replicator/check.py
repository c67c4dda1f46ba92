"""``replicator check``: every problem that would stop the pipeline, reported at once.

Each check yields findings with a fix; nothing stops at the first failure, so an operator sees
the whole list in one run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors import kafka_io, pg
from connectors.pgsource import features, source_problems
from replicator.apply.set_aside import pending
from replicator.capture import partition_key_problems, table_identities
from replicator.check_mapping import check_mapping_sides, live_catalog
from replicator.config import Settings
from replicator.derived import placements_text, prove_direction
from replicator.drift.trigger import may_install
from replicator.errors import ReplicatorError
from replicator.roles.grants import missing_grants
from transforms.api import MappingSet
from transforms.schema_check import mapping_problems


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    message: str
    hint: str | None = None
    retriable: bool = False  # a temporary problem (unreachable), not one of configuration


def _version_notes(side: str, conn: psycopg.Connection[Any]) -> list[Finding]:
    """What this server's major lacks and what that costs: notes, not failures (each side is a
    source in one direction)."""
    server = features(conn)
    return [
        Finding(side, True, f"PostgreSQL {server.major}: {lack}; {cost}")
        for lack, cost in server.lacks()
    ]


def _source(s: Settings, mapping: MappingSet) -> list[Finding]:
    conn = pg.connect(s.source.conninfo(), autocommit=True)
    tables = mapping.forward.source_tables
    with conn, pg.translated(s.source.masked()):
        notes = _version_notes("source", conn)
        problems: list[ReplicatorError] = list(source_problems(conn, tables))
        # Scale-out: every image of a row must name its partition (replicator.capture routes).
        identities = table_identities(conn, tables)
        problems += partition_key_problems(
            identities, s.apply.partition_key, s.kafka.partitions, unused=True
        )
        # Legacy captures forward and, after a cutover, takes the reverse apply.
        grants = missing_grants(
            conn,
            "legacy",
            capture=["fwd"],
            apply=["rev"],
            capture_tables=tables,
            apply_tables=list(mapping.reverse.target_tables),
        )
        drift = [] if may_install(conn) else [_NO_DDL_TRIGGER]
    if not problems and not grants:
        return [
            Finding(
                "source", True, f"{s.source.masked()}: wal_level=logical, privileges and keys fine"
            ),
            *notes,
            *drift,
        ]
    return [
        *(Finding("source", False, p.message, p.hint) for p in problems),
        *(Finding("grants", False, g.message, g.statement) for g in grants),
        *notes,
        *drift,
    ]


# Optional (the pipeline runs without it), so not a failure: what is lost, and how to get it.
_NO_DDL_TRIGGER = Finding(
    "drift",
    True,
    "the source role may not create event triggers (a superuser's right): schema changes are"
    " seen only when a changed table is next written, by its relation; DDL on a table nobody"
    " writes, a dropped table and a type's length or precision go unseen (docs/drift.md)",
    "run the pipeline's first start as a superuser, which installs the DDL event trigger",
)


def _target(s: Settings, mapping: MappingSet) -> list[Finding]:
    conn = pg.connect(s.target.conninfo(), autocommit=True)
    findings: list[Finding] = []
    with conn, pg.translated(s.target.masked()):
        # The target takes the forward apply and, after a cutover, captures the reverse.
        grants = missing_grants(
            conn,
            "target",
            capture=["rev"],
            apply=["fwd"],
            capture_tables=mapping.reverse.source_tables,
            apply_tables=list(mapping.forward.target_tables),
        )
        findings += [Finding("grants", False, g.message, g.statement) for g in grants]
        findings.extend(_mapping_findings(conn, mapping))
        for table, names in _set_aside(conn).items():  # a rebuild a kill -9 interrupted
            findings.append(
                Finding(
                    "target",
                    False,
                    f"{table} lacks {names}, set aside for a backfill's load that is over",
                    "run `replicator run` (or `replicator apply`): it rebuilds them first",
                )
            )
        # The reverse stream (after a cutover) routes the target's tables the same way.
        reverse = table_identities(conn, mapping.reverse.source_tables)
        for p in partition_key_problems(reverse, s.apply.partition_key, s.kafka.partitions):
            findings.append(Finding("target", False, p.message, p.hint))
        notes = _version_notes("target", conn)
    if not findings:
        findings.append(Finding("target", True, f"{s.target.masked()}: reachable, mapping fits"))
    return [*findings, *notes]


def _set_aside(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Indexes and foreign keys whose backfill loaded its snapshot, not rebuilt yet."""
    if conn.execute("SELECT to_regclass('replicator.set_aside')").fetchone() == (None,):
        return {}
    out: dict[str, list[str]] = {}
    for o in pending(conn):
        out.setdefault(o.table, []).append(o.name)
    return {t: ", ".join(n) for t, n in out.items()}


def _mapping_findings(conn: psycopg.Connection[Any], mapping: MappingSet) -> list[Finding]:
    """The mapping against the live catalog and the schema it was written for."""
    expected = mapping.expected_target() if mapping.expected_target is not None else None
    problems = mapping_problems(
        mapping.forward, live_catalog(conn), expected, schema_hint=mapping.target_schema_hint
    )
    return [Finding("mapping", False, p.message, p.hint) for p in problems]


def _sides(s: Settings, mapping: MappingSet) -> list[Finding]:
    problems = check_mapping_sides(s, mapping)
    return [Finding("mapping", False, p.message, p.hint) for p in problems]


def _kafka(s: Settings, mapping: MappingSet) -> list[Finding]:
    client = kafka_io.admin(s.kafka.bootstrap_servers, timeout_ms=5_000, **s.kafka.client_options())
    try:
        with kafka_io.translated("metadata request failed"):
            client.list_topics()
    finally:
        client.close()
    topics = [*s.topics("fwd"), *s.topics("rev")]
    finite = kafka_io.finite_retention(
        s.kafka.bootstrap_servers, topics, **s.kafka.client_options()
    )
    return [
        Finding(
            "kafka", True, f"{s.kafka.bootstrap_servers}: reachable ({s.kafka.security_protocol})"
        ),
        *(
            Finding(
                "kafka",
                False,
                f"topic {topic} deletes its log ({how}): a rollback and a re-projection replay "
                "all of it, and an apply left behind would stop",
                f"kafka-configs.sh --bootstrap-server {s.kafka.bootstrap_servers} --alter "
                f"--entity-type topics --entity-name {topic} "
                "--add-config retention.ms=-1,retention.bytes=-1",
            )
            for topic, how in finite.items()
        ),
    ]


def _paths(s: Settings, mapping: MappingSet) -> list[Finding]:
    """Where each converted column is computed: a SQL twin, a derived SQL form proved on the
    source (replicator.derived) or Python, and why (information, never a failure)."""
    conn = pg.connect(s.source.conninfo(), autocommit=True)
    with conn, pg.translated(s.source.masked()):
        placements = prove_direction(mapping.forward, conn)
    return [Finding("columns", True, line) for line in placements_text(placements)]


CHECKS: list[tuple[str, Callable[[Settings, MappingSet], list[Finding]]]] = [
    ("source", _source),
    ("target", _target),
    ("kafka", _kafka),
]


def exit_code(findings: list[Finding]) -> int:
    """0 clean; 2 when a failure needs a change (configuration, credentials, TLS, privileges,
    schema); 75 when every failure is temporary (a server unreachable)."""
    failed = [f for f in findings if not f.ok]
    if not failed:
        return 0
    return 75 if all(f.retriable for f in failed) else 2


def run_checks(s: Settings, mapping: MappingSet) -> list[Finding]:
    findings: list[Finding] = []
    unreachable = False
    for name, fn in CHECKS:
        try:
            findings.extend(fn(s, mapping))
        except ReplicatorError as exc:
            findings.append(Finding(name, False, exc.message, exc.hint, exc.retriable))
            unreachable = unreachable or name in ("source", "target")
    if unreachable:
        findings.append(
            Finding(
                "mapping",
                False,
                "the columns the mapping reads and its sequences were not checked: "
                "a database could not be read",
                "fix the problems above, then run `replicator check` again",
                retriable=True,  # a consequence: the problems above set the exit code
            )
        )
        return findings
    try:
        findings.extend(_sides(s, mapping))
        findings.extend(_paths(s, mapping))
    except ReplicatorError as exc:
        findings.append(Finding("mapping", False, exc.message, exc.hint))
    return findings
