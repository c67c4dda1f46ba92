"""Compile a declared table transform to SQL expressions over its source columns.

:func:`compile_table` turns a :func:`~transforms.declarative.table_mapping` (its targets, key
and column specs, converters, ``when`` and row model) into a :class:`CompiledTable`: for every
target, SQL for its key and columns, and for the source row one *reject* expression
(:attr:`CompiledTable.reject_sql`) that names why the SQL form cannot vouch for the row, or is
NULL. Rows with a reason are handed to the Python transform (which maps or dead-letters them),
so the SQL form is only ever used where it equals Python's.

What does not compile (a ``custom`` transform, an ``extra=`` function, a lambda ``when``, a
converter or validator without a SQL twin) is reported as :class:`NotCompiled` with the reason,
and that table keeps the Python path. Pure text: the callers run the SQL.
"""

from __future__ import annotations

import datetime as dt
import types
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from transforms.api import TableTransform
from transforms.declarative import Col, Constant, Declared, Target
from transforms.sql_twins import (
    BOOL,
    INT,
    JSON,
    JSON_STRING,
    JSONB,
    TEXT,
    TS,
    TSTZ,
    UUID,
    Check,
    Expr,
    NotCompilable,
    apply_twin,
    category,
    check_of,
    column,
    ident,
    json_string_array_re,
    list_check_of,
    literal,
    reads_key_text,
    twin_of,
    unsafe_json,
)
from transforms.when import when_sql

ENUM = "enum"  # a source column category: a user-defined enum, read as its label text


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    table: str
    patch: bool
    key: tuple[tuple[str, Expr], ...]
    columns: tuple[tuple[str, Expr], ...]
    insert_only: tuple[tuple[str, Expr], ...]
    when: str | None  # SQL condition over the source row; None: every row

    @property
    def written(self) -> dict[str, Expr]:
        return dict(self.key + self.columns)


@dataclass(frozen=True, slots=True)
class DerivedKey:
    """A target column whose converter has no SQL form but reads only source key columns:
    the caller computes ``convert(*sources)`` in Python per source key and joins the values in
    as the column ``alias`` (NULL where Python refuses: the row then goes the Python way)."""

    alias: str
    convert: Callable[..., Any]
    sources: tuple[str, ...]
    type: str  # category of the result
    # convert reads the keys' text alike (sql_twins.takes_key_text): callers may pass the
    # server's text of uuid, integer and text keys instead of Python values.
    key_text: bool = False


@dataclass(frozen=True, slots=True)
class CompiledTable:
    source: str
    source_key: tuple[str, ...]
    targets: tuple[CompiledTarget, ...]
    checks: tuple[Check, ...]
    # True when every check is exact (flags exactly the rows Python refuses); False: some rows
    # are flagged only because the SQL form cannot vouch for them.
    exact: bool
    # Target columns computed by Python from the source key (no SQL twin, e.g. a uuid5):
    # the caller supplies them as extra source columns (see DerivedKey).
    derived: tuple[DerivedKey, ...] = ()

    @property
    def reject_sql(self) -> str:
        """A text expression over the source row: why it goes the Python way, or NULL.

        CASE tests its conditions in order and stops at the first that holds, so checks that
        make later ones safe to evaluate (JSON the server could not de-escape) come first."""
        if not self.checks:
            return "NULL::text"
        arms = " ".join(f"WHEN {c} THEN {literal(r).sql}" for c, r in _needed(self.checks))
        return f"(CASE {arms} END)"

    def writing(self, table: str) -> list[CompiledTarget]:
        return [t for t in self.targets if t.table == table]


@dataclass(frozen=True, slots=True)
class NotCompiled:
    source: str
    reason: str


def _needed(checks: Sequence[Check]) -> list[Check]:
    """The checks that can be the first to hold: one repeated, or ``(x) IS NOT NULL AND
    (c)`` after ``c`` (a converter's check after the same check of its source column), can
    only hold where an earlier one did, so it would never name the reason, yet every row
    that passes would still pay for evaluating it."""
    seen: set[str] = set()
    out: list[Check] = []
    for cond, reason in checks:
        if cond in seen or any(_implies(cond, s) for s in seen):
            continue
        seen.add(cond)
        out.append((cond, reason))
    return out


