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
from connectors.pgsource import source_problems
from replicator.config import Settings
from replicator.errors import ReplicatorError
from transforms.api import Catalog, ColumnSpec, MappingSet
from transforms.schema_check import mapping_problems


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    message: str
    hint: str | None = None


def _source(s: Settings, mapping: MappingSet) -> list[Finding]:
    conn = pg.connect(s.source.conninfo(), autocommit=True)
    with conn, pg.translated(s.source.masked()):
        problems = source_problems(conn, mapping.forward.source_tables)
    if not problems:
        return [
            Finding(
                "source", True, f"{s.source.masked()}: wal_level=logical, privileges and keys fine"
            )
        ]
    return [Finding("source", False, p.message, p.hint) for p in problems]


def _target(s: Settings, mapping: MappingSet) -> list[Finding]:
    conn = pg.connect(s.target.conninfo(), autocommit=True)
    findings: list[Finding] = []
    with conn, pg.translated(s.target.masked()):
        row = conn.execute(
            "SELECT rolsuper, current_user FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        if row is not None and not row[0]:
            findings.append(
                Finding(
                    "target",
                    False,
                    f"{s.target.masked()}: role {row[1]} may not set session_replication_role; "
                    "apply would keep foreign-key triggers on and could fail on cross-table order",
                    f"ALTER ROLE {row[1]} SUPERUSER; (or GRANT SET ON PARAMETER "
                    f"session_replication_role TO {row[1]}; on PostgreSQL 15)",
                )
            )
        findings.extend(_mapping_findings(conn, mapping))
    if not findings:
        findings.append(Finding("target", True, f"{s.target.masked()}: reachable, mapping fits"))
    return findings


_CATALOG_SQL = """
SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'replicator')
"""


def live_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    out: dict[str, dict[str, ColumnSpec]] = {}
    for table, col, typ, not_null, has_default in conn.execute(_CATALOG_SQL).fetchall():
        out.setdefault(table, {})[col] = ColumnSpec(typ, not_null, has_default)
    return out


def _mapping_findings(conn: psycopg.Connection[Any], mapping: MappingSet) -> list[Finding]:
    """The mapping against the live catalog and the schema it was written for."""
    expected = mapping.expected_target() if mapping.expected_target is not None else None
    problems = mapping_problems(mapping.forward, live_catalog(conn), expected)
    return [Finding("mapping", False, p.message, p.hint) for p in problems]


def _kafka(s: Settings, mapping: MappingSet) -> list[Finding]:
    client = kafka_io.admin(s.kafka.bootstrap_servers, timeout_ms=5_000)
    try:
        with kafka_io.translated("metadata request failed"):
            client.list_topics()
    finally:
        client.close()
    return [Finding("kafka", True, f"{s.kafka.bootstrap_servers}: reachable")]


CHECKS: list[tuple[str, Callable[[Settings, MappingSet], list[Finding]]]] = [
    ("source", _source),
    ("target", _target),
    ("kafka", _kafka),
]


def run_checks(s: Settings, mapping: MappingSet) -> list[Finding]:
    findings: list[Finding] = []
    for name, fn in CHECKS:
        try:
            findings.extend(fn(s, mapping))
        except ReplicatorError as exc:
            findings.append(Finding(name, False, exc.message, exc.hint))
    return findings
