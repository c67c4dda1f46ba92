"""Declare a table mapping by renames and converters; write Python only for the rest.

A :class:`Target` says how one source row becomes one row of one target table: the target key
and columns, each a source column name (a rename) or a :func:`col` (source columns + converter).
:func:`table_mapping` turns a source table and its targets into a
:class:`~transforms.api.TableTransform`, handling for every target:

- unchanged-TOAST: a target column derived from a source column the log did not send (and
  listed as unchanged) is left out of ``values``, so the sink keeps what the target row holds;
  a source column that is neither in the row nor unchanged is not in the relation at all (a
  misspelt name): a ``TransformError``, never a NULL;
- deletes: ``Delete`` of the target key, or a ``Patch`` to NULLs for a merged (``patch``) target;
- key changes: the old target row is removed and the new one written whole;
- validation: an optional pydantic model checks each present column at the boundary;
- errors: a converter's ``ValueError``/``TypeError`` becomes a ``TransformError`` naming the
  source table, key and column.

A 1→N split is several targets; an N→1 merge is a ``patch=True`` target writing disjoint
columns of a row another table owns. Anything else goes in ``extra`` (more ops from a plain
function) or in a :func:`custom` transform.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from replicator.errors import TransformError
from transforms.api import (
    ColumnRead,
    Delete,
    Direction,
    Patch,
    RowChange,
    SequenceSync,
    TableTransform,
    TargetOp,
    TargetTable,
    TransformFn,
    Upsert,
)

OnDelete = Literal["delete", "clear", "ignore"]


@dataclass(frozen=True, slots=True)
class Col:
    """A target column computed from source columns by ``convert``.

    With one source, NULL passes through as NULL without calling ``convert`` (SQL semantics;
    most converters need not care), unless ``convert_none`` is set. With several sources or
    none, ``convert`` is always called with one argument per source.
    """

    sources: tuple[str, ...]
    convert: Callable[..., Any] | None = None
    convert_none: bool = False

    def compute(self, row: Mapping[str, Any]) -> Any:
        args = [row[s] for s in self.sources]
        if self.convert is None:
            if len(args) != 1:
                raise TypeError("a column with several sources needs a converter")
            return args[0]
        if len(args) == 1 and args[0] is None and not self.convert_none:
            return None
        return self.convert(*args)


ColumnSpec = str | Col


def col(*sources: str, convert: Callable[..., Any] | None = None, none: bool = False) -> Col:
    """A target column from ``sources`` through ``convert`` (``none=True``: convert NULL too)."""
    return Col(tuple(sources), convert, none)


@dataclass(frozen=True, slots=True)
class Constant:
    """The converter of :func:`const`: a function of no source column (with a SQL form)."""

    value: Any

    def __call__(self) -> Any:
        return self.value


def const(value: Any) -> Col:
    """A target column with a fixed value (written on every upsert)."""
    return Col((), Constant(value))


def _spec(spec: ColumnSpec) -> Col:
    return Col((spec,)) if isinstance(spec, str) else spec


@dataclass(frozen=True, slots=True)
class Target:
    """One target row produced from each source row.

    ``patch``: update-if-exists (an N→1 merge) instead of upsert. ``on_delete``: what a source
    delete does — ``delete`` the target row, ``clear`` the columns (Patch to NULL, for merged
    targets), or ``ignore``. ``when``: a predicate on the new row; rows that fail it produce
    nothing for this target (a row that stops matching is not removed).
    """

    table: str
    key: Mapping[str, ColumnSpec]
    columns: Mapping[str, ColumnSpec] = field(default_factory=dict)
    # Written on insert only, never compared by validation (see transforms.api.Upsert).
    insert_only: Mapping[str, ColumnSpec] = field(default_factory=dict)
    patch: bool = False
    on_delete: OnDelete = "delete"
    when: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def written(self) -> TargetTable:
        return TargetTable(
            self.table,
            tuple(self.key),
            tuple(self.key) + tuple(self.columns),
            tuple(self.insert_only),
        )


class RowValidator:
    """Checks the present columns of a row against the fields of the same name in a model.

    Only present columns, because an update lacks its unchanged-TOAST columns: the model's
    fields become a ``total=False`` TypedDict validated in one call. Field constraints (types,
    ``Annotated`` validators, lengths, ``strict``) apply; model-level validators do not, since
    they would need the whole row.
    """

    def __init__(self, model: type[BaseModel]) -> None:
        fields = {
            name: _annotated(info.annotation, info.metadata) if info.metadata else info.annotation
            for name, info in model.model_fields.items()
        }
        # A functional TypedDict built at run time (mypy cannot type a computed one).
        row_type: Any = cast(Any, TypedDict)(f"{model.__name__}Columns", fields, total=False)
        row_type.__pydantic_config__ = ConfigDict(strict=bool(model.model_config.get("strict")))
        self._adapter: TypeAdapter[Any] = TypeAdapter(row_type)

    def check(self, row: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(column, reason)`` of the first invalid column, or None."""
        try:
            self._adapter.validate_python(row)
        except ValidationError as e:
            err = e.errors()[0]
            return str(err["loc"][0]) if err["loc"] else "?", err["msg"]
        return None