def _implies(cond: str, earlier: str) -> bool:
    """Whether ``cond`` reads ``(x) IS NOT NULL AND (earlier)`` (so it implies ``earlier``)."""
    tail = f" IS NOT NULL AND ({earlier})"
    return cond.endswith(tail) and _one_group(cond[: -len(tail)])


def _one_group(text: str) -> bool:
    """``text`` is one parenthesised group: ``(`` … its matching ``)`` at the very end."""
    if not text.startswith("("):
        return False
    depth, quote = 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""  # a doubled '' (or "") closes and reopens: still right
        elif ch in "'\"":
            quote = ch
        elif ch in "()":
            depth += 1 if ch == "(" else -1
            if depth == 0:
                return i == len(text) - 1
    return False


def compile_table(
    t: TableTransform,
    columns: Mapping[str, str],
    *,
    insert_only: bool = True,
    derived_keys: bool = False,
) -> CompiledTable | NotCompiled:
    """``t`` over a source table whose columns have the given categories (see
    :func:`transforms.sql_twins.category`; ``"enum"`` for user enums). ``insert_only=False``
    leaves out insert-only columns (validation does not compare them). ``derived_keys``: a
    converter without a SQL twin that reads only source key columns becomes a
    :class:`DerivedKey` the caller computes, instead of keeping the table on the Python path."""
    d = t.declared
    if not isinstance(d, Declared):
        return NotCompiled(t.source, "a custom(...) transform (a Python function)")
    if d.extra is not None:
        return NotCompiled(t.source, "an extra= function writes more rows")
    cols = {
        name: column(name, TEXT if cat == ENUM else cat, enum=cat == ENUM)
        for name, cat in columns.items()
    }
    try:
        checks: list[Check] = []
        exact = True
        used_json = {n for n, e in cols.items() if e.type == JSON}
        # JSON the server cannot de-escape goes the Python way before anything reads into it.
        for n in sorted(used_json):
            checks.extend((c, f"{n}: {r}") for c, r in unsafe_json(cols[n]))
        if d.model is not None:
            mc, mexact = model_checks(d.model, cols)
            checks.extend(mc)
            exact = exact and mexact
        targets = []
        derived: list[DerivedKey] = []
        for target in d.targets:
            ct, texact = _target(
                target,
                cols,
                insert_only=insert_only,
                derive=(lambda n, c: _derive(n, c, t.source_key, derived))
                if derived_keys
                else None,
            )
            targets.append(ct)
            exact = exact and texact
            for _, e in ct.key + ct.columns + ct.insert_only:
                checks.extend(_within(ct.when, e.checks))
            for name, e in ct.key:
                checks.extend(
                    _within(ct.when, ((f"({e.sql}) IS NULL", f"target key {name} is NULL"),))
                )
    except NotCompilable as e:
        return NotCompiled(t.source, e.reason)
    missing = [k for k in t.source_key if k not in cols]
    if missing:
        return NotCompiled(t.source, f"source key column(s) {', '.join(missing)} not in the table")
    return CompiledTable(
        t.source,
        t.source_key,
        tuple(targets),
        tuple(dict.fromkeys(checks)),
        exact,
        tuple(derived),
    )


_RESULT_TYPES = {"str": TEXT, "uuid.UUID": UUID, "UUID": UUID, "int": INT}


def _derive(name: str, c: Col, source_key: tuple[str, ...], out: list[DerivedKey]) -> Expr:
    if c.convert is None or not c.sources or not set(c.sources) <= set(source_key):
        raise NotCompilable(f"column {name}: no SQL twin, and not a function of the key")
    ret = getattr(c.convert, "__annotations__", {}).get("return")
    ret_name = ret if isinstance(ret, str) else getattr(ret, "__qualname__", repr(ret))
    if ret_name not in _RESULT_TYPES:
        raise NotCompilable(f"column {name}: its converter's result type is not declared")
    alias = f"__key_{len(out)}"
    key_text = reads_key_text(c.convert)
    out.append(DerivedKey(alias, c.convert, c.sources, _RESULT_TYPES[ret_name], key_text))
    # NULL where Python refused the key (or returned None): the Python path decides the row.
    unsure = (f"{ident(alias)} IS NULL", f"{name}: computed in Python, which refused it")
    return Expr(ident(alias), _RESULT_TYPES[ret_name], (unsure,))


