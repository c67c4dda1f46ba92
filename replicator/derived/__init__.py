"""Derived SQL forms of plain Python converters: proved on the server before they are used.

A converter without a hand-written twin may have a SQL form read from its code
(transforms.derive). A wrong one would be written by the backfill and agreed with by
validation, so it is used only after two proofs, each against the function itself:

1. a property test over each column type it is applied to: edge cases, the code's constants
   and their neighbours, seeded random values (transforms.derive.values) are stored in a
   temporary table of that type on the server, the derived form and its checks computed by
   SQL, the function by Python; every value Python refuses must be flagged, every value not
   flagged must come out equal (value and type);
2. the same on a sample of the live source rows of every column it converts.

Both pass: the form is registered as the converter's twin for this process
(transforms.sql_twins.use_derived) and compile uses it as a twin; either fails: the columns keep
the Python path, and :func:`prove_direction` says why. Proofs are cached per function
fingerprint (its source and the constants it reads) and column type for the process: the
backfill, each apply worker and validate prove once when they start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors import pg
from replicator.config import DatabaseSettings
from replicator.errors import ReplicatorError
from transforms.api import Direction
from transforms.declarative import Col, Constant, Declared
from transforms.derive import Derived, Underived, derive, literals_of
from transforms.derive.values import provable, values_for
from transforms.sql_twins import (
    Expr,
    NotCompilable,
    category,
    column,
    forget_derived,
    hand_twin_of,
    ident,
    literal,
    use_derived,
)

log = logging.getLogger(__name__)

TWIN, DERIVED, PYTHON, COPIED = "SQL twin", "derived SQL", "Python", "copied"
VALUES_PER_TYPE = 300
SAMPLE_ROWS = 1000


@dataclass(frozen=True)
class Placement:
    """Where one target column of a mapping is computed, and why."""

    source: str  # source table
    column: str  # target table.column
    where: str  # TWIN, DERIVED, PYTHON or COPIED
    why: str


# (fingerprint, argument types) -> None (proved) or why not: a process proves each once.
_PROVED: dict[tuple[str, tuple[str, ...]], str | None] = {}


@dataclass
class _Use:
    source: str
    column: str
    args: tuple[str, ...]  # source columns
    types: tuple[str, ...]  # their format_type()
    keyed: bool = False  # reads only source key columns (compile joins Python's values in)


def _catalog(conn: psycopg.Connection[Any], tables: Iterable[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    rows = conn.execute(
        "SELECT c.oid::regclass::text, n.nspname || '.' || c.relname, a.attname,"
        " format_type(a.atttypid, a.atttypmod)"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname || '.' || c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (list(tables),),
    ).fetchall()
    for _, table, col, typ in rows:
        out.setdefault(str(table), {})[str(col)] = str(typ)
    return out


def prove_direction(
    direction: Direction, conn: psycopg.Connection[Any], *, sample: bool = True
) -> list[Placement]:
    """Prove the derived forms of ``direction``'s converters on ``conn`` (its source
    database), register those that pass, and say where every target column is computed."""
    catalog = _catalog(conn, direction.tables)
    placements: list[Placement] = []
    uses: dict[Callable[..., Any], list[_Use]] = {}
    derived: dict[Callable[..., Any], Derived | Underived] = {}
    for t in direction.tables.values():
        d = t.declared
        if not isinstance(d, Declared):
            continue
        cols = catalog.get(t.source, {})
        for target in d.targets:
            specs = {**target.key, **target.columns, **target.insert_only}
            for name, spec in specs.items():
                where = f"{target.table.rpartition('.')[2]}.{name}"
                c = Col((spec,)) if isinstance(spec, str) else spec
                if c.convert is None or isinstance(c.convert, Constant):
                    placements.append(Placement(t.source, where, COPIED, "no converter"))
                    continue
                if hand_twin_of(c.convert) is not None:
                    placements.append(Placement(t.source, where, TWIN, "written by hand"))
                    continue
                fn = c.convert
                if fn not in derived:
                    derived[fn] = derive(fn)
                types = tuple(cols.get(s, "?") for s in c.sources)
                keyed = bool(c.sources) and set(c.sources) <= set(t.source_key)
                uses.setdefault(fn, []).append(_Use(t.source, where, c.sources, types, keyed))
    for fn, fn_uses in uses.items():
        form = derived[fn]
        why = _prove(fn, form, fn_uses, conn, sample)
        use_derived(fn, _restricted(form, fn_uses) if why is None else None)
        name = getattr(fn, "__qualname__", type(fn).__name__)
        if why:
            log.info("converter %s keeps the Python path: %s", name, why)
        for u in fn_uses:
            if why:
                also = "; computed from the source key and joined into the SQL" if u.keyed else ""
                placements.append(Placement(u.source, u.column, PYTHON, f"{name}: {why}{also}"))
            else:
                placements.append(
                    Placement(
                        u.source,
                        u.column,
                        DERIVED,
                        f"{name}: proved on the server and on a sample of {u.source}",
                    )
                )
    return placements


def _restricted(form: Derived | Underived, fn_uses: list[_Use]) -> Callable[..., Expr] | None:
    """The form, for the argument categories it was proved on only."""
    if isinstance(form, Underived):
        return None
    proved = {tuple(category(t) for t in u.types) for u in fn_uses}

    def build(*args: Expr) -> Expr:
        if tuple(a.type for a in args) not in proved:
            raise NotCompilable("its derived form was not proved for these column types")
        return form.build(*args)

    return build


def _prove(
    fn: Callable[..., Any],
    form: Derived | Underived,
    fn_uses: list[_Use],
    conn: psycopg.Connection[Any],
    sample: bool,
) -> str | None:
    if isinstance(form, Underived):
        return f"no derived form: {form.reason}"
    for u in fn_uses:
        try:  # what the code holds that has no SQL form comes first: the likeliest fix
            _select(form, [column(f"a{k}", category(t)) for k, t in enumerate(u.types)])
        except _Refused as e:
            return f"no derived form: {e}"
        bad = [t for t in u.types if not provable(t)]
        if bad:
            return f"no property test over a {bad[0]} column"
        key = (form.fingerprint, u.types)
        if key not in _PROVED:
            _PROVED[key] = _property(fn, form, u.types, conn)
        if _PROVED[key]:
            return f"its derived form failed the property test: {_PROVED[key]}"
    if sample:
        for u in fn_uses:
            why = _sample(fn, form, u, conn)
            if why:
                return f"its derived form differs on live rows of {u.source}: {why}"
    return None


def _select(form: Derived, args: list[Expr]) -> tuple[str, str]:
    """The derived form's reject reason (NULL: SQL vouches) and value over ``args``."""
    try:
        e = form.build(*args)
    except NotCompilable as exc:
        raise _Refused(exc.reason) from exc
    if e.checks:
        arms = " ".join(f"WHEN {c} THEN {literal(r).sql}" for c, r in dict.fromkeys(e.checks))
        reject = f"(CASE {arms} END)"
    else:
        reject = "NULL::text"
    return reject, e.sql