def _annotated(annotation: Any, metadata: list[Any]) -> Any:
    # Rebuild ``Annotated[T, *constraints]`` from the field, so it is checked outside the model.
    return Annotated[(annotation, *metadata)]


@dataclass(frozen=True, slots=True)
class _Context:
    table: str
    key: dict[str, object]

    def error(
        self, reason: str, column: str | None = None, hint: str | None = None
    ) -> TransformError:
        where = f" column {column}" if column else ""
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        return TransformError(
            f"{self.table} ({key}){where}: {reason}",
            table=self.table,
            key=self.key,
            column=column,
            hint=hint,
        )


def _context(change: RowChange, source_key: Sequence[str]) -> _Context:
    names = tuple(source_key) or change.key_columns
    row = change.old if change.old is not None else change.new
    row = row or {}
    return _Context(change.table, {k: row[k] for k in names if k in row})


@dataclass(frozen=True, slots=True)
class _Column:
    """One target column, compiled: computing it is on the per-row hot path."""

    name: str
    sources: tuple[str, ...]
    convert: Callable[..., Any] | None
    convert_none: bool
    # The column an error names: the source column when there is one.
    blame: str
    # The one source column, when there is exactly one (the common case, checked per row).
    single: str | None = None

    @classmethod
    def of(cls, name: str, spec: ColumnSpec) -> _Column:
        c = _spec(spec)
        if c.convert is None and len(c.sources) != 1:
            raise ValueError(f"target column {name}: several sources need a converter")
        single = c.sources[0] if len(c.sources) == 1 else None
        return cls(name, c.sources, c.convert, c.convert_none, single or name, single)

    def compute(self, ctx: _Context, row: Mapping[str, Any]) -> Any:
        try:
            if self.single is not None:
                value = row[self.single]
                if self.convert is None or (value is None and not self.convert_none):
                    return value
                return self.convert(value)
            return self.convert(*(row[s] for s in self.sources))  # type: ignore[misc]
        except TransformError as e:
            raise ctx.error(e.message, e.column or self.blame, e.hint) from e
        except (ValueError, TypeError, KeyError) as e:
            raise ctx.error(str(e), self.blame) from e