def _within(when: str | None, checks: tuple[Check, ...]) -> list[Check]:
    # A target whose when= fails for the row does not run its converters (Python's order).
    return [(c if when is None else f"({when}) AND ({c})", r) for c, r in checks]


def _target(
    t: Target,
    cols: Mapping[str, Expr],
    *,
    insert_only: bool,
    derive: Callable[[str, Col], Expr] | None = None,
) -> tuple[CompiledTarget, bool]:
    exact = True

    def spec(name: str, s: str | Col) -> Expr:
        nonlocal exact
        try:
            e, ok = col_expr(s, cols)
        except NotCompilable:
            # A converter without a SQL twin that reads only source key columns (a uuid5 id):
            # the caller computes it from the key (DerivedKey).
            if derive is None or isinstance(s, str):
                raise
            return derive(name, s)
        exact = exact and ok
        return e

    when = when_sql(t.when, cols) if t.when is not None else None
    key = tuple((n, spec(n, s)) for n, s in t.key.items())
    values = tuple((n, spec(n, s)) for n, s in t.columns.items())
    only = tuple((n, spec(n, s)) for n, s in t.insert_only.items()) if insert_only else ()
    return CompiledTarget(t.table, t.patch, key, values, only, when), exact


def col_expr(spec: str | Col, cols: Mapping[str, Expr]) -> tuple[Expr, bool]:
    """The SQL of one target column spec, and whether its checks are exact."""
    c = Col((spec,)) if isinstance(spec, str) else spec
    args = []
    for s in c.sources:
        if s not in cols:
            raise NotCompilable(f"column {s} is not in the source table")
        args.append(cols[s])
    if c.convert is None:
        if len(args) != 1:
            raise NotCompilable("several sources without a converter")
        return args[0], True
    if isinstance(c.convert, Constant):
        return literal(c.convert.value), True
    twin = twin_of(c.convert)
    if twin is None:
        name = getattr(c.convert, "__qualname__", type(c.convert).__name__)
        raise NotCompilable(f"converter {name} has no SQL twin")
    e = apply_twin(c.convert, args)
    if len(args) == 1 and not c.convert_none and not e.null_safe:
        # Python passes NULL through without calling the converter: so does SQL.
        x = args[0].sql
        # (A derived form's own NULL test can never hold under the pass-through: left out.)
        checks = tuple(
            (f"({x}) IS NOT NULL AND ({cond})", r)
            for cond, r in e.checks
            if cond != f"({x}) IS NULL"
        )
        e = Expr(f"(CASE WHEN ({x}) IS NOT NULL THEN {e.sql} END)", e.type, checks)
    return e, twin.exact


# ---- row models -----------------------------------------------------------------------------


def model_checks(model: type[BaseModel], cols: Mapping[str, Expr]) -> tuple[list[Check], bool]:
    """Conditions under which ``model`` (as transforms.declarative.RowValidator applies it)
    refuses a source row; whether they are exact."""
    checks: list[Check] = []
    exact = True
    for name, info in model.model_fields.items():
        if name not in cols:
            continue  # RowValidator checks present columns only
        c, ok = _field_checks(name, info.annotation, list(info.metadata), cols[name])
        checks.extend(c)
        exact = exact and ok
    return checks, exact


