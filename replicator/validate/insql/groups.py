"""Validation in the database: checksums of key buckets on both sides, rows only where they differ.

For a group of target tables whose writers all compile (transforms.compile), each server
computes per target table one text per row (:mod:`replicator.validate.insql.plan`) and sums a
64-bit hash of it per bucket of the key's hash (4,096 buckets). Only buckets whose count or sum
differ are listed row by row (key, row md5, source keys), and only keys whose row md5 differs,
or that one side lacks, become candidates. Candidates are then judged as the Python path judges
every row (read from the target, the legacy rows of their provenance run through the
transforms), which yields today's report and feeds the live re-check.

Legacy rows whose reject expression holds (the SQL form cannot vouch for them) are left out of
the sums and run through the Python transforms by key: refused ones are reported ``rejected``,
accepted ones join the candidates. Nothing is installed on either server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator.errors import DataError
from replicator.validate.canon import Exp, Key, TableShape, verdict
from replicator.validate.expect import Rejected, SourceKey, fold_keys
from replicator.validate.insql.plan import (
    ARRAY_TYPES,
    SESSION_SQL,
    GroupPlan,
    Hashing,
    TablePlan,
    bucket_expr,
    choose_hashing,
    plan_group,
    qualified,
    row_text,
    source_from,
)
from transforms.api import Direction
from transforms.compile import CompiledTable
from transforms.sql_twins import INT, ident

Pending = dict[Key, tuple[Any, Exp | None]]

__all__ = [
    "SESSION_SQL",
    "GroupPlan",
    "Hashing",
    "choose_hashing",
    "plan_group",
    "run_group",
]


def buckets_of(conn: psycopg.Connection[Any], keys: Sequence[Key], h: Hashing) -> set[int]:
    """The buckets of ``keys``, computed by the server that computed the sums."""
    if not keys:
        return set()
    n = len(keys[0])
    cols = [f"u.k{i}" for i in range(n)]
    arrays = ", ".join(["%s::text[]"] * n)
    rows = conn.execute(
        f"SELECT DISTINCT {h.bucket(row_text(cols))} FROM unnest({arrays})"
        f" AS u({', '.join(f'k{i}' for i in range(n))})",
        [[k[i] for k in keys] for i in range(n)],
    ).fetchall()
    return {int(r[0]) for r in rows}


@dataclass(frozen=True)
class Sums:
    """A table's (rows, sum of 64-bit row hashes) per bucket, as one text the server prints in
    bucket order ("bucket:rows:sum,..."): equal texts are equal tables, and only unequal ones
    are read bucket by bucket. A row per bucket cost this process more CPU (loading a few
    thousand numerics per table) than the servers spent comparing."""

    text: str
    rows: int

    def buckets(self) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        for item in self.text.split(",") if self.text else ():
            b, n, h = item.split(":")
            out[int(b)] = (int(n), int(h))
        return out

    @property
    def count(self) -> int:
        return self.text.count(",") + 1 if self.text else 0


# The per-row expressions cost far more than the planner's defaults assume, so a big table is
# scanned in parallel (the workers share the snapshot), but only from 64 MB on: a run already
# keeps two sessions busy on each server (two groups at a time), and each parallel worker is a
# new backend whose caches start cold. Measured on two cores, workers from 1 MB on made a
# 58 k-row run 15 % slower and a 576 k-row run 10 % slower. A hash table of a few thousand
# buckets beats sorting every row (which spills to disk), but a correlated subquery (a twin that
# aggregates a JSON list) must keep its sorts: hash aggregation rebuilt for every row is ten
# times slower. Settings last until the snapshot ends.
def _settings(subqueries: bool) -> str:
    return (
        f"SET LOCAL enable_sort = {'on' if subqueries else 'off'};"
        " SET LOCAL min_parallel_table_scan_size = '64MB'; SET LOCAL parallel_setup_cost = 100;"
        " SET LOCAL parallel_tuple_cost = 0.001"
    )


_PRINTED = "coalesce(string_agg(g.b || ':' || g.n || ':' || g.s, ',' ORDER BY g.b){}, '')"


def bucket_sums(conn: psycopg.Connection[Any], sql: str, nkeys: int, h: Hashing) -> Sums:
    conn.execute(_settings(False))
    row = conn.execute(
        f"SELECT {_PRINTED.format('')}, coalesce(sum(g.n), 0) FROM (SELECT z.b, count(*) AS n,"
        f" sum(z.h) AS s FROM (SELECT {bucket_expr(nkeys, h)} AS b, q.rh AS h FROM ({sql}) q) z"
        " GROUP BY 1) g"
    ).fetchone()
    assert row is not None
    return Sums(str(row[0]), int(row[1]))


def legacy_bucket_sums(
    conn: psycopg.Connection[Any], p: TablePlan, query: tuple[str, dict[str, Any]], h: Hashing
) -> tuple[Sums, int]:
    """The legacy side's sums over the rows the SQL form vouches for, and how many of the
    owner's rows it leaves to Python, from one scan. Only aggregates PostgreSQL 15 can combine
    across parallel workers: listing those rows' keys here would make the scan serial."""
    conn.execute(_settings(p.subqueries))
    # Grouped by whether the row is vouched for: the reject expression (the costliest part of a
    # row) is then computed once, where three FILTERs naming it computed it three times; the
    # FILTER on the sum reads the grouping column, so a flagged row's hash is never computed.
    sql, params = query
    row = conn.execute(
        f"SELECT {_PRINTED.format(' FILTER (WHERE g.ok)')},"
        " coalesce(sum(g.n) FILTER (WHERE g.ok), 0), coalesce(sum(g.n) FILTER (WHERE NOT g.ok), 0)"
        " FROM (SELECT z.b, z.ok, count(*) AS n, sum(z.h) FILTER (WHERE z.ok) AS s FROM (SELECT"
        f" {bucket_expr(len(p.shape.key), h)} AS b, q.rh AS h, q.rej IS NULL AS ok"
        f" FROM ({sql}) q) z GROUP BY 1, 2) g",
        params,
    ).fetchone()
    assert row is not None
    return Sums(str(row[0]), int(row[1])), int(row[2])


