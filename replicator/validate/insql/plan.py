"""Validation in the database, the plan: per target table, the SQL of one text per row on each
side (legacy through the compiled projection, target as stored) and how rows are hashed.

Legacy: the owner's upsert LEFT JOINed with the N→1 patches, each value cast to the target
column's type and printed (or, for JSON documents and timestamps, hashed) by the same builtin
functions on both servers, both sessions in UTC. Target: the stored columns, alike. A row's
text is ``ROW(...)::text``; rows and keys are hashed with ``hashtextextended`` (md5 where the
two servers disagree on a probe). Run by :mod:`replicator.validate.insql.groups`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator.validate.canon import TableShape
from transforms.api import Direction
from transforms.compile import CompiledTable, CompiledTarget, NotCompiled, compile_table
from transforms.sql_twins import (
    INT,
    JSON,
    JSONB,
    TEXT,
    TS,
    TSTZ,
    UUID,
    Expr,
    NotCompilable,
    canonical,
    category,
    ident,
)

BUCKET_BITS = 12
# standard_conforming_strings: values listed in a statement (keys as array literals, see
# sql.array_literal) are quoted for it; a backslash must never be an escape there.
SESSION_SQL = (
    "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';"
    " SET extra_float_digits = 1; SET standard_conforming_strings = on"
)


def qualified(table: str) -> str:
    schema, _, name = table.partition(".")
    return f"{ident(schema)}.{ident(name)}"


def row_text(values: Sequence[str]) -> str:
    # A row's text form quotes what needs it and prints NULL as nothing (an empty string as
    # ""): unambiguous, and built in C in one go.
    return f"ROW({', '.join(values)})::text" if len(values) > 1 else f"({values[0]})::text"


def row_hash(values: Sequence[tuple[str, bool]], h: Hashing) -> str:
    """A row's 64-bit hash from its values (text, or ``True``: already a 64-bit hash).

    Fast hashing hashes each value on its own, seeded with its position (two columns that
    swap values change the hash), and XORs them; NULL stands as its position. Printing and
    quoting the whole row as one text and hashing that cost three times as much on a wide
    row. Otherwise the md5 of the row text, where the row text holds the hashes as numbers."""
    if not h.fast:
        return h.row(row_text([v for v, _ in values]))
    terms = [
        f"coalesce({'hashint8extended' if hashed else 'hashtextextended'}({v}, {i}), {i})"
        for i, (v, hashed) in enumerate(values)
    ]
    return "(" + " # ".join(terms) + ")"


@dataclass(frozen=True, slots=True)
class Hashing:
    """How rows and keys are hashed: ``hashtextextended`` (64 bits, PostgreSQL 11+, an order
    of magnitude cheaper than md5) when both servers give the same value for a probe, else the
    first 64 bits of md5 (same everywhere, slower)."""

    fast: bool

    def row(self, text: str) -> str:
        if self.fast:
            return f"hashtextextended({text}, 0)"
        return f"('x' || left(md5({text}), 16))::bit(64)::bigint"

    def bucket(self, text: str) -> str:
        if self.fast:
            return f"(hashtextextended({text}, 1) & {(1 << BUCKET_BITS) - 1})"
        return f"('x' || left(md5({text}), {BUCKET_BITS // 4}))::bit({BUCKET_BITS})::int"


PROBE = (
    "SELECT hashtextextended('replicator ⇄ probe', 0), hashtextextended('', 1),"
    ' jsonb_hash_extended(\'{"a": [1.50, "x", null]}\'::jsonb, 0),'
    " timestamp_hash_extended('2020-02-29 12:34:56.789'::timestamp, 0)"
)


def choose_hashing(*conns: psycopg.Connection[Any]) -> Hashing:
    seen = set()
    for c in conns:
        try:
            seen.add(tuple(c.execute(PROBE).fetchone() or ()))
        except psycopg.Error:
            return Hashing(fast=False)
    return Hashing(fast=len(seen) == 1)


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The rows whose range column is above ``lo`` and at most ``hi`` (None: unbounded), on
    both sides, ``cat`` the category of the legacy column the bounds were read from. Integers
    compare as numbers, uuids as uuids, and text byte by byte (``COLLATE "C"``, the same on both
    servers, where each database's own collation may differ); a uuid's canonical text (lower-case
    hex) orders as the uuid does, so a uuid copied into a text key is cut alike on both sides.
    Bounds are the server's text of a key, inlined as literals (parsed or quoted here)."""

    lo: str | None
    hi: str | None
    cat: str  # INT, UUID or TEXT

    def literal(self, v: str, cat: str) -> str:
        if cat == INT:
            return str(int(v))
        if cat == UUID:
            return f"'{uuid.UUID(v)}'::uuid"
        if "\x00" in v:
            raise NotCompilable("a key holds a NUL")
        return "'" + v.replace("'", "''") + "'"  # standard_conforming_strings (SESSION_SQL)

    def pred(self, column: str, cat: str) -> str:
        """The condition on ``column`` (of category ``cat`` on its side)."""
        col = f'{column} COLLATE "C"' if cat == TEXT else column
        terms = [f"{col} > {self.literal(self.lo, cat)}"] if self.lo is not None else []
        if self.hi is not None:
            terms.append(f"{col} <= {self.literal(self.hi, cat)}")
        return " AND ".join(terms) or "true"

    def fits(self, cat: str) -> bool:
        """Whether a column of category ``cat`` orders as this range's bounds do."""
        return cat == self.cat or (self.cat == UUID and cat == TEXT)