@dataclass(frozen=True, slots=True)
class _Plan:
    """A :class:`Target` compiled once per mapping."""

    target: Target
    key: tuple[_Column, ...]
    columns: tuple[_Column, ...]
    insert_only: tuple[_Column, ...] = ()
    key_sources: tuple[str, ...] = ()  # every source column of the key

    @classmethod
    def of(cls, t: Target) -> _Plan:
        key = tuple(_Column.of(n, s) for n, s in t.key.items())
        return cls(
            t,
            key,
            tuple(_Column.of(n, s) for n, s in t.columns.items()),
            tuple(_Column.of(n, s) for n, s in t.insert_only.items()),
            tuple(dict.fromkeys(s for c in key for s in c.sources)),
        )

    def key_of(self, ctx: _Context, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The target key from ``row``, or None when ``row`` lacks a key source."""
        for s in self.key_sources:
            if s not in row:
                return None
        key = {c.name: c.compute(ctx, row) for c in self.key}
        for c in self.key:
            if key[c.name] is None:
                raise ctx.error(f"target key {self.target.table}.{c.name} would be NULL", c.blame)
        return key

    def reads(self) -> tuple[ColumnRead, ...]:
        t = self.target.table
        return tuple(
            ColumnRead(s, t, c.name)
            for c in (*self.key, *self.columns, *self.insert_only)
            for s in c.sources
        )

    def values(
        self,
        ctx: _Context,
        row: Mapping[str, Any],
        unchanged: frozenset[str],
        *,
        whole: bool,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.columns:
            if c.single in row if c.single is not None else all(s in row for s in c.sources):
                out[c.name] = c.compute(ctx, row)
                continue
            _refuse_absent(ctx, self.target.table, c, row, unchanged)
            if whole:
                missing = [s for s in c.sources if s not in row]
                # A moved row is written anew, so an unsent (unchanged-TOAST) value would be lost.
                raise ctx.error(
                    f"the key changed and {', '.join(missing)} was not sent (unchanged TOAST)",
                    missing[0],
                    hint=f"set REPLICA IDENTITY FULL on {ctx.table} so the old row carries it",
                )
        return out

    def insert_only_values(
        self, ctx: _Context, row: Mapping[str, Any], unchanged: frozenset[str]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.insert_only:
            if all(s in row for s in c.sources):
                out[c.name] = c.compute(ctx, row)
            else:
                _refuse_absent(ctx, self.target.table, c, row, unchanged)
        return out

    def removal(self, key: dict[str, Any]) -> list[TargetOp]:
        t = self.target
        if t.on_delete == "delete":
            return [Delete(t.table, key)]
        if t.on_delete == "clear" and self.columns:
            return [Patch(t.table, key, {c.name: None for c in self.columns})]
        return []

    def ops(self, change: RowChange, ctx: _Context) -> list[TargetOp]:
        t = self.target
        if change.op == "delete":
            if t.on_delete == "ignore":
                return []
            old_key = self.key_of(ctx, change.key_row)
            if old_key is None:
                raise ctx.error(
                    f"the delete does not carry the columns that make the {t.table} key",
                    hint=f"set REPLICA IDENTITY FULL on {ctx.table}",
                )
            return self.removal(old_key)

        new = change.new
        if new is None:
            raise ctx.error(f"{change.op} without a new row")
        if t.when is not None:
            try:
                if not t.when(new):
                    return []
            except KeyError as e:
                raise ctx.error(f"{e.args[0]} is needed to choose the row", e.args[0]) from e
        key = self.key_of(ctx, new)
        if key is None:
            missing = next(s for c in self.key for s in c.sources if s not in new)
            raise ctx.error("a key source column was not sent", missing)

        ops: list[TargetOp] = []
        row: Mapping[str, Any] = new
        moved = False
        if change.op == "update" and change.old is not None:
            old_key = self.key_of(ctx, change.old)
            if old_key is not None and old_key != key:
                ops.extend(self.removal(old_key))
                # Under REPLICA IDENTITY FULL the old row holds the unchanged-TOAST values.
                row = {**change.old, **new}
                moved = True
        values = self.values(ctx, row, change.unchanged, whole=moved)
        if not t.patch:
            extra = self.insert_only_values(ctx, row, change.unchanged)
            ops.append(Upsert(t.table, key, values, extra))
        elif values:
            ops.append(Patch(t.table, key, values))
        return ops


def _refuse_absent(
    ctx: _Context, table: str, c: _Column, row: Mapping[str, Any], unchanged: frozenset[str]
) -> None:
    """A source column missing from a row is an unchanged TOAST value only if the log says so
    (``RowChange.unchanged``); otherwise the relation has no such column and leaving the target
    column out would write NULL into new rows, silently."""
    for s in c.sources:
        if s not in row and s not in unchanged:
            raise ctx.error(
                f"{table}.{c.name} reads source column {s}, which the row does not have "
                f"(the source relation has no such column){_close(s, row)}",
                s,
                hint="fix the mapping (`replicator check` lists such mistakes), then "
                "`replicator dlq replay`",
            )


def _close(name: str, row: Mapping[str, Any]) -> str:
    found = difflib.get_close_matches(name, [str(k) for k in row], n=3)
    return f"; did you mean {' or '.join(found)}?" if found else ""


def target_ops(t: Target, change: RowChange, source_key: Sequence[str] = ()) -> list[TargetOp]:
    """The ops one :class:`Target` derives from ``change``: for custom transforms that want the
    declarative handling for part of their output."""
    return _Plan.of(t).ops(change, _context(change, source_key))


def table_mapping(
    source: str,
    targets: Sequence[Target],
    *,
    source_key: Sequence[str],
    model: type[BaseModel] | None = None,
    extra: Callable[[RowChange], list[TargetOp]] | None = None,
    extra_writes: Iterable[TargetTable] = (),
) -> TableTransform:
    """The transform of ``source`` into ``targets`` (+ ops from ``extra``, declared in
    ``extra_writes``)."""
    validator = RowValidator(model) if model is not None else None
    key_names = tuple(source_key)
    plans = tuple(_Plan.of(t) for t in targets)
    reads = tuple(dict.fromkeys(r for p in plans for r in p.reads()))

    def fn(change: RowChange) -> list[TargetOp]:
        ctx = _context(change, key_names)
        if validator is not None and change.new is not None and change.op != "delete":
            bad = validator.check(change.new)
            if bad is not None:
                raise ctx.error(bad[1], bad[0])
        ops: list[TargetOp] = []
        for plan in plans:
            ops.extend(plan.ops(change, ctx))
        if extra is not None:
            ops.extend(_guarded(extra, change, ctx))
        return ops

    writes = tuple(t.written for t in targets) + tuple(extra_writes)
    # ``extra`` reads what it reads: only the declared targets' sources are known.
    declared = Declared(tuple(targets), key_names, model, extra)
    return TableTransform(source, key_names, fn, writes, reads=reads, declared=declared)


@dataclass(frozen=True, slots=True)
class Declared:
    """What :func:`table_mapping` was given, kept for transforms.compile."""

    targets: tuple[Target, ...]
    source_key: tuple[str, ...]
    model: type[BaseModel] | None
    extra: Callable[[RowChange], list[TargetOp]] | None


def _guarded(
    fn: Callable[[RowChange], list[TargetOp]], change: RowChange, ctx: _Context
) -> list[TargetOp]:
    try:
        return fn(change)
    except TransformError as e:
        if e.table is not None:
            raise
        raise ctx.error(e.message, e.column, e.hint) from e
    except (ValueError, TypeError, KeyError) as e:
        raise ctx.error(f"{type(e).__name__}: {e}") from e


def custom(
    source: str,
    source_key: Sequence[str],
    writes: Iterable[TargetTable],
    fn: TransformFn,
    *,
    reads: Iterable[str | ColumnRead] | None = None,
) -> TableTransform:
    """A transform written as a plain function; its ``ValueError``/``TypeError``/``KeyError``
    (and a ``TransformError`` without a table) are reported with the source table and key.

    ``reads``: the source columns ``fn`` reads (names, or :class:`ColumnRead` to name the
    target column too), so that ``check`` and apply refuse a relation that lacks one."""
    key_names = tuple(source_key)
    write_list = tuple(writes)

    def wrapped(change: RowChange) -> list[TargetOp]:
        return _guarded(fn, change, _context(change, key_names))

    declared: tuple[ColumnRead, ...] | None = None
    if reads is not None:
        first = write_list[0].name if write_list else source
        declared = tuple(r if isinstance(r, ColumnRead) else ColumnRead(r, first) for r in reads)
    return TableTransform(source, key_names, wrapped, write_list, reads=declared)


def direction(
    *transforms: TableTransform,
    ignored: Iterable[str] = (),
    sequences: Iterable[SequenceSync] = (),
) -> Direction:
    """A :class:`Direction` from transforms, refusing two transforms for one source table."""
    tables: dict[str, TableTransform] = {}
    for t in transforms:
        if t.source in tables:
            raise ValueError(f"two transforms for {t.source}")
        tables[t.source] = t
    ignored_set = frozenset(ignored)
    both = ignored_set & tables.keys()
    if both:
        raise ValueError(f"tables both mapped and ignored: {sorted(both)}")
    return Direction(tables, ignored_set, tuple(sequences))