def bucket_rows(
    conn: psycopg.Connection[Any],
    query: tuple[str, dict[str, Any]],
    nkeys: int,
    buckets: list[int],
    extra: Sequence[str],
    h: Hashing,
) -> list[tuple[Any, ...]]:
    """(key texts..., row md5, extra columns...) of the rows in ``buckets`` of ``query`` (as
    LegacyFrom.query gives it)."""
    cols = ", ".join([f"q.k{i}" for i in range(nkeys)] + ["md5(q.r)"] + [f"q.{e}" for e in extra])
    sql, params = query
    return conn.execute(
        f"SELECT {cols} FROM ({sql}) q WHERE {bucket_expr(nkeys, h)} = ANY(%(buckets)s)",
        {**params, "buckets": buckets},
    ).fetchall()


def flagged_keys(
    conn: psycopg.Connection[Any], compiled: CompiledTable, froms: LegacyFrom, in_range: str = ""
) -> list[tuple[Any, ...]]:
    """Source keys of the rows the SQL form leaves to Python."""
    keys = ", ".join(ident(k) for k in compiled.source_key)
    return conn.execute(
        *froms.query(
            f"SELECT {keys} FROM {source_from(compiled)} s WHERE ({compiled.reject_sql}) IS NOT NULL"
            + (f" AND {in_range}" if in_range else "")
        )
    ).fetchall()


def array_literal(values: Sequence[Any]) -> str:
    """A text array literal of uuids, integers or strings (NULL for None)."""
    items = []
    for v in values:
        if v is None:
            items.append("NULL")
        elif isinstance(v, int | uuid.UUID):
            items.append(str(v))
        else:
            t = str(v)
            if "\x00" in t:
                items.append("NULL")  # the row goes the Python way (its key is NULL)
                continue
            items.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    body = "{" + ",".join(items) + "}"
    return "'" + body.replace("'", "''") + "'"


