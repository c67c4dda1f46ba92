"""Validation's view of the tables: which target tables to check, their shape in the target
catalog, the groups that must be read together, target rows in canonical form, and the check
of the mapping itself (every column it reads exists on legacy).

A mapping that reads a column legacy does not have cannot produce the values the target
should hold; comparing rows would only show the consequence (or nothing, for a column left
NULL on both sides of the comparison). The run names the mistake and is never clean."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import PreconditionError, SchemaError
from replicator.validate.canon import CanonRow, Key, TableShape, canon_row, chunks
from replicator.validate.insql.catalog import TableInfo, catalog
from transforms.api import Direction, TableTransform, TargetTable
from transforms.reads import absent_columns


def select_tables(direction: Direction, table: str | None) -> dict[str, TargetTable]:
    """The target tables to check: all, a target table, or those a source table writes."""
    targets = direction.target_tables
    if table is None:
        return dict(targets)
    name = table if "." in table else f"public.{table}"
    if name in targets:
        return {name: targets[name]}
    t = direction.transform_for(name)
    if t is not None:
        return {w.name: targets[w.name] for w in t.writes}
    raise PreconditionError(
        f"{table} is neither a target nor a source table of the mapping",
        hint="tables: " + ", ".join(sorted(targets)),
    )


def require_keys(direction: Direction, what: str) -> None:
    """Validation and the cutover's verify compare rows by key: refuse a mapping without one."""
    unkeyed = sorted(t for t, tt in direction.target_tables.items() if not tt.key)
    if unkeyed:
        raise PreconditionError(
            f"{what} compares rows by key, and the mapping declares none for "
            f"{', '.join(unkeyed)} (identity mappings do not)",
            hint=f"write a mapping module with keys (docs/transforms.md) for {what}",
        )


def shapes_of(
    conn: psycopg.Connection[Any], tables: Mapping[str, TargetTable]
) -> dict[str, TableShape]:
    return shapes_from(catalog(conn, tables), tables)


def shapes_from(
    found: Mapping[str, TableInfo], tables: Mapping[str, TargetTable]
) -> dict[str, TableShape]:
    """Each target table as validation compares it, from the target's catalog."""
    out: dict[str, TableShape] = {}
    for name, tt in tables.items():
        info = found.get(name)
        if info is None or not info.columns:
            raise SchemaError(f"target table {name} does not exist", hint="apply the target schema")
        types = {c: t for c, (t, _) in info.columns.items()}
        cols = tuple(dict.fromkeys(tt.key + (tt.columns or tuple(types))))
        unknown = [c for c in cols if c not in types]
        if unknown:
            raise SchemaError(
                f"target table {name} has no column(s) {', '.join(unknown)}",
                hint="run `replicator check` to compare the mapping with the target",
            )
        out[name] = TableShape(name, tt.key, cols, types, info.defaults)
    return out


def components(direction: Direction, tables: Iterable[str]) -> list[list[str]]:
    """Target tables grouped so that each group's writers write nothing outside it."""
    groups: list[set[str]] = []
    for t in tables:
        linked = {
            w.name
            for tr in direction.tables.values()
            if t in {x.name for x in tr.writes}
            for w in tr.writes
        }
        merged = {t} | linked
        for g in [g for g in groups if g & merged]:
            merged |= g
            groups.remove(g)
        groups.append(merged)
    wanted = set(tables)
    return [sorted(g & wanted) for g in groups if g & wanted]


def _ident(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


def read_target(
    conn: psycopg.Connection[Any], shape: TableShape, keys: list[Key] | None = None
) -> dict[Key, CanonRow]:
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in shape.columns)
    out: dict[Key, CanonRow] = {}
    nkey = len(shape.key)

    def take(rows: Iterable[tuple[Any, ...]]) -> None:
        for r in rows:
            row = canon_row(shape, dict(zip(shape.columns, r, strict=True)))
            out[tuple(v or "" for v in row[:nkey])] = row

    if keys is None:
        take(conn.execute(sql.SQL("SELECT {} FROM {}").format(cols, _ident(shape.name))))
        return out
    if nkey == 1:
        # One array parameter: a short statement, not thousands of placeholders to parse.
        k = shape.key[0]
        stmt = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s::" + shape.types[k] + "[])").format(
            cols, _ident(shape.name), sql.Identifier(k)
        )
        for part in chunks(keys, 5_000):
            take(conn.execute(stmt, ([key[0] for key in part],)))
        return out
    one = sql.SQL("({})").format(
        # format_type() output is valid SQL type syntax; the cast makes the key text comparable.
        sql.SQL(", ").join(sql.SQL("%s::" + shape.types[k]) for k in shape.key)
    )
    key_cols = sql.SQL(", ").join(sql.Identifier(k) for k in shape.key)
    for part in chunks(keys, 500):
        stmt = sql.SQL("SELECT {} FROM {} WHERE ({}) IN ({})").format(
            cols, _ident(shape.name), key_cols, sql.SQL(", ").join([one] * len(part))
        )
        take(conn.execute(stmt, [v for k in part for v in k]))
    return out


def mapping_errors(
    legacy: Mapping[str, TableInfo], transforms: Iterable[TableTransform]
) -> list[str]:
    """What each transform reads that its legacy table lacks (and tables that do not exist),
    from legacy's catalog."""
    out: list[str] = []
    for t in transforms:
        info = legacy.get(t.source)
        if info is None or not info.columns:
            out.append(f"the mapping reads {t.source}, which does not exist on legacy")
            continue
        out.extend(a.message for a in absent_columns(t, list(info.columns)))
    return out
