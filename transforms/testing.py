"""Test helpers for mapping authors: a direction's operations applied to tables in memory.

The rule every mapping keeps is that it is reversible: legacy rows taken forward and then back
are the rows we started from. :class:`InMemoryStore` is the database such a test needs: tables
shared by every source table of a direction (an N→1 merge patches a row another table wrote),
written the way the sink writes them:

- ``Upsert`` inserts key + values + insert-only columns, or updates ``values`` of an existing
  row (insert-only columns are never overwritten);
- ``Patch`` updates an existing row and does nothing when the row is not there;
- ``Delete`` removes the row; ``Truncate`` empties the table.

A round-trip property test, with hypothesis generating ``rows`` (source table → rows)::

    legacy = InMemoryStore.of(MAPPING.reverse, rows)      # the rows as they are
    target = InMemoryStore().load(MAPPING.forward, rows)  # forward, as a backfill writes them
    back = InMemoryStore().load(MAPPING.reverse, target.all_rows(TARGET_COLUMNS))
    assert back == legacy

Pure Python, no database: the same semantics as :mod:`connectors.pgsink` for one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transforms.api import Delete, Direction, Patch, RowChange, TargetOp, Truncate, Upsert

Key = tuple[tuple[str, Any], ...]


def key_of(key: Mapping[str, Any]) -> Key:
    """A target key as a hashable value, independent of the order of its columns."""
    return tuple(sorted(key.items()))


class InMemoryStore:
    """Tables of rows by key; see the module's docstring for how each operation writes."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Key, dict[str, Any]]] = {}

    @classmethod
    def of(
        cls, direction: Direction, rows: Mapping[str, Iterable[Mapping[str, Any]]]
    ) -> InMemoryStore:
        """The store holding ``rows`` as they are, keyed by the ``source_key`` of the tables'
        transforms in ``direction`` (the rows a round trip must come back to: pass the direction
        that writes these tables, e.g. the reverse one for legacy rows)."""
        store = cls()
        for table, table_rows in rows.items():
            keys = _writer_key(direction, table)
            for r in table_rows:
                store.table(table)[key_of({k: r[k] for k in keys})] = dict(r)
        return store

    def table(self, name: str) -> dict[Key, dict[str, Any]]:
        return self.tables.setdefault(name, {})

    # -- writing ---------------------------------------------------------------------------------

    def apply(self, ops: Iterable[TargetOp]) -> None:
        """Apply ``ops`` in order."""
        for op in ops:
            self._apply(op)

    def _apply(self, op: TargetOp) -> None:
        if isinstance(op, Truncate):
            self.tables.pop(op.table, None)
            return
        rows = self.table(op.table)
        k = key_of(op.key)
        if isinstance(op, Upsert):
            row = rows.get(k)
            if row is None:
                rows[k] = {**op.insert_only, **op.values, **op.key}
            else:
                row.update(op.values)
                row.update(op.key)
        elif isinstance(op, Patch):
            row = rows.get(k)
            if row is not None:
                row.update(op.values)
        elif isinstance(op, Delete):
            rows.pop(k, None)
        else:  # pragma: no cover - TargetOp is closed
            raise TypeError(f"not a target operation: {op!r}")

    def apply_change(self, direction: Direction, change: RowChange) -> list[TargetOp]:
        """Run ``change`` through its table's transform in ``direction`` and apply the ops
        (returned, for assertions). A table the direction does not map is an error."""
        t = direction.transform_for(change.table)
        if t is None:
            if change.table in direction.ignored:
                return []
            raise KeyError(f"no transform for {change.table} in this direction")
        ops = t(change)
        self.apply(ops)
        return ops

    def run(self, direction: Direction, changes: Iterable[RowChange]) -> InMemoryStore:
        """Apply each change, one after the other (a stream of changes); returns the store."""
        for change in changes:
            self.apply_change(direction, change)
        return self

    def load(
        self, direction: Direction, rows: Mapping[str, Iterable[Mapping[str, Any]]]
    ) -> InMemoryStore:
        """Every row as an insert, as a backfill loads them: patches (N→1 merges) after every
        upsert and delete, as the sink writes a batch, so the order of the tables does not
        matter. Key columns are each table's ``source_key``. Returns the store."""
        patches: list[TargetOp] = []
        for table, table_rows in rows.items():
            t = direction.transform_for(table)
            if t is None:
                if table in direction.ignored:
                    continue
                raise KeyError(f"no transform for {table} in this direction")
            for r in table_rows:
                ops = t(RowChange("insert", table, new=dict(r), key_columns=t.source_key))
                self.apply(op for op in ops if not isinstance(op, Patch))
                patches.extend(op for op in ops if isinstance(op, Patch))
        self.apply(patches)
        return self

    # -- reading ---------------------------------------------------------------------------------

    def rows(self, table: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The rows of ``table`` in key order; with ``columns``, each has exactly those (NULL
        where nothing wrote one), as a row change of that table would carry them."""
        found = self.tables.get(table, {})
        out = [found[k] for k in sorted(found, key=repr)]
        if columns is None:
            return [dict(r) for r in out]
        for r in out:
            unknown = set(r) - set(columns)
            if unknown:
                raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
        return [{c: r.get(c) for c in columns} for r in out]

    def all_rows(
        self, columns: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Every table's rows (see :meth:`rows`), the input of the other direction's load.
        With ``columns`` (table → its columns), tables nothing wrote are included, empty."""
        names = set(self.tables) | set(columns or {})
        return {t: self.rows(t, (columns or {}).get(t)) for t in sorted(names)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InMemoryStore):
            return NotImplemented
        return self._content() == other._content()

    __hash__ = None  # type: ignore[assignment]

    def _content(self) -> dict[str, dict[Key, dict[str, Any]]]:
        return {t: rows for t, rows in self.tables.items() if rows}

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables.values())

    def __repr__(self) -> str:
        return f"InMemoryStore({self._content()!r})"


def _writer_key(direction: Direction, table: str) -> tuple[str, ...]:
    """The key of ``table`` as the direction's transforms write it (its first writer's
    declared key), or the table's own ``source_key`` when it is one of the direction's
    sources."""
    for t in direction.tables.values():
        for w in t.writes:
            if w.name == table and w.key:
                return w.key
    own = direction.transform_for(table)
    if own is not None and own.source_key:
        return own.source_key
    raise KeyError(f"no key known for {table}: it is neither written nor read by the direction")