@dataclass
class LegacyFrom:
    """The FROM texts that replace source_from's derived-key markers in legacy SQL, and the
    arrays they join in, sent as binary parameters: a literal of a few thousand uuids costs
    more to print here and to parse there than the whole comparison of that table."""

    texts: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def query(self, sql: str, **params: Any) -> tuple[str, dict[str, Any]]:
        """``sql`` (compiled SQL, which may hold a '%': not a placeholder) with its markers
        replaced, ready for ``execute`` with the returned parameters (and ``params``)."""
        text = sql.replace("%", "%%")
        for source, frm in self.texts.items():
            text = text.replace(f"\x00derived:{source}\x00", frm)
        return text, {**self.params, **params}

    def add(
        self, conn: psycopg.Connection[Any], comp: CompiledTable, cats: Mapping[str, str]
    ) -> None:
        """The source table of ``comp`` joined with its derived key columns, computed here from
        every source key (Python per row, but only the key: a uuid5 id, say). A value Python
        refuses is NULL, which the key's NULL check sends the Python way."""
        needed = tuple(dict.fromkeys(s for d in comp.derived for s in d.sources))
        # Converters that read the keys' text get it as the server prints it (no Python object
        # per value); others get Python values, read in binary (uuids without printing them).
        as_text = all(d.key_text for d in comp.derived)
        cols = ", ".join(f"{ident(c)}::text" if as_text else ident(c) for c in needed)
        with conn.cursor(binary=not as_text) as cur:
            rows = cur.execute(f"SELECT {cols} FROM {qualified(comp.source)}").fetchall()
        columns: list[list[Any]] = [[r[i] for r in rows] for i in range(len(needed))]
        for d in comp.derived:
            idx = [needed.index(s) for s in d.sources]
            args = rows if idx == list(range(len(rows[0]) if rows else 0)) else None
            convert, out = d.convert, []
            for a in args if args is not None else ([r[i] for i in idx] for r in rows):
                try:
                    out.append(convert(*a))
                except (ValueError, TypeError, KeyError, DataError):
                    out.append(None)
            columns.append(out)
        arrays = []
        for i, c in enumerate(needed):  # as fetched: one type each, sent in binary as is
            typed = f"{ARRAY_TYPES[cats[c]]}[]"
            arrays.append(self._param(columns[i], f"text[]::{typed}" if as_text else typed))
        for d, vals in zip(comp.derived, columns[len(needed) :], strict=True):
            # What a converter returns is normalised to one type; a uuid travels as text
            # (converters return str) and the server reads it.
            sent = "bigint[]" if d.type == INT else f"text[]::{ARRAY_TYPES[d.type]}[]"
            arrays.append(self._param(_one_type(vals, d.type), sent))
        names = [ident(c) for c in needed] + [ident(d.alias) for d in comp.derived]
        self.texts[comp.source] = (
            f"(SELECT * FROM {qualified(comp.source)} JOIN unnest({', '.join(arrays)})"
            f" AS d({', '.join(names)}) USING ({', '.join(ident(c) for c in needed)}))"
        )

    def _param(self, values: list[Any], cast: str) -> str:
        name = f"derived{len(self.params)}"
        self.params[name] = values
        return f"%({name})b::{cast}"


def as_query(sql: str) -> tuple[str, dict[str, Any]]:
    """Compiled SQL with no derived keys, for ``execute`` with parameters."""
    return LegacyFrom().query(sql)


def _one_type(values: list[Any], cat: str) -> list[Any]:
    """Computed values as one Python type: int for bigint, str for the rest; a text with a NUL
    (no PostgreSQL text holds one) is NULL, which sends its row the Python way."""
    if cat == INT:
        return [None if v is None else int(v) for v in values]
    out: list[str | None] = []
    for v in values:
        t = None if v is None else str(v)
        out.append(None if t is None or "\x00" in t else t)
    return out


@dataclass
class TableOutcome:
    expected_rows: int = 0
    target_rows: int = 0
    buckets: int = 0
    buckets_mismatched: int = 0
    pending: Pending = field(default_factory=dict)
    provenance: dict[Key, set[tuple[str, SourceKey]]] = field(default_factory=dict)


@dataclass
class GroupOutcome:
    tables: dict[str, TableOutcome]
    rejected: list[Rejected]


