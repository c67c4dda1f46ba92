"""Row predicates for ``Target(when=...)`` that also have a SQL form.

A lambda works as ``when`` on the Python path, but cannot be compiled; these can. Each is a
plain callable on the new row (as the Python path calls it) and renders the same test as SQL
over the source columns. SQL's NULL logic matches Python's here: a NULL column equals nothing
and is in no set, so the row produces nothing for the target either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from transforms.sql_twins import Expr, NotCompilable, literal


@dataclass(frozen=True, slots=True)
class Equals:
    column: str
    value: Any

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return bool(row[self.column] == self.value)

    def sql(self, cols: Mapping[str, Expr]) -> str:
        x, v = _col(cols, self.column), literal(self.value)
        _same(x, v)
        return f"({x.sql}) = {v.sql}"


@dataclass(frozen=True, slots=True)
class OneOf:
    column: str
    values: frozenset[Any]

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return row[self.column] in self.values

    def sql(self, cols: Mapping[str, Expr]) -> str:
        x = _col(cols, self.column)
        if not self.values:
            return "false"
        lits = [literal(v) for v in sorted(self.values, key=repr)]
        for v in lits:
            _same(x, v)
        return f"({x.sql}) IN ({', '.join(v.sql for v in lits)})"


@dataclass(frozen=True, slots=True)
class IsNull:
    column: str
    negated: bool = False

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return (row[self.column] is None) != self.negated

    def sql(self, cols: Mapping[str, Expr]) -> str:
        return f"({_col(cols, self.column).sql}) IS {'NOT ' if self.negated else ''}NULL"


@dataclass(frozen=True, slots=True)
class AllOf:
    parts: tuple[Predicate, ...]

    def __call__(self, row: Mapping[str, Any]) -> bool:
        return all(p(row) for p in self.parts)

    def sql(self, cols: Mapping[str, Expr]) -> str:
        return "(" + " AND ".join(p.sql(cols) for p in self.parts) + ")" if self.parts else "true"


Predicate = Equals | OneOf | IsNull | AllOf


def column_equals(column: str, value: Any) -> Equals:
    return Equals(column, value)


def column_in(column: str, values: Iterable[Any]) -> OneOf:
    return OneOf(column, frozenset(values))


def column_is_null(column: str) -> IsNull:
    return IsNull(column)


def column_not_null(column: str) -> IsNull:
    return IsNull(column, negated=True)


def all_of(*parts: Predicate) -> AllOf:
    return AllOf(parts)


def when_sql(when: Callable[[Mapping[str, Any]], bool], cols: Mapping[str, Expr]) -> str:
    if isinstance(when, Equals | OneOf | IsNull | AllOf):
        return when.sql(cols)
    raise NotCompilable(
        "when= is a Python function; use transforms.when (column_equals, column_in, ...)"
    )


def _col(cols: Mapping[str, Expr], name: str) -> Expr:
    if name not in cols:
        raise NotCompilable(f"when= reads {name}, which the source table lacks")
    return cols[name]


def _same(x: Expr, v: Expr) -> None:
    if v.type not in (x.type, "?"):
        raise NotCompilable(f"when= compares a {x.type} column with a {v.type} constant")
