"""Does a mapping fit the schemas on both sides? Pure: catalogs in, problems out.

``replicator check`` reads the live catalogs and hands them here with the schema the mapping was
written against (its ``expected_target``, e.g. the Drizzle snapshot). Every problem is listed,
each with the fix, so one run shows the whole drift. Suggested SQL quotes every identifier the
way PostgreSQL needs it (:mod:`transforms.sqltext`), so it runs as printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from transforms.api import Catalog, ColumnSpec, Direction, SequenceSync
from transforms.reads import absent_columns
from transforms.sqltext import create_table, qualified, quote_ident


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    message: str
    hint: str


@dataclass(frozen=True, slots=True)
class Side:
    """One database as the checks see it: its columns, sequences, and which column owns which
    sequence (``serial`` or identity: what ``pg_get_serial_sequence`` finds)."""

    name: str  # "source" | "target" | "legacy"
    catalog: Catalog
    sequences: frozenset[str] = frozenset()
    owned: Mapping[tuple[str, str], str] = field(default_factory=dict)


def mapping_problems(
    direction: Direction,
    live: Catalog,
    expected: Catalog | None = None,
    *,
    schema_hint: str | None = None,
) -> list[SchemaProblem]:
    """Every way the tables ``direction`` writes differ from ``live``:

    - a written table or column that does not exist;
    - a written column whose live type differs from ``expected`` (a narrowed or changed type
      would fail or silently truncate rows the mapping produces);
    - a live NOT NULL column without a default that the mapping never produces (every insert
      would fail).

    ``schema_hint``: how the mapping's own tooling creates the target schema (the shipped MCP
    mapping's drizzle-kit); without it a missing table gets its DDL.
    """
    problems: list[SchemaProblem] = []
    for name, table in sorted(direction.target_tables.items()):
        cols = live.get(name)
        want = (expected or {}).get(name, {})
        if cols is None:
            problems.append(
                SchemaProblem(
                    f"target table {name} does not exist",
                    _create_hint(name, table.key, table.columns, want, schema_hint),
                )
            )
            continue
        if not table.columns:
            continue  # an identity mapping writes whatever the source has
        t = qualified(name)
        for col in table.columns:
            spec = cols.get(col)
            c = quote_ident(col)
            if spec is None:
                exp = want.get(col)
                add = (
                    f"ALTER TABLE {t} ADD COLUMN {c} {exp.type};"
                    if exp is not None
                    else f"ALTER TABLE {t} ADD COLUMN {c} <type>; (the type of the values the "
                    "mapping writes)"
                )
                problems.append(
                    SchemaProblem(
                        f"{name}.{col} is written by the mapping but does not exist on the target",
                        f"add the column: {add} Or migrate the target schema to the version the "
                        "mapping expects",
                    )
                )
                continue
            exp = want.get(col)
            if exp is not None and exp.type != spec.type:
                problems.append(
                    SchemaProblem(
                        f"{name}.{col} is {spec.type} on the target; the mapping writes "
                        f"{exp.type} (as the schema it was written for defines it)",
                        f"ALTER TABLE {t} ALTER COLUMN {c} TYPE {exp.type} USING {c}::{exp.type}; "
                        "or change the mapping and its expected schema together",
                    )
                )
        produced = {*table.columns, *table.key, *table.insert_only}
        for col, spec in sorted(cols.items()):
            if spec.not_null and not spec.has_default and col not in produced:
                c = quote_ident(col)
                problems.append(
                    SchemaProblem(
                        f"{name}.{col} is NOT NULL without a default, and the mapping never "
                        "produces it: every insert into the table would fail",
                        f"give it a default (ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT "
                        f"<value>;), allow NULL (ALTER TABLE {t} ALTER COLUMN {c} DROP NOT "
                        "NULL;) or produce it in the mapping",
                    )
                )
    return problems


def _create_hint(
    name: str,
    key: tuple[str, ...],
    columns: tuple[str, ...],
    want: Mapping[str, ColumnSpec],
    schema_hint: str | None,
) -> str:
    if schema_hint is not None:
        return f"{schema_hint}, or fix the mapping's table name"
    if want:
        return f"create it: {create_table(name, want, key)}; or fix the mapping's table name"
    cols = list(dict.fromkeys(key + columns))
    if cols:
        shape = ", ".join(f"{quote_ident(c)} <type>" for c in cols)
        pk = f", PRIMARY KEY ({', '.join(quote_ident(k) for k in key)})" if key else ""
        return (
            f"create it with the columns the mapping writes: CREATE TABLE {qualified(name)} "
            f"({shape}{pk}); or fix the mapping's table name"
        )
    return (
        f"create it as the source table is (pg_dump --schema-only -t '{qualified(name)}' on the "
        "source, restored on the target), or fix the mapping's table name"
    )


def read_problems(
    direction: Direction, source: Catalog, *, side: str = "source"
) -> list[SchemaProblem]:
    """Every source column ``direction`` reads (declared reads and ``source_key``) that its
    source table lacks: read as an unchanged value, it would leave the target column NULL in
    every new row. Tables missing altogether are reported elsewhere (the source check)."""
    problems: list[SchemaProblem] = []
    for name, transform in sorted(direction.tables.items()):
        cols = source.get(name)
        if cols is None:
            continue
        for a in absent_columns(transform, cols):
            problems.append(
                SchemaProblem(
                    f"{a.message} (on the {side})",
                    "fix the column name in the mapping"
                    + (f" (the {side} has {', '.join(a.close)})" if a.close else "")
                    + f", or add the column to {name} on the {side}",
                )
            )
        for r in transform.reads or ():
            spec = cols.get(r.column)
            if spec is not None and spec.generated:
                problems.append(
                    SchemaProblem(
                        f"{r.line} reads {name}.{r.column}, a generated column: logical "
                        "replication does not send its values, so live changes would lack it",
                        f"compute it in the mapping from the columns {name}.{r.column} is "
                        "generated from",
                    )
                )
    return problems


def sequence_problems(direction: Direction, source: Side, target: Side) -> list[SchemaProblem]:
    """Every :class:`SequenceSync` of ``direction`` whose table, column or sequence is missing
    on its side: the switch would fail at its sequences step, or leave a sequence behind."""
    problems: list[SchemaProblem] = []
    for seq in direction.sequences:
        problems.extend(
            _sequence_side(seq, source, seq.table, seq.column, seq.source_sequence, False)
        )
        problems.extend(
            _sequence_side(
                seq, target, seq.target_table, seq.target_column, seq.target_sequence, True
            )
        )
    return problems


def _sequence_side(
    seq: SequenceSync,
    side: Side,
    table: str | None,
    column: str | None,
    sequence: str | None,
    owned_needed: bool,
) -> list[SchemaProblem]:
    out: list[SchemaProblem] = []
    where = f"{seq.described}: on the {side.name}"
    if sequence is not None and sequence not in side.sequences:
        out.append(
            SchemaProblem(
                f"{where}, sequence {sequence} does not exist",
                f"fix the sequence name in the mapping (the {side.name} has "
                f"{_some(side.sequences)}), or CREATE SEQUENCE {qualified(sequence)};",
            )
        )
    if table is None or column is None:
        return out
    cols = side.catalog.get(table)
    if cols is None:
        out.append(
            SchemaProblem(
                f"{where}, table {table} does not exist",
                "fix the table name of the SequenceSync in the mapping (each side can be "
                "named: SequenceSync(table, column, target_table=…, target_column=…))",
            )
        )
        return out
    if column not in cols:
        out.append(
            SchemaProblem(
                f"{where}, table {table} has no column {column}",
                f"fix the column name of the SequenceSync (the table has {', '.join(sorted(cols))})",
            )
        )
        return out
    if owned_needed and sequence is None and (table, column) not in side.owned:
        t, c = qualified(table), quote_ident(column)
        out.append(
            SchemaProblem(
                f"{where}, column {table}.{column} owns no sequence (neither serial nor identity)",
                f"name its sequence in the mapping (SequenceSync(..., target_sequence=…)), or "
                f"ALTER SEQUENCE <sequence> OWNED BY {t}.{c};",
            )
        )
    return out


def _some(names: frozenset[str]) -> str:
    shown = sorted(names)[:8]
    return ", ".join(shown) + (" …" if len(names) > len(shown) else "") if shown else "none"