def run_group(
    plan: GroupPlan,
    direction: Direction,
    legacy: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    read_target: Callable[[TableShape, list[Key]], dict[Key, Any]],
    h: Hashing,
) -> GroupOutcome:
    """Compare one group; both connections are inside their snapshots (target taken first)."""
    shapes = {t: p.shape for t, p in plan.tables.items()}
    froms = LegacyFrom()

    # 1. Sums per bucket, both servers at once (the derived keys computed meanwhile).
    def legacy_side() -> tuple[dict[str, Sums], dict[str, set[SourceKey]]]:
        for s, c in plan.compiled.items():
            if c.derived:
                froms.add(legacy, c, plan.columns[s])
        sums: dict[str, Sums] = {}
        flagged: dict[str, set[SourceKey]] = {}
        for t, p in plan.tables.items():
            sums[t], n = legacy_bucket_sums(legacy, p, froms.query(p.legacy_sql), h)
            if p.owner_flags is not None and n == 0:
                flagged[p.owner_flags] = set()  # its scan found none: no second scan
        for s, c in plan.compiled.items():
            if c.checks and s not in flagged:  # some to list, or a source that only patches
                flagged[s] = {
                    tuple(k) for k in flagged_keys(legacy, c, froms, plan.source_range.get(s, ""))
                }
        return sums, flagged

    with ThreadPoolExecutor(max_workers=1) as pool:
        legacy_f = pool.submit(legacy_side)
        target_sums = {
            t: bucket_sums(target, p.target_sql, len(p.shape.key), h)
            for t, p in plan.tables.items()
        }
        legacy_sums, flagged = legacy_f.result()
    # 2. The rows the SQL form left to Python.
    rejected: list[Rejected] = []
    from_python: dict[str, dict[Key, set[tuple[str, SourceKey]]]] = {t: {} for t in plan.tables}
    todo = {s: keys for s, keys in flagged.items() if keys}
    if todo:
        exp = fold_keys(legacy, direction, todo, shapes, partial=True)
        rejected = exp.rejected
        for t in plan.tables:
            from_python[t] = exp.sources[t]
    out: dict[str, TableOutcome] = {}
    for t, p in plan.tables.items():
        res = out[t] = TableOutcome()
        res.expected_rows = legacy_sums[t].rows + len(from_python[t])
        res.target_rows = target_sums[t].rows
        differing: set[int] = set()
        res.buckets = legacy_sums[t].count
        if legacy_sums[t].text != target_sums[t].text:
            ls, ts = legacy_sums[t].buckets(), target_sums[t].buckets()
            res.buckets = len(ls.keys() | ts.keys())
            differing = {b for b in ls.keys() | ts.keys() if ls.get(b) != ts.get(b)}
        res.buckets_mismatched = len(differing)
        differing |= buckets_of(target, list(from_python[t]), h)
        if not differing:
            continue
        nk = len(p.shape.key)
        src_names = [n for _, _, names in p.sources for n in names]
        with ThreadPoolExecutor(max_workers=1) as pool:
            wanted = sorted(differing)
            lrows_f = pool.submit(
                bucket_rows,
                legacy,
                froms.query(f"SELECT * FROM ({p.legacy_sql}) a WHERE a.rej IS NULL"),
                nk,
                wanted,
                src_names,
                h,
            )
            trows = bucket_rows(target, as_query(p.target_sql), nk, wanted, (), h)
            lrows = lrows_f.result()
        lhash: dict[Key, str] = {}
        prov: dict[Key, set[tuple[str, SourceKey]]] = {}
        twice: set[Key] = set()  # keys two legacy rows produce: a collision, Python names it
        for r in lrows:
            key = tuple(str(v) for v in r[:nk])
            if key in lhash:
                twice.add(key)
            lhash[key] = r[nk]
            i = nk + 1
            for source, skey_cols, _names in p.sources:
                sk = tuple(r[i : i + len(skey_cols)])
                i += len(skey_cols)
                if all(v is not None for v in sk):
                    prov.setdefault(key, set()).add((source, sk))
        thash = {tuple(str(v) for v in r[:nk]): r[nk] for r in trows}
        cand = {k for k in lhash.keys() | thash.keys() if lhash.get(k) != thash.get(k)}
        cand |= from_python[t].keys() | twice
        for k in from_python[t]:
            prov.setdefault(k, set()).update(from_python[t][k])
        res.provenance = {k: prov.get(k, set()) for k in cand}
        res.pending = _judge(direction, legacy, shapes, t, cand, res.provenance, read_target)
    return GroupOutcome(out, rejected)


def _judge(
    direction: Direction,
    legacy: psycopg.Connection[Any],
    shapes: Mapping[str, TableShape],
    table: str,
    keys: set[Key],
    prov: Mapping[Key, set[tuple[str, SourceKey]]],
    read_target: Callable[[TableShape, list[Key]], dict[Key, Any]],
) -> Pending:
    """Row verdicts as the Python path gives them, for the candidates of one table."""
    if not keys:
        return {}
    actual = read_target(shapes[table], sorted(keys))
    src: dict[str, set[SourceKey]] = {}
    for k in keys:
        for source, sk in prov.get(k, ()):
            src.setdefault(source, set()).add(sk)
    exp = fold_keys(legacy, direction, src, {table: shapes[table]}, partial=False).rows[table]
    out: Pending = {}
    for k in keys:
        a, e = actual.get(k), exp.get(k)
        if verdict(a, e) is not None:
            out[k] = (a, e)
    return out
