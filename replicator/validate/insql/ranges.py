"""Validation by key range: one slice of a table group at a time (continuous validation in
``replicator run``, replicator.runtime.continuous).

A range is found on legacy by a key-ordered probe from the last key checked (``SELECT key …
WHERE key > last ORDER BY key OFFSET n - 1 LIMIT 1``, an index scan of n entries), and checked
by the group's in-database checksums restricted to it on both sides
(:class:`~replicator.validate.insql.plan.KeyRange`): the legacy rows in the range and the target
rows they map to. That is exact only where every target table of the group is keyed by a column
its writers copy from one source column, as is or a uuid as its text (user → user + account, a
1→2 split keyed by the user's id on both, is; a table keyed by a value computed from the source,
a uuid5 say, is not), and the column orders alike on both sides. A group that cannot be restricted is
checked whole, and a log line says so once. The last range is open-ended, so target rows above
every legacy key are checked too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.validate.insql.plan import GroupPlan, KeyRange, qualified, range_column
from transforms.sql_twins import TEXT, ident

log = logging.getLogger(__name__)

RANGE_S = 5.0  # a range is what the budget compares in this many seconds
# A resumable full run (`validate`, `--resume`) checks a group in ranges of this many rows
# (``[validation] range_rows`` when set): an interrupted run of a large table then continues
# from its last clean range. Larger than the walk's: each range of a text-keyed target table
# scans that table (its index follows the database's collation, the ranges byte order).
FULL_RANGE_ROWS = 1_000_000
_warned: set[tuple[str, ...]] = set()


@dataclass(frozen=True, slots=True)
class RangeAsk:
    """Check the range that starts after ``after`` (None: the first) and holds ``rows`` rows."""

    after: str | None
    rows: int


def range_rows(rows_per_s: float, configured: int) -> int:
    """Rows per range: the configured number, else what the budget compares in RANGE_S."""
    if configured > 0:
        return configured
    return max(1, int(rows_per_s * RANGE_S))


def range_source(plan: GroupPlan, group: list[str]) -> tuple[str, str, str] | str:
    """(legacy table, its column, category) the ranges of ``group`` are cut along: the column
    that the owner of the group's first table copies into its key; or why there is none."""
    first = plan.tables[group[0]].shape
    for source, c in plan.compiled.items():
        for t in c.writing(first.name):
            if t.patch:
                continue
            got = range_column(first, t, set(), plan.columns.get(source, {}))
            if got is None:
                return f"{first.name}: no key column is copied as is from {source}"
            return source, got.source, got.source_cat
    return f"{first.name}: no compiled owner"


def probe(
    conn: psycopg.Connection[Any], source: str, column: str, cat: str, ask: RangeAsk
) -> KeyRange:
    """The range after ``ask.after`` of ``ask.rows`` legacy rows (open-ended when fewer are
    left)."""
    bounds = KeyRange(ask.after, None, cat)
    col = f"s.{ident(column)}"
    order = f'{col} COLLATE "C"' if cat == TEXT else col
    row = conn.execute(
        f"SELECT {col}::text FROM {qualified(source)} s WHERE {bounds.pred(col, cat)}"
        f" AND {col} IS NOT NULL ORDER BY {order} OFFSET %s LIMIT 1",
        (max(0, ask.rows - 1),),
    ).fetchone()
    return KeyRange(ask.after, None if row is None else str(row[0]), cat)


def whole(group: list[str], reason: str, *, quiet: bool = False) -> None:
    """A group checked whole instead of by range: said once per process (a warning from
    continuous validation, where a pass over a large table is then one long check)."""
    if tuple(group) not in _warned:
        _warned.add(tuple(group))
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "validation checks %s whole, not by key range: %s",
            ", ".join(group),
            reason,
        )
