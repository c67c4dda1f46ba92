"""Which source columns a mapping reads that the source relation does not have.

A column the log does not send looks, to a transform, like an unchanged TOAST value, which is
left out of the target row on purpose; a column the relation does not have at all must not look
the same (a misspelt ``amuont`` would write NULL into every new row). ``replicator check``
(against the catalog), apply (against each relation the log describes) and validation all ask
here, so they agree on what a mapping error is and name it the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass

from transforms.api import TableTransform

FIX = "fix the mapping's column names (or add the column on the source), then rerun"


@dataclass(frozen=True, slots=True)
class AbsentColumn:
    """A source column a transform needs that its source relation lacks."""

    source: str  # the source table
    column: str
    # What needs it: mapping lines ("public.items.amount") or "source_key".
    needed_by: tuple[str, ...]
    close: tuple[str, ...]  # similarly spelt columns the relation has

    @property
    def message(self) -> str:
        who = ", ".join(self.needed_by)
        if self.needed_by == ("source_key",):
            what = f"the source_key of the mapping of {self.source} names column {self.column}"
        else:
            what = f"{who} reads source column {self.source}.{self.column}"
        near = f"; did you mean {' or '.join(self.close)}?" if self.close else ""
        return f"{what}, which {self.source} does not have{near}"


def absent_columns(transform: TableTransform, columns: Collection[str]) -> list[AbsentColumn]:
    """The columns ``transform`` reads (its declared reads and its source_key) that are not in
    ``columns``, the source relation's columns; empty when reads are not declared and the key
    is there."""
    have = list(columns)
    needed: dict[str, list[str]] = {}
    for k in transform.source_key:
        if k not in columns:
            needed.setdefault(k, []).append("source_key")
    for r in transform.reads or ():
        if r.column not in columns and r.line not in needed.setdefault(r.column, []):
            needed[r.column].append(r.line)
    return [
        AbsentColumn(
            transform.source,
            col,
            tuple(by),
            tuple(difflib.get_close_matches(col, have, n=3)),
        )
        for col, by in needed.items()
    ]


def absent_reads(
    transform: TableTransform, columns: Collection[str]
) -> tuple[str, str | None, str] | None:
    """(message, first column, hint) when the relation lacks a column ``transform`` reads:
    what apply dead-letters each of that relation's rows with; None when nothing is absent."""
    absent = absent_columns(transform, columns)
    if not absent:
        return None
    message = "mapping error: " + "; ".join(a.message for a in absent)
    return (
        message,
        absent[0].column,
        "fix the mapping (`replicator check` lists such mistakes), restart apply, then "
        "`replicator dlq replay`",
    )
