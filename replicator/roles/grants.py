"""Each grant a direction needs on a side, read from the live server for the connected role.

A direction (``fwd``: legacy → target, ``rev``: target → legacy, the one a rollback needs) uses
its *capture side* and its *apply side*. A superuser has everything; a managed service's admin
role has none of it by default (docs/managed.md). What each part needs:

- capture side: ``REPLICATION`` (the slot; a teardown drops it), ownership of the mapped tables
  (a publication names them; the fence's trigger and the revocation of the application's write
  privileges when this side stops being the writer);
- apply side: ``SET`` on ``session_replication_role`` (foreign-key triggers off, and the only way
  past the fence when this side is the fenced one: before PostgreSQL 15 only a superuser, or a
  provider's admin role, may), ``EXECUTE`` on the replication-origin functions (the echo guard;
  a teardown drops the origins), ``UPDATE`` on the sequences the switch sets past the other
  side's values.

Both sides need ``CREATE`` on the database until the ``replicator`` schema exists there. Event
triggers are not used, so nothing asks for them. The forward capture's REPLICATION and SELECT
are checked with the source (:func:`connectors.pgsource.source_problems`), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.pgsource import ident, may_replicate, replication_statement

ORIGIN_FUNCTIONS = (
    "pg_replication_origin_create(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_drop(text)",
)


@dataclass(frozen=True)
class Missing:
    """One grant the connected role lacks on ``side`` for ``direction``."""

    side: str  # "legacy" or "target"
    direction: str  # "fwd" or "rev"
    what: str  # what it is for, and what happens without it
    statement: str  # what a superuser (or the provider's admin role) runs

    @property
    def message(self) -> str:
        return f"{self.side} ({self.direction}): {self.what}"


def _table(name: str) -> str:
    schema, _, rel = name.partition(".")
    return f"{ident(schema)}.{ident(rel)}"


def _role_facts(conn: psycopg.Connection[Any]) -> tuple[str, bool, int]:
    row = conn.execute(
        "SELECT current_user, rolsuper, current_setting('server_version_num')::int"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    return str(row[0]), bool(row[1]), int(row[2])


def may_set_replication_role(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session's role may set ``session_replication_role``."""
    _, superuser, version = _role_facts(conn)
    if superuser:
        return True
    if version < 150000:
        return False
    row = conn.execute(
        "SELECT has_parameter_privilege('session_replication_role', 'SET')"
    ).fetchone()
    return bool(row and row[0])


def replication_role_statement(role: str, version: int) -> str:
    if version >= 150000:
        return f"GRANT SET ON PARAMETER session_replication_role TO {ident(role)};"
    # Before 15 the parameter cannot be granted: a superuser, or a provider's admin role
    # (rds_superuser, cloudsqlsuperuser, azure_pg_admin) that may set it.
    return f"ALTER ROLE {ident(role)} SUPERUSER; (on RDS: GRANT rds_superuser TO {ident(role)};)"


def missing_grants(
    conn: psycopg.Connection[Any],
    side: str,
    *,
    capture: list[str],
    apply: list[str],
    capture_tables: list[str],
    apply_tables: list[str],
) -> list[Missing]:
    """What the connected role lacks on ``side``: it captures for the directions in ``capture``
    (reading ``capture_tables``) and applies for those in ``apply`` (into ``apply_tables``)."""
    role, superuser, version = _role_facts(conn)
    replication, _, rds = may_replicate(conn)
    if superuser:
        return []
    out: list[Missing] = []
    r = ident(role)
    schema = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'replicator')"
        " OR has_database_privilege(current_database(), 'CREATE'), current_database()"
    ).fetchone()
    if schema is not None and not schema[0]:
        out.append(
            Missing(
                side,
                "/".join([*capture, *apply]),
                f"{role} may not create the replicator schema (its offsets, markers, fence)",
                f"GRANT CREATE ON DATABASE {ident(str(schema[1]))} TO {r};",
            )
        )
    for d in capture:
        if d == "rev" and not replication:
            out.append(
                Missing(
                    side,
                    d,
                    f"{role} lacks the REPLICATION attribute: no slot for the reverse stream a"
                    " rollback needs, and teardown could not drop it",
                    replication_statement(role, rds),
                )
            )
        for t in _not_owned(conn, capture_tables):
            out.append(
                Missing(
                    side,
                    d,
                    f"{role} does not own {t}: no publication of it, no fence trigger on it and"
                    " no revoking of the application's writes when this side is fenced",
                    f"ALTER TABLE {_table(t)} OWNER TO {r};",
                )
            )
    for d in apply:
        if not may_set_replication_role(conn):
            out.append(
                Missing(
                    side,
                    d,
                    f"{role} may not set session_replication_role: the apply would refuse to"
                    " start (foreign-key triggers would stay on, and writes into this side"
                    " while it is fenced would meet the fence)",
                    replication_role_statement(role, version),
                )
            )
        for fn in _not_executable(conn, ORIGIN_FUNCTIONS):
            why = (
                "teardown could not drop the apply's replication origins"
                if fn.startswith("pg_replication_origin_drop")
                else "the apply's writes go untagged, so the echo guard is the slot order alone"
                " (the apply warns at every start)"
            )
            out.append(
                Missing(
                    side,
                    d,
                    f"{role} may not call {fn}: {why}",
                    f"GRANT EXECUTE ON FUNCTION {fn} TO {r};",
                )
            )
        for seq in _sequences_not_updatable(conn, apply_tables):
            out.append(
                Missing(
                    side,
                    d,
                    f"{role} may not set sequence {seq} past the other side's values at the switch",
                    f"GRANT UPDATE ON SEQUENCE {seq} TO {r};",
                )
            )
    return out


def _existing(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    """The tables that exist (a missing one is the mapping check's finding, not a grant)."""
    quoted = [_table(t) for t in tables]
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) t WHERE to_regclass(t) IS NOT NULL", (quoted,)
    ).fetchall()
    have = {str(r[0]) for r in rows}
    return [t for t, q in zip(tables, quoted, strict=True) if q in have]


def _not_owned(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    out = []
    for t in _existing(conn, tables):
        row = conn.execute(
            "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class"
            " WHERE oid = %s::regclass",
            (_table(t),),
        ).fetchone()
        if row is None or not row[0]:
            out.append(t)
    return out


def _not_executable(conn: psycopg.Connection[Any], functions: tuple[str, ...]) -> list[str]:
    rows = conn.execute(
        "SELECT f FROM unnest(%s::text[]) f"
        " WHERE to_regprocedure(f) IS NOT NULL AND NOT has_function_privilege(f, 'EXECUTE')",
        (list(functions),),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _sequences_not_updatable(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    """Sequences owned by the tables' columns (serial, identity) this role may not setval."""
    quoted = [_table(t) for t in _existing(conn, tables)]
    # The CASE: the planner may test the privilege before the join's relkind, and a table's
    # TOAST relation (an 'i' dependency too) is no sequence: the function would raise.
    rows = conn.execute(
        "SELECT DISTINCT d.objid::regclass::text FROM pg_depend d"
        " JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'"
        " WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass"
        "   AND d.deptype IN ('a', 'i') AND d.refobjid = ANY(%s::regclass[])"
        "   AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(d.objid, 'UPDATE') END"
        " ORDER BY 1",
        (quoted,),
    ).fetchall()
    return [str(r[0]) for r in rows]