class _Refused(Exception):
    pass


def _property(
    fn: Callable[..., Any], form: Derived, types: tuple[str, ...], conn: psycopg.Connection[Any]
) -> str | None:
    consts = literals_of(form)
    columns = [values_for(t, consts, VALUES_PER_TYPE) for t in types]
    n = max(len(c) for c in columns)
    rows: list[tuple[Any, ...]] = [
        tuple(c[(i * (k + 1)) % len(c)] for k, c in enumerate(columns)) for i in range(n)
    ]
    rows += [
        tuple(None if k == j else c[0] for k, c in enumerate(columns)) for j in range(len(types))
    ]
    names = [f"a{k}" for k in range(len(types))]
    try:
        reject, value = _select(
            form, [column(a, category(t)) for a, t in zip(names, types, strict=True)]
        )
    except _Refused as e:
        return str(e)
    defs = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(a), sql.SQL(t))
        for a, t in zip(names, types, strict=True)
    )
    cols = ", ".join(ident(a) for a in names)
    try:
        with conn.transaction():
            # (Inside a caller's transaction ON COMMIT DROP waits for its commit: drop first.)
            conn.execute("DROP TABLE IF EXISTS pg_temp.derive_proof")
            conn.execute(sql.SQL("CREATE TEMP TABLE derive_proof ({}) ON COMMIT DROP").format(defs))
            with conn.cursor() as cur:
                with cur.copy(f"COPY derive_proof ({cols}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
                got = cur.execute(f"SELECT {cols}, {reject}, {value} FROM derive_proof").fetchall()
    except psycopg.Error as exc:
        # The form fails on the server (an error a guard should have prevented): not used.
        return f"the server refused it: {str(exc).splitlines()[0]}"
    return _compare(fn, got, len(types))


def _sample(
    fn: Callable[..., Any], form: Derived, u: _Use, conn: psycopg.Connection[Any]
) -> str | None:
    try:
        reject, value = _select(
            form, [column(a, category(t)) for a, t in zip(u.args, u.types, strict=True)]
        )
    except _Refused as e:
        return str(e)
    schema, _, name = u.source.partition(".")
    table = sql.Identifier(schema, name)
    cols = sql.SQL(", ").join(sql.Identifier(a) for a in dict.fromkeys(u.args))
    args = ", ".join(ident(a) for a in u.args)
    try:
        row = conn.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (u.source,)
        ).fetchone()
        tuples = float(row[0]) if row else -1.0
        # A few pages at random (SYSTEM sampling): a million-row table costs milliseconds.
        pct = min(100.0, max(0.01, 100.0 * 3 * SAMPLE_ROWS / tuples)) if tuples > 0 else 100.0
        inner = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM ({}) LIMIT {}").format(
            cols, table, sql.Literal(pct), sql.Literal(SAMPLE_ROWS)
        )
        query = sql.SQL("SELECT {}, {}, {} FROM ({}) s").format(
            sql.SQL(args), sql.SQL(reject), sql.SQL(value), inner
        )
        with conn.transaction():  # a failure must not abort a caller's transaction
            got = conn.execute(query).fetchall()
    except psycopg.Error as exc:
        return f"the server refused it: {str(exc).splitlines()[0]}"
    return _compare(fn, got, len(u.args))


