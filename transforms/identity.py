"""The identity mapping: every column, same names, same table on the other side.

For tables that exist alike on both sides (or for testing the pipeline without a schema
change). The key is whatever the log reports as the relation's key (``change.key_columns``),
so one mapping serves any table; ``writes`` lists no columns, meaning "all of them".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from replicator.errors import TransformError
from transforms.api import (
    Delete,
    Direction,
    MappingSet,
    RowChange,
    TableTransform,
    TargetOp,
    TargetTable,
    Upsert,
)


def _error(
    change: RowChange, reason: str, column: str | None = None, hint: str | None = None
) -> TransformError:
    row = change.old if change.old is not None else (change.new or {})
    key = {k: row[k] for k in change.key_columns if k in row}
    return TransformError(
        f"{change.table} ({', '.join(f'{k}={v}' for k, v in key.items())}): {reason}",
        table=change.table,
        key=key,
        column=column,
        hint=hint,
    )


def _key_of(change: RowChange, row: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        return {k: row[k] for k in change.key_columns}
    except KeyError:  # a key column not sent
        return None


def identity_transform(table: str) -> TableTransform:
    def fn(change: RowChange) -> list[TargetOp]:
        if not change.key_columns:
            raise _error(
                change,
                "the relation has no key",
                hint=f"add a primary key to {table} or set REPLICA IDENTITY FULL",
            )
        if change.op == "delete":
            key = _key_of(change, change.key_row)
            if key is None:
                raise _error(change, "the delete does not carry the key")
            return [Delete(table, key)]
        if change.new is None:
            raise _error(change, f"{change.op} without a new row")
        key = _key_of(change, change.new)
        if key is None:
            raise _error(change, "a key column was not sent")
        ops: list[TargetOp] = []
        row: Mapping[str, Any] = change.new
        if change.op == "update" and change.old is not None:
            old_key = _key_of(change, change.old)
            if old_key is not None and old_key != key:
                ops.append(Delete(table, old_key))
                # The row is written anew under its new key: unsent values must come from old.
                row = {**change.old, **change.new}
                lost = sorted(change.unchanged - row.keys())
                if lost:
                    raise _error(
                        change,
                        f"the key changed and {', '.join(lost)} was not sent (unchanged TOAST)",
                        lost[0],
                        hint=f"set REPLICA IDENTITY FULL on {table}",
                    )
        # The whole row, key columns included (the same values as ``key``): the sink writes
        # key and values alike, and a copy without the key would cost a dict per row.
        ops.append(Upsert(table, key, row))
        return ops

    return TableTransform(
        table, (), fn, (TargetTable(table, (), ()),), text_values=True, copies_rows=True
    )


def identity_direction(tables: Iterable[str]) -> Direction:
    return Direction({t: identity_transform(t) for t in tables})


def identity_mapping(tables: list[str]) -> MappingSet:
    """Copy ``tables`` (schema-qualified names) as they are, in both directions."""
    bad = [t for t in tables if "." not in t]
    if bad:
        raise ValueError(f"table names must be schema-qualified (e.g. public.{bad[0]}): {bad}")
    name = "identity:" + ",".join(tables)
    return MappingSet(name, identity_direction(tables), identity_direction(tables))