def _field_checks(
    name: str, annotation: Any, metadata: list[Any], x: Expr
) -> tuple[list[Check], bool]:
    ann, meta = _unwrap(annotation, metadata)
    optional = False
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        optional = len(args) < len(get_args(ann))
        if len(args) != 1:
            raise NotCompilable(f"model field {name}: a union of several types")
        ann, meta = _unwrap(args[0], meta)
    checks: list[Check] = []
    if ann is Any:
        optional = True  # Any takes None too
    if not optional:
        checks.append((f"({x.sql}) IS NULL", f"{name}: a value is required"))
    value, exact = _value_checks(name, ann, meta, x)
    checks.extend((f"({x.sql}) IS NOT NULL AND ({c})", r) for c, r in value)
    return checks, exact


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    meta = list(metadata)
    while get_origin(annotation) is Annotated:
        base, *more = get_args(annotation)
        annotation = base
        meta.extend(more)
    return annotation, meta


_TYPES: dict[Any, tuple[str, ...]] = {
    uuid.UUID: (UUID,),
    bool: (BOOL,),
    int: (INT,),
    str: (TEXT,),
    dt.datetime: (TSTZ, TS),
}


def _value_checks(name: str, ann: Any, meta: list[Any], x: Expr) -> tuple[list[Check], bool]:
    checks: list[Check] = []
    exact = True
    if ann is Any:
        pass
    elif get_origin(ann) is Literal:
        values = get_args(ann)
        if x.type != TEXT or not all(isinstance(v, str) for v in values):
            raise NotCompilable(f"model field {name}: a Literal over a {x.type} column")
        inside = ", ".join(literal(v).sql for v in values)
        checks.append((f"({x.sql}) NOT IN ({inside})", f"{name} is not one of {values}"))
    elif get_origin(ann) is list:
        checks_, exact = _list_checks(name, ann, x)
        checks.extend(checks_)
    elif ann in _TYPES:
        if x.type not in _TYPES[ann]:
            raise NotCompilable(f"model field {name}: {ann.__name__} over a {x.type} column")
    else:
        raise NotCompilable(f"model field {name}: type {ann!r} has no SQL check")
    for m in meta:
        c, ok = _constraint(name, m, x)
        checks.extend(c)
        exact = exact and ok
    return checks, exact


_CONSTRAINTS = (
    *("max_length", "min_length", "pattern", "strip_whitespace", "to_upper", "to_lower"),
    *("ascii_only", "strict", "gt", "ge", "lt", "le", "multiple_of"),
)


def _constraint(name: str, m: Any, x: Expr) -> tuple[list[Check], bool]:
    func = getattr(m, "func", None)
    if func is not None and type(m).__name__ == "AfterValidator":
        found = check_of(func)
        if found is None:
            fname = getattr(func, "__qualname__", repr(func))
            raise NotCompilable(f"model field {name}: validator {fname} has no SQL check")
        builder, exact = found
        return builder(x), exact
    allowed = {"max_length", "min_length"}
    set_attrs = {a: getattr(m, a) for a in _CONSTRAINTS if getattr(m, a, None) is not None}
    if not set_attrs or set(set_attrs) - allowed:
        raise NotCompilable(f"model field {name}: constraint {m!r} has no SQL check")
    if x.type != TEXT:
        raise NotCompilable(f"model field {name}: a length over a {x.type} column")
    out = []
    if "max_length" in set_attrs:
        n = int(set_attrs["max_length"])
        out.append((f"char_length({x.sql}) > {n}", f"{name} is longer than {n}"))
    if "min_length" in set_attrs:
        n = int(set_attrs["min_length"])
        out.append((f"char_length({x.sql}) < {n}", f"{name} is shorter than {n}"))
    return out, True


