"""Validation by source key in the database: ``validate --fast`` and the cutover's verify.

For the legacy keys touched since a point (the changes topic says which), each server computes
per key the md5 of the row text that each writer of a target table writes
(:class:`~replicator.validate.insql.plan.PartPlan`, the same expressions as the bucket sums): legacy
through the compiled projection of exactly those source rows (joined to the list of keys, so
the key's index finds them), the target as stored, for the target keys those rows produce. One
statement per server, whatever the number of tables.

Keys whose md5 differ, or that the target lacks, are judged the Python way, and so is every
touched key the SQL form does not vouch for: a row it flags (the transform may refuse it), one
that a ``when=`` leaves out of a target, one no longer on legacy (a delete). Python's fold of
those source rows — with every other touched row that writes the same target key, so each
judged key sees what Python alone would see — gives the verdicts and report entries of the
Python path. A key whose md5 agree for every writer is equal on every column the Python fold
would constrain, so nothing else needs Python.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator.errors import DataError
from replicator.validate.canon import CanonRow, Exp, Key, TableShape, verdict
from replicator.validate.expect import Rejected, SourceKey, fold_keys
from replicator.validate.insql.groups import Pending, array_literal
from replicator.validate.insql.plan import ARRAY_TYPES, GroupPlan, PartPlan, TablePlan, qualified
from transforms.api import Direction
from transforms.sql_twins import ident

BATCH = 20_000  # touched keys listed in one statement


@dataclass
class KeyedTable:
    rows_checked: int = 0
    expected_rows: int = 0
    target_rows: int = 0
    compared: int = 0  # keys whose md5 both servers computed
    mismatched: int = 0  # of those, the keys whose md5 differ (or that the target lacks)
    pending: Pending = field(default_factory=dict)
    provenance: dict[Key, set[tuple[str, SourceKey]]] = field(default_factory=dict)


@dataclass
class KeyedOutcome:
    tables: dict[str, KeyedTable]
    rejected: list[Rejected]


def _legacy_part(
    ti: int, j: int, part: PartPlan, plan: GroupPlan, keys: list[SourceKey], offset: int
) -> str:
    """Part ``j`` of table ``ti``: (t, p, target key, md5, reject reason, ordinal of the
    source key in ``keys`` plus ``offset``) for the touched rows it writes."""
    comp = plan.compiled[part.source]
    types = plan.key_types[part.source]
    n = len(part.source_key)
    arrays = [f"{array_literal([k[i] for k in keys])}::{types[i]}[]" for i in range(n)]
    names = [f"__k{i}" for i in range(n)]
    from_ = part.from_
    if comp.derived:
        # Derived key columns read only the source key: computed here from the listed keys
        # and joined in under their aliases (NULL where Python refuses: the row is flagged).
        from_ = qualified(part.source)
        for d in comp.derived:
            idx = [part.source_key.index(s) for s in d.sources]
            vals: list[Any] = []
            for k in keys:
                try:
                    vals.append(d.convert(*(k[i] for i in idx)))
                except (ValueError, TypeError, KeyError, DataError):
                    vals.append(None)
            arrays.append(f"{array_literal(vals)}::{ARRAY_TYPES[d.type]}[]")
            names.append(ident(d.alias))
    on = " AND ".join(f"src.{ident(c)} = __u.__k{i}" for i, c in enumerate(part.source_key))
    return (
        f"SELECT {ti} AS t, {j} AS p, ARRAY[{', '.join(part.keys)}]::text[] AS k,"
        f" {_md5(part.row)} AS h, {part.rej} AS rej, __u.__n + {offset} AS n FROM {from_} src"
        f" JOIN unnest({', '.join(arrays)}) WITH ORDINALITY AS __u({', '.join(names)}, __n)"
        f" ON {on} WHERE {part.cond}"
    )


def _md5(text: str) -> str:
    # The text of one column is NULL for a NULL value: not a digest, and unlike any digest.
    return f"coalesce(md5({text}), '-')"


def _target_table(ti: int, p: TablePlan, keys: list[Key]) -> str:
    """Table ``ti`` at ``keys``: (t, target key, md5 per part), found through its key index."""
    shape = p.shape
    arrays = [
        f"{array_literal([key[i] for key in keys])}::{shape.types[k]}[]"
        for i, k in enumerate(shape.key)
    ]
    if len(arrays) == 1:
        restrict = f"{ident(shape.key[0])} = ANY({arrays[0]})"
    else:
        cols = ", ".join(ident(k) for k in shape.key)
        restrict = f"({cols}) IN (SELECT * FROM unnest({', '.join(arrays)}))"
    ks = ", ".join(f"t.k{i}" for i in range(len(shape.key)))
    hashes = ", ".join(_md5(part.target_row) for part in p.parts)
    return (
        f"SELECT {ti} AS t, ARRAY[{ks}]::text[] AS k, ARRAY[{hashes}]::text[] AS h"
        f" FROM (SELECT {p.target_inner} FROM {qualified(shape.name)} WHERE {restrict}) t"
    )


def check_keys(
    plan: GroupPlan,
    direction: Direction,
    legacy: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    touched: Mapping[str, set[SourceKey]],
    read_target: Callable[[TableShape, list[Key]], dict[Key, CanonRow]],
    legacy_snapshot: Callable[[], contextlib.AbstractContextManager[None]],
) -> KeyedOutcome:
    """Compare what the touched legacy rows of ``plan``'s sources write; legacy first, then
    the target (as the Python path reads them)."""
    tables = list(plan.tables)
    shapes = {t: p.shape for t, p in plan.tables.items()}
    order = {s: list(k) for s, k in touched.items() if s in plan.compiled and k}
    out = {t: KeyedTable() for t in tables}
    if not order:
        return KeyedOutcome(out, [])
    # 1. Legacy: one md5 per touched row and writer.
    parts = [
        (ti, j, part)
        for ti, t in enumerate(tables)
        for j, part in enumerate(plan.tables[t].parts)
        if part.source in order
    ]
    lrows: list[tuple[Any, ...]] = []
    longest = max(len(k) for k in order.values())
    for start in range(0, longest, BATCH):  # statements of a bounded size
        lsql = " UNION ALL ".join(
            _legacy_part(ti, j, part, plan, order[part.source][start : start + BATCH], start)
            for ti, j, part in parts
            if len(order[part.source]) > start
        )
        lrows += legacy.execute(lsql).fetchall()
    seen: dict[tuple[int, int, Key], str] = {}  # (table, part, target key) -> md5
    twice: set[tuple[int, int, Key]] = set()  # a target key two touched rows write
    covered: set[tuple[int, int, int]] = set()  # (table, part, ordinal) the SQL form vouches for
    at_key: dict[tuple[int, Key], set[tuple[str, int]]] = {}  # the touched rows writing a key
    for ti, j, k, h, rej, n in lrows:
        if rej is not None:
            continue  # the Python way (a leftover below)
        key = tuple(k)
        covered.add((ti, j, n))
        if (ti, j, key) in seen:
            twice.add((ti, j, key))
        seen[(ti, j, key)] = h
        at_key.setdefault((ti, key), set()).add((plan.tables[tables[ti]].parts[j].source, n))
    # 2. Target: the same writers' md5 at the keys legacy produced.
    by_table: dict[int, set[Key]] = {}
    for ti, _j, key in seen:
        by_table.setdefault(ti, set()).add(key)
    thash: dict[tuple[int, Key], list[str]] = {}
    listed = [(ti, key) for ti, keys in sorted(by_table.items()) for key in sorted(keys)]
    for start in range(0, len(listed), BATCH):
        batch: dict[int, list[Key]] = {}
        for ti, key in listed[start : start + BATCH]:
            batch.setdefault(ti, []).append(key)
        tsql = " UNION ALL ".join(
            _target_table(ti, plan.tables[tables[ti]], keys) for ti, keys in batch.items()
        )
        thash.update({(ti, tuple(k)): h for ti, k, h in target.execute(tsql).fetchall()})
    cand: dict[int, set[Key]] = {}
    for (ti, j, key), h in seen.items():
        th = thash.get((ti, key))
        if th is None or th[j] != h or (ti, j, key) in twice:
            cand.setdefault(ti, set()).add(key)
    # 3. Touched rows the SQL form left out of a writer they feed: Python's.
    leftovers: dict[str, set[SourceKey]] = {}
    for ti, j, part in parts:
        for n, sk in enumerate(order[part.source], start=1):
            if (ti, j, n) not in covered:
                leftovers.setdefault(part.source, set()).add(sk)
    judged = Judged(rejected=[], exp={}, actual={}, sources={})
    if cand or leftovers:
        judged = _judge(
            direction, legacy, shapes, tables, order, cand, leftovers, at_key, legacy_snapshot
        )
        for t in tables:
            if judged.exp.get(t):
                judged.actual[t] = read_target(shapes[t], sorted(judged.exp[t]))
    for ti, t in enumerate(tables):
        res = out[t]
        exp, actual = judged.exp.get(t, {}), judged.actual.get(t, {})
        sql_only = by_table.get(ti, set()) - exp.keys()
        res.compared = len(by_table.get(ti, ()))
        res.mismatched = len(cand.get(ti, ()))
        res.rows_checked = len(sql_only) + len(exp)
        res.expected_rows = sum(1 for k in sql_only if (ti, 0, k) in seen) + sum(
            1 for e in exp.values() if e.state == "present"
        )
        res.target_rows = sum(1 for k in sql_only if (ti, k) in thash) + len(actual)
        res.provenance = judged.sources.get(t, {})
        for k, e in exp.items():
            a = actual.get(k)
            if verdict(a, e) is not None:
                res.pending[k] = (a, e)
    return KeyedOutcome(out, judged.rejected)


@dataclass
class Judged:
    rejected: list[Rejected]
    exp: dict[str, dict[Key, Exp]]
    actual: dict[str, dict[Key, CanonRow]]
    sources: dict[str, dict[Key, set[tuple[str, SourceKey]]]]


def _judge(
    direction: Direction,
    legacy: psycopg.Connection[Any],
    shapes: Mapping[str, TableShape],
    tables: list[str],
    order: Mapping[str, list[SourceKey]],
    cand: Mapping[int, set[Key]],
    leftovers: Mapping[str, set[SourceKey]],
    at_key: Mapping[tuple[int, Key], set[tuple[str, int]]],
    legacy_snapshot: Callable[[], contextlib.AbstractContextManager[None]],
) -> Judged:
    """Python's expectations for the candidates and the leftovers: the fold of those source
    rows and of every touched row that writes a key they write (until no key adds one), so
    that each judged key is folded from the same rows as the Python path folds it."""
    src = {s: set(k) for s, k in leftovers.items()}
    keys = {ti: set(cand.get(ti, ())) for ti in range(len(tables))}
    folded: dict[str, set[SourceKey]] | None = None  # None: the loop folds at least once
    with legacy_snapshot():
        while True:
            for ti, ks in keys.items():
                for key in ks:
                    for s, n in at_key.get((ti, key), ()):
                        src.setdefault(s, set()).add(order[s][n - 1])
            if src == folded:
                break
            exp = fold_keys(legacy, direction, src, shapes, partial=True)
            folded = {s: set(k) for s, k in src.items()}
            for ti, t in enumerate(tables):
                keys[ti] |= exp.rows[t].keys()
    return Judged(exp.rejected, exp.rows, {}, exp.sources)
