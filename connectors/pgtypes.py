"""PostgreSQL text values → Python values, by type OID, with psycopg's own loaders.

The log keeps values in PostgreSQL's text form; transforms want typed values. psycopg already
knows how to load every built-in type from text, so we ask its adapters instead of keeping a
hand-written table. Types it does not know (enums, domains of unknown base) stay ``str``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import adapters, pq
from psycopg.adapt import Transformer

from replicator.errors import MalformedMessage

_Load = Callable[[bytes], Any]
_FromText = Callable[[str], Any]

# Text-like types load to the text itself, and integers with int(): the psycopg loader would
# encode the str to bytes only to decode it again. These are most columns of most rows.
_AS_TEXT = frozenset({25, 1043, 1042, 19})  # text, varchar, bpchar, name
_AS_INT = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_MISSING = object()
# Types with one text form per value (the server's output for a type is deterministic, and no
# two of these forms mean the same value): text equality is value equality, so rows keyed by
# them can be told apart and coalesced by their text alone (see TextLoader.as_text).
CANONICAL_TEXT_KEYS = frozenset({16, 20, 21, 23, 25, 26, 1042, 1043, 2950})


def _bool(text: str) -> bool:
    # The log writes t/f; a column read as ``col::text`` (backfill, DLQ replay) gives true/false.
    if text == "t" or text == "true":
        return True
    if text == "f" or text == "false":
        return False
    raise ValueError("not a boolean (t, f, true or false)")


@dataclass(frozen=True, slots=True)
class RowPlan:
    """How one relation's rows load: per column (name, oid, str -> value, or None for "the
    text itself"); the columns that need a conversion; every column name."""

    steps: list[tuple[str, int, _FromText | None]]
    convert: list[tuple[str, int, _FromText]]
    names: frozenset[str]


class TextLoader:
    def __init__(self) -> None:
        self._tx = Transformer(adapters)
        self._cache: dict[int, _Load] = {}
        self._plans: dict[tuple[tuple[str, ...], tuple[int, ...]], RowPlan] = {}

    def _loader(self, oid: int) -> _Load:
        fn = self._cache.get(oid)
        if fn is None:
            fn = self._tx.get_loader(oid, pq.Format.TEXT).load
            self._cache[oid] = fn
        return fn

    def row_plan(self, columns: tuple[str, ...], oids: tuple[int, ...]) -> RowPlan:
        """How to load rows of one relation: kept by the caller for the rows that follow, so
        the per-row work does not start with a look-up by the whole column list."""
        key = (columns, oids)
        plan = self._plans.get(key)
        if plan is None:
            if len(columns) != len(oids):
                raise MalformedMessage(f"{len(columns)} columns but {len(oids)} type oids")
            steps: list[tuple[str, int, _FromText | None]] = []
            for col, oid in zip(columns, oids, strict=True):
                fn: _FromText | None
                if oid in _AS_TEXT:
                    fn = None
                elif oid in _AS_INT:
                    fn = int
                elif oid == 16:
                    fn = _bool
                elif oid in (114, 3802):  # json, jsonb: what psycopg's loader does, minus bytes
                    fn = json.loads
                else:
                    load = self._loader(oid)
                    fn = lambda text, load=load: load(text.encode())  # noqa: E731
                steps.append((col, oid, fn))
            convert = [(c, o, fn) for c, o, fn in steps if fn is not None]
            plan = self._plans[key] = RowPlan(steps, convert, frozenset(columns))
        return plan

    def row(
        self, values: Mapping[str, str | None], columns: tuple[str, ...], oids: tuple[int, ...]
    ) -> dict[str, Any]:
        """Load one row image; columns absent from ``values`` (unchanged TOAST) stay absent."""
        return self.load(values, self.row_plan(columns, oids))

    def load(self, values: Mapping[str, str | None], plan: RowPlan) -> dict[str, Any]:
        """:meth:`row` with the relation's plan in hand."""
        # The common case, checked at C speed: only the relation's columns, text or NULL. The
        # row is copied whole and only the non-text columns are converted.
        if _plain(values, plan):
            out = dict(values)
            col, oid, text = "", 0, None
            try:
                for col, oid, fn in plan.convert:  # noqa: B007 (the error names oid)
                    text = out.get(col)
                    if text is not None:
                        out[col] = fn(text)
            except Exception as exc:  # a loader's failure is bad data, never a crash
                raise _unloadable(col, oid, text, exc) from None
            return out
        return _row_checked(values, plan)

    def as_text(self, values: Mapping[str, str | None], plan: RowPlan) -> Mapping[str, Any]:
        """The row image as it is, for a transform that takes PostgreSQL's text forms (the
        identity): checked like :meth:`load`, converted not at all. Loading then writing each
        value back as text for COPY would be a round trip that changes nothing."""
        if _plain(values, plan):
            return values
        for col, oid, _ in plan.steps:
            text = values.get(col)
            if text is not None and type(text) is not str:
                raise _unloadable(col, oid, text, TypeError(f"a {type(text).__name__}, not text"))
        return {c: v for c, v in values.items() if c in plan.names}


def _plain(values: Mapping[str, str | None], plan: RowPlan) -> bool:
    """The common case, checked at C speed: only the relation's columns, text or NULL."""
    return values.keys() <= plan.names and _TEXT_OR_NONE.issuperset(map(type, values.values()))


def _row_checked(values: Mapping[str, str | None], plan: RowPlan) -> dict[str, Any]:
    """Value by value: a value that is not text names its column in the error; a key that is
    not one of the relation's columns is left out."""
    out: dict[str, Any] = {}
    col, oid, text = "", 0, None
    try:
        for col, oid, fn in plan.steps:  # noqa: B007 (the error names oid)
            text = values.get(col, _MISSING)
            if text is _MISSING:
                continue
            if text is None:
                out[col] = None
            elif type(text) is not str:
                raise TypeError(f"a {type(text).__name__}, not text")
            else:
                out[col] = text if fn is None else fn(text)
    except Exception as exc:  # a loader's failure is bad data, never a crash
        raise _unloadable(col, oid, text, exc) from None
    return out


_TEXT_OR_NONE = frozenset({str, type(None)})


def _unloadable(col: str, oid: int, text: Any, exc: Exception) -> MalformedMessage:
    shown = text[:60] if isinstance(text, str) else text
    return MalformedMessage(f"column {col!r}: cannot load {shown!r} as type oid {oid}: {exc}")