def _list_checks(name: str, ann: Any, x: Expr) -> tuple[list[Check], bool]:
    if x.type not in (JSON, JSONB):
        raise NotCompilable(f"model field {name}: a list over a {x.type} column")
    j = "json" if x.type == JSON else "jsonb"
    (item,) = get_args(ann) or (Any,)
    item, meta = _unwrap(item, [])
    checks: list[Check] = [(f"{j}_typeof({x.sql}) <> 'array'", f"{name} is not a list")]
    if item is Any:
        return checks, True
    if item is not str:
        raise NotCompilable(f"model field {name}: a list of {item!r}")
    funcs = [getattr(m, "func", None) for m in meta]
    whole = [list_check_of(f) if callable(f) else None for f in funcs]
    if meta and all(whole) and all(type(m).__name__ == "AfterValidator" for m in meta):
        # Every validator has a whole-list form: the JSON text is checked at once (no
        # subquery reading the items, which cost most of the row). Those forms flag escaped
        # text, so the json NUL escape needs no guard here.
        cond = " OR ".join(f"({b(x)})" for b in whole if b is not None)
        checks.append(
            (
                f"(CASE WHEN {j}_typeof({x.sql}) = 'array' THEN ({cond}) ELSE false END)",
                f"{name} has an item that is not a valid string",
            )
        )
        return checks, False
    if not meta:
        # Only "is every item a string": one regular expression over the JSON text (a quoted
        # string of any characters but quote and backslash, or escapes), where a subquery
        # reading the items cost three times as much per row. A json \u0000 escape is flagged
        # as the item-by-item form flags it (no text form; the Python path judges the row).
        text = f"({x.sql})::text"
        cond = f"{text} !~ '{json_string_array_re(JSON_STRING)}'"
        if j == "json":
            cond = f"strpos({text}, '\\u0000') > 0 OR {cond}"
        checks.append(
            (
                f"(CASE WHEN {j}_typeof({x.sql}) = 'array' THEN ({cond}) ELSE false END)",
                f"{name} has an item that is not a valid string",
            )
        )
        return checks, j != "json"
    conds = [f"{j}_typeof(e.j) <> 'string'"]
    exact = True
    for m in meta:
        c, ok = _constraint(name, m, Expr("(e.j #>> '{}')", TEXT))
        conds.extend(f"({cond})" for cond, _ in c)
        exact = exact and ok
    where = " OR ".join(conds)
    if j == "json":
        # A json item escaping U+0000 has no text form (#>> would raise, aborting the whole
        # query): such a row is flagged before any item is read as text, and the Python path
        # judges it.
        where = f"CASE WHEN strpos(e.j::text, '\\u0000') > 0 THEN true ELSE ({where}) END"
        exact = False
    checks.append(
        (
            f"(CASE WHEN {j}_typeof({x.sql}) = 'array' THEN EXISTS (SELECT 1 FROM "
            f"{j}_array_elements({x.sql}) AS e(j) WHERE {where}) ELSE false END)",
            f"{name} has an item that is not a valid string",
        )
    )
    return checks, exact


# ---- what a backfill loads with -------------------------------------------------------------


def source_categories(
    columns: Sequence[str], types: Sequence[str], enums: Iterable[str]
) -> dict[str, str]:
    """Column -> category (:func:`transforms.sql_twins.category` of its ``format_type``;
    ``enum`` for a column of a user enum type), as :func:`compile_for_load` takes them."""
    enum = set(enums)
    return {c: ENUM if c in enum else category(t) for c, t in zip(columns, types, strict=True)}


def compile_for_load(
    t: TableTransform, columns: Mapping[str, str], key: tuple[str, ...]
) -> CompiledTable | NotCompiled:
    """The SQL form a backfill loads ``t``'s rows with (source columns by category; ``key``:
    the relation's key): a declared transform whole, with key converters that have no SQL twin
    computed from the key (:class:`DerivedKey`), or a row-copying one (the identity: every
    column into the same-named column of the same-named table, keyed by the relation's key).
    A table whose form would not equal its Python path's is :class:`NotCompiled`."""
    if t.copies_rows:
        if not key or not set(key) <= set(columns):
            return NotCompiled(t.source, "the relation has no key among its columns")
        # The identity hands the log's text to the target as it is: so does its SQL form.
        cols = {n: Expr(ident(n), TEXT) for n in columns}
        target = CompiledTarget(
            t.writes[0].name,
            False,
            tuple((k, cols[k]) for k in key),
            tuple((n, e) for n, e in cols.items() if n not in key),
            (),
            None,
        )
        return CompiledTable(t.source, key, (target,), (), True)
    return compile_table(t, columns, derived_keys=True)