@dataclass(frozen=True, slots=True)
class RangeColumn:
    """A target key column copied from one source column (as is, or a uuid as its text)."""

    target: str
    target_cat: str
    source: str
    source_cat: str


# A uuid's text, as transforms.sql_twins writes uuid_to_text and a plain cast.
_AS_TEXT = re.compile(
    r'^(?:\(CASE WHEN \((?P<a>"(?:[^"]|"")+")\) IS NOT NULL THEN \((?P=a)\)::text END\)'
    r'|\(?(?P<b>"(?:[^"]|"")+")\)?::text)$'
)


def range_column(
    shape: TableShape, tgt: CompiledTarget, enums: set[str], src_cats: Mapping[str, str]
) -> RangeColumn | None:
    """The first key column of the target table that one source column is copied into, as is
    (an integer, uuid or text of the same category on both sides) or as a uuid's canonical text:
    the rows a legacy key range writes are then the target rows in the same range of that
    column. None when there is none (every key computed from the source, say)."""
    for k in shape.key:
        e = dict(tgt.key).get(k)
        cat = _cat(shape, k, enums)
        if e is None or cat not in (INT, UUID, TEXT) or k in enums:
            continue
        name = e.sql if re.fullmatch(r'"(?:[^"]|"")+"', e.sql) else None
        if name is not None and src_cats.get(_unquote(name)) == cat:
            return RangeColumn(k, cat, _unquote(name), cat)
        m = _AS_TEXT.match(e.sql)
        if m and cat == TEXT:
            src = _unquote(m.group("a") or m.group("b"))
            if src_cats.get(src) == UUID:
                return RangeColumn(k, cat, src, UUID)
    return None


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"')


@dataclass(frozen=True, slots=True)
class PartPlan:
    """One writer of a target table on its own: for a check by source key (``--fast``, the
    cutover's verify), the target key and the columns this writer writes, over its source row
    (``src``) and over the target row (``t``, selected by :attr:`TablePlan.target_inner`).
    Python's fold of some source rows constrains exactly these columns of the rows they write."""

    source: str
    source_key: tuple[str, ...]
    keys: tuple[str, ...]  # canonical text of each target key column, over src
    row: str  # row text of the columns it writes, over src
    rej: str  # why the row goes the Python way; NULL: the SQL form vouches for it
    from_: str  # the source in a FROM clause (may be a derived-key marker, see source_from)
    cond: str  # the source rows it writes (rows that fail it go the Python way)
    target_row: str  # the same columns' row text over the target row