def _compare(fn: Callable[..., Any], got: list[tuple[Any, ...]], nargs: int) -> str | None:
    for row in got:
        args, reject, value = row[:nargs], row[nargs], row[nargs + 1]
        try:
            expected = fn(*args)
        except Exception as exc:
            if reject is None:
                return f"Python refuses {_show(args)} ({exc}), the SQL form does not flag it"
            continue
        if reject is not None:
            continue  # flagged: the Python path computes it (conservative is allowed)
        if type(expected) is not type(value) or expected != value:
            return f"for {_show(args)} Python gives {expected!r}, SQL {value!r}"
    return None


def _show(args: tuple[Any, ...]) -> str:
    text = ", ".join(repr(a) for a in args)
    return text if len(text) < 80 else text[:77] + "..."


def placements_text(placements: list[Placement]) -> list[str]:
    """One line per computed column: ``table.column: where (why)``."""
    return [
        f"{p.source} → {p.column}: {p.where} ({p.why})" for p in placements if p.where != COPIED
    ]


def prove_on_source(db: DatabaseSettings, direction: Direction) -> list[Placement]:
    """:func:`prove_direction` on a session of its own to ``db``, the direction's source
    (each apply worker process proves before it plans a bulk chunk)."""
    if not any(_candidates(direction)):
        return []  # every converter has a twin or none: nothing to prove, no session needed
    try:
        with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
            return prove_direction(direction, conn)
    except ReplicatorError as exc:
        # Apply does not otherwise need the source: without it, nothing derived is used.
        log.warning("derived SQL forms not proved (%s): their columns take the Python path", exc)
        forget_derived()
        return []


def _candidates(direction: Direction) -> Iterable[Callable[..., Any]]:
    """Converters of ``direction`` without a hand-written twin."""
    for t in direction.tables.values():
        if isinstance(t.declared, Declared):
            for target in t.declared.targets:
                for spec in {**target.key, **target.columns, **target.insert_only}.values():
                    fn = None if isinstance(spec, str) else spec.convert
                    if fn is not None and not isinstance(fn, Constant) and not hand_twin_of(fn):
                        yield fn


def forget() -> None:
    """Forget this process's proofs and stop using their forms until proved again (a test
    injecting a wrong derivation)."""
    _PROVED.clear()
    forget_derived()