@dataclass(frozen=True, slots=True)
class TablePlan:
    """The two projections of one target table: key columns k0.., row text r, source keys."""

    shape: TableShape
    legacy_sql: str
    target_sql: str
    # (source table, its key columns, their output column names in legacy_sql)
    sources: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    # The compiled expressions hold subqueries run for every row (see bucket_sums).
    subqueries: bool = False
    # The source whose rows for Python (reject reason set, column rej) legacy_sql lists too.
    owner_flags: str | None = None
    # Each writer on its own, for a check by source key (replicator.validate.insql.keys), and
    # the select list of the target row that their ``target_row`` reads as ``t``.
    parts: tuple[PartPlan, ...] = ()
    target_inner: str = ""


@dataclass
class GroupPlan:
    tables: dict[str, TablePlan]
    compiled: dict[str, CompiledTable]  # by source table
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # source -> categories
    # source -> format_type() of its key columns (a check by key lists keys of these types)
    key_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A plan of one key range: source -> the condition on its rows (the rows left to Python
    # are listed in the range too).
    source_range: dict[str, str] = field(default_factory=dict)


def plan_group(
    direction: Direction,
    group: Sequence[str],
    shapes: Mapping[str, TableShape],
    legacy_columns: Callable[[str], dict[str, str]],
    target_enums: Callable[[str], set[str]],
    h: Hashing,
    rng: KeyRange | None = None,
) -> GroupPlan | str:
    """The SQL plan of a group of target tables, or why it keeps the Python path; with ``rng``,
    of the rows in that key range on both sides, or why the group cannot be restricted."""
    writers = {
        t.source: t for name in group for t in direction.tables.values()
        if any(w.name == name for w in t.writes)
    }  # fmt: skip
    compiled: dict[str, CompiledTable] = {}
    for source, t in writers.items():
        c = compile_table(t, legacy_columns(source), insert_only=False, derived_keys=True)
        if isinstance(c, NotCompiled):
            return f"{source}: {c.reason}"
        cats = legacy_columns(source)
        for d in c.derived:
            bad = [s for s in d.sources if cats.get(s) not in ARRAY_TYPES]
            if bad or d.type not in ARRAY_TYPES:
                return f"{source}: a key computed by Python from a {cats.get(bad[0]) if bad else d.type} value"
        compiled[source] = c
    try:
        tables = {
            name: _table_plan(shapes[name], compiled, target_enums(name), h, rng, legacy_columns)
            for name in group
        }
    except NotCompilable as e:
        return e.reason
    plan = GroupPlan(tables, compiled, {s: legacy_columns(s) for s in compiled})
    if rng is not None:
        src_cats = {source: legacy_columns(source) for source in compiled}
        for source, c in compiled.items():
            conds = set()
            for name in group:
                for tgt in c.writing(name):
                    got = range_column(shapes[name], tgt, target_enums(name), src_cats[source])
                    assert got is not None  # _table_plan refused otherwise
                    conds.add(rng.pred(ident(got.source), got.source_cat))
            if len(conds) != 1:
                return f"{source}: its target tables are keyed by different columns of it"
            plan.source_range[source] = conds.pop()
    return plan


def _table_plan(
    shape: TableShape,
    compiled: Mapping[str, CompiledTable],
    enums: set[str],
    h: Hashing,
    rng: KeyRange | None = None,
    legacy_columns: Callable[[str], dict[str, str]] = lambda s: {},
) -> TablePlan:
    owners = [(c, t) for c in compiled.values() for t in c.writing(shape.name) if not t.patch]
    patchers = [(c, t) for c in compiled.values() for t in c.writing(shape.name) if t.patch]
    if len(owners) != 1:
        raise NotCompilable(f"{shape.name}: {len(owners)} upserting writers (one is compiled)")
    for k in shape.key:
        if category(shape.types[k]) not in (TEXT, INT, UUID):
            raise NotCompilable(f"{shape.name}: key column {k} is {shape.types[k]}")

    def canon(e: Expr, c: str) -> str:
        if c in shape.key:
            return canonical(e, shape.types[c], target_enum=c in enums)
        return fingerprint(e, shape.types[c], enum=c in enums, h=h)

    parts: list[tuple[CompiledTable, CompiledTarget, str]] = [(*owners[0], "o")]
    parts += [(c, t, f"p{i}") for i, (c, t) in enumerate(patchers)]
    # A key range restricts every writer's source rows and the target rows by the same key
    # column: the target key column each writer copies from one of its columns.
    ranged: RangeColumn | None = None
    if rng is not None:
        cols = [range_column(shape, t, enums, legacy_columns(c.source)) for c, t, _ in parts]
        ranged = cols[0]
        if ranged is None or any(
            c is None or c.target != ranged.target or not rng.fits(c.source_cat) for c in cols
        ):
            raise NotCompilable(f"{shape.name}: no key column copied from the source as is")
        if not rng.fits(ranged.target_cat):
            raise NotCompilable(f"{shape.name}.{ranged.target} does not order as the range")
    where: dict[str, str] = {}  # column -> alias.column that supplies it
    owner_flags: str | None = None
    subqueries: list[str] = []
    sources: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
    alone: list[PartPlan] = []
    for comp, tgt, alias in parts:
        if list(dict(tgt.key)) != list(shape.key):
            raise NotCompilable(f"{shape.name}: {comp.source} writes another key")
        key_sql = [canon(dict(tgt.key)[k], k) for k in shape.key]
        outs = [f"{e} AS k{i}" for i, e in enumerate(key_sql)]
        mine: list[tuple[str, str]] = []  # (legacy text, target text) of the columns it writes
        for i, c in enumerate(shape.columns):
            if c in shape.key or c not in dict(tgt.columns):
                continue
            if c in where:
                raise NotCompilable(f"{shape.name}.{c} is written by two tables")
            if alias != "o" and c in shape.defaults:
                # Python leaves it uncompared where no patch row exists; SQL cannot tell here.
                raise NotCompilable(f"{shape.name}.{c} comes from a patch and has a default")
            text = canon(dict(tgt.columns)[c], c)
            outs.append(f"{text} AS c{i}")
            where[c] = f"{alias}.c{i}"
            stored = Expr(ident(c), _cat(shape, c, enums))
            mine.append((text, fingerprint(stored, shape.types[c], enum=c in enums, h=h)))
        skey = tuple(f"{alias}_s{i}" for i in range(len(comp.source_key)))
        outs += [f"{ident(k)} AS {n}" for k, n in zip(comp.source_key, skey, strict=True)]
        rcond = ""
        if rng is not None:
            got = range_column(shape, tgt, enums, legacy_columns(comp.source))
            assert got is not None
            rcond = f" AND {rng.pred(ident(got.source), got.source_cat)}"
        if alias == "o" and tgt.when is None:
            # The owner's rows the SQL form leaves to Python are found in this same scan.
            outs.append(f"{comp.reject_sql} AS rej")
            cond = "true" + rcond
            owner_flags = comp.source
        else:
            cond = f"({comp.reject_sql}) IS NULL" + (f" AND ({tgt.when})" if tgt.when else "")
            cond += rcond
            if alias == "o":
                outs.append("NULL::text AS rej")
        if mine or not tgt.patch:  # a patch of no columns writes nothing
            alone.append(
                PartPlan(
                    comp.source,
                    comp.source_key,
                    tuple(key_sql),
                    row_text([m[0] for m in mine]) if mine else "''::text",
                    comp.reject_sql if alias == "o" and tgt.when is None else "NULL::text",
                    source_from(comp),
                    cond,
                    row_text([m[1] for m in mine]) if mine else "''::text",
                )
            )
        subqueries.append(
            f"(SELECT {', '.join(outs)} FROM {source_from(comp)} src WHERE {cond}) {alias}"
        )
        sources.append((comp.source, comp.source_key, skey))
    keys = [f"o.k{i}" for i in range(len(shape.key))]
    values: list[tuple[str, bool]] = []  # (SQL, a 64-bit hash rather than text)
    target_values: list[tuple[str, bool]] = []
    for c in shape.columns:
        hashed = c not in shape.key and is_hash(shape.types[c], enum=c in enums, h=h)
        if c in shape.key:
            values.append((f"o.k{shape.key.index(c)}", False))
        elif c in where:
            values.append((where[c], hashed))
        elif c in shape.defaults:
            continue  # written by nobody, with a default: not compared (as in Python)
        else:
            values.append(("NULL::bigint" if hashed else "NULL::text", hashed))
        stored = Expr(ident(c), _cat(shape, c, enums))
        if c in shape.key:
            target_values.append((f"k{shape.key.index(c)}", False))
        else:
            fp = fingerprint(stored, shape.types[c], enum=c in enums, h=h)
            target_values.append((fp, hashed))
    joins = subqueries[0] + "".join(
        f" LEFT JOIN {sq} ON " + " AND ".join(f"p{j}.k{i} = o.k{i}" for i in range(len(keys)))
        for j, sq in enumerate(subqueries[1:])
    )
    src_out = [n for _, _, names in sources for n in names]
    legacy_sql = (
        f"SELECT {', '.join(f'{k} AS k{i}' for i, k in enumerate(keys))},"
        f" {row_text([v for v, _ in values])} AS r, {row_hash(values, h)} AS rh, o.rej,"
        f" {', '.join(src_out)} FROM {joins}"
    )
    target_keys = [
        canonical(Expr(ident(k), _cat(shape, k, enums)), shape.types[k]) for k in shape.key
    ]
    # The key columns are computed once, in an inner select the row text reads.
    inner = ", ".join(
        [f"{k} AS k{i}" for i, k in enumerate(target_keys)]
        + [f"{ident(c)}" for c in shape.columns if c not in shape.key]
    )
    target_sql = (
        f"SELECT {', '.join(f'k{i}' for i in range(len(target_keys)))},"
        f" {row_text([v for v, _ in target_values])} AS r, {row_hash(target_values, h)} AS rh"
        f" FROM (SELECT {inner} FROM {qualified(shape.name)}"
        + (f" WHERE {rng.pred(ident(ranged.target), ranged.target_cat)}" if rng and ranged else "")
        + ") t"
    )
    per_row = any(
        "SELECT" in e.sql or "SELECT" in comp.reject_sql
        for comp, tgt, _ in parts
        for _, e in tgt.key + tgt.columns
    )
    return TablePlan(
        shape, legacy_sql, target_sql, tuple(sources), per_row, owner_flags, tuple(alone), inner
    )


def _cat(shape: TableShape, c: str, enums: set[str]) -> str:
    return category(shape.types[c], enum=c in enums)


def bucket_expr(nkeys: int, h: Hashing) -> str:
    return h.bucket(row_text([f"q.k{i}" for i in range(nkeys)]))


def fingerprint(x: Expr, target_type: str, *, enum: bool, h: Hashing) -> str:
    """What stands for a value in the row text: its canonical text, or (fast hashing) a
    64-bit hash of the value as the target type holds it where printing it costs more
    (JSON documents, timestamps): see :func:`is_hash`."""
    text = canonical(x, target_type, target_enum=enum)
    if not h.fast:
        return text
    if x.sql == "NULL":
        return "NULL::bigint" if is_hash(target_type, enum=enum, h=h) else text
    tc = category(target_type, enum=enum)
    if tc in (JSON, JSONB):
        return f"jsonb_hash_extended(({x.sql})::jsonb, 0)"
    if tc == TSTZ:  # both sessions are in UTC
        return f"timestamp_hash_extended(({x.sql})::timestamptz::timestamp, 0)"
    if tc == TS:
        return f"timestamp_hash_extended(({x.sql})::timestamp, 0)"
    return text


def is_hash(target_type: str, *, enum: bool, h: Hashing) -> bool:
    """Whether :func:`fingerprint` gives a 64-bit hash (not text) for a column of this type."""
    return h.fast and category(target_type, enum=enum) in (JSON, JSONB, TSTZ, TS)


def source_from(comp: CompiledTable) -> str:
    """The source table in a FROM clause; with derived keys, a marker that run_group replaces
    by the table joined with the values Python computed (read in the same snapshot)."""
    if not comp.derived:
        return qualified(comp.source)
    return f"\x00derived:{comp.source}\x00"


ARRAY_TYPES = {UUID: "uuid", INT: "bigint", TEXT: "text"}
