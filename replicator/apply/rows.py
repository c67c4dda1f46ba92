"""The apply worker's row path: one change of an envelope → target operations (no I/O).

Rows are loaded from PostgreSQL's text form by type and handed to the table's transform. What
depends only on the relation (its table name, transform and loading plan) is worked out once per
envelope, not once per row: this is the hottest loop of apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connectors.envelope import Change, Envelope, RelationInfo
from connectors.pgsink import Batch
from connectors.pgtypes import CANONICAL_TEXT_KEYS, RowPlan, TextLoader
from replicator.errors import DataError, TransformError
from transforms.api import Delete, Direction, RowChange, TableTransform, TargetOp
from transforms.reads import absent_reads

_NONE: frozenset[str] = frozenset()
_COPIED_OPS = frozenset({"insert", "snapshot"})
_TEXT = frozenset({str, type(None)})
# How a relation's row images reach its transform: loaded by type, or as text.
_Load = Callable[[Mapping[str, str | None], RowPlan], Mapping[str, Any]]


class _Relation:
    """One relation of the envelope being mapped: its table and transform, and (from its first
    row on) the row plan and how rows load."""

    __slots__ = ("build", "key_at", "key_columns", "load", "plan", "table", "text", "transform")

    def __init__(self, table: str, transform: TableTransform | None, key: tuple[str, ...]) -> None:
        self.table = table
        self.transform = transform
        self.key_columns = key
        self.plan: RowPlan | None = None
        self.load: _Load | None = None
        # Rows stay text; a positional row's key columns are at these indexes (empty: none or
        # not all of them are columns); values in column order -> row.
        self.text = False
        self.key_at: tuple[int, ...] = ()
        self.build: Callable[[Sequence[str | None]], dict[str, str | None]] | None = None


def _refuse(reason: tuple[str, str | None, str], key_columns: tuple[str, ...]) -> _Load:
    message, column, hint = reason

    def refuse(row: Mapping[str, str | None], plan: RowPlan) -> Mapping[str, Any]:
        key: dict[str, object] = {k: row[k] for k in key_columns if k in row}
        raise TransformError(message, key=key, column=column, hint=hint)

    return refuse


class RowMapper:
    def __init__(
        self,
        direction: Direction,
        on_relation: Callable[[Envelope, RelationInfo], None] | None = None,
    ) -> None:
        self.direction = direction
        # Told of each relation once per envelope: replicator.drift's fallback sees a changed
        # column list there when no DDL record came (no event trigger on the source).
        self.on_relation = on_relation
        self._loader = TextLoader()
        self._env: Envelope | None = None
        self._rels: dict[int, _Relation] = {}  # the relations of the envelope being mapped
        # Plans outlive their envelope: most envelopes hold one small transaction, and planning
        # every relation anew in each was a tenth of apply's CPU under TPC-B. A relation that
        # changed (a column added, a type changed) is another key, so it is planned afresh.
        self._known: dict[tuple[int, RelationInfo], _Relation] = {}
        # Per source table and column list: what the mapping reads that the relation lacks
        # (the answer changes only with the relation).
        self._absent: dict[tuple[str, tuple[str, ...]], tuple[str, str | None, str] | None] = {}

    def relation(self, env: Envelope, relid: int) -> tuple[str, TableTransform | None]:
        """The source table a change of ``env`` belongs to, and its transform (None: unmapped)."""
        if env is not self._env:
            self._env, self._rels = env, {}
        found = self._rels.get(relid)
        if found is None:
            info = env.relations[relid]
            if self.on_relation is not None:
                self.on_relation(env, info)
            found = self._known.get((relid, info))
            if found is None:
                if len(self._known) > 1_000:  # bounded: relations come from the log
                    self._known.clear()
                table = info.qualname
                # Planned with the first row, where a malformed relation is dead-lettered.
                found = self._known[relid, info] = _Relation(
                    table, self.direction.transform_for(table), info.key_columns
                )
            self._rels[relid] = found
        return found.table, found.transform

    def _plan(self, env: Envelope, relid: int, r: _Relation, transform: TableTransform) -> None:
        info = env.relations[relid]
        r.plan = self._loader.row_plan(info.columns, info.type_oids)
        seen = (r.table, info.columns)
        if seen not in self._absent:
            if len(self._absent) > 1_000:  # bounded: relations come from the log
                self._absent.clear()
            self._absent[seen] = absent_reads(transform, info.columns)
        refusal = self._absent[seen]
        if refusal is not None:
            # The mapping reads a column this relation does not have (a misspelt name, or one
            # dropped on the source): every row of it is refused with the reason, none is
            # written with that column NULL. Loading is where every row passes.
            r.load = _refuse(refusal, r.key_columns)
            return
        # Decided once per relation: every row of a table must reach the batch in the same
        # form, or one key could be coalesced as two (text and loaded).
        key_oids = [
            o for c, o in zip(info.columns, info.type_oids, strict=True) if c in info.key_columns
        ]
        as_text = transform.text_values and CANONICAL_TEXT_KEYS.issuperset(key_oids)
        r.load = self._loader.as_text if as_text else self._loader.load
        r.text = as_text
        if set(info.key_columns) <= set(info.columns):
            r.key_at = tuple(info.columns.index(k) for k in info.key_columns)
        r.build = info.row

    def copy_into(
        self, env: Envelope, change: Change, transform: TableTransform, batch: Batch
    ) -> bool:
        """Put an insert of a row-copying transform (``TableTransform.copies_rows``) straight
        into ``batch``, as its ``fn`` would have, minus the objects made in between: the bulk of
        a large load. False: not such a change (call :meth:`ops`)."""
        if not transform.copies_rows or change.op not in _COPIED_OPS:
            return False
        r = self._rels[change.rel]
        if r.load is None:
            self._plan(env, change.rel, r, transform)
        values = change.values
        if values is not None and r.text and r.key_at and _TEXT.issuperset(map(type, values)):
            # A whole text row in column order (most of a bulk load): one dict, made for the
            # batch, and its key read by position.
            at = r.key_at
            key = (values[at[0]],) if len(at) == 1 else tuple([values[i] for i in at])
            assert r.build is not None
            batch.put(r.table, r.key_columns, key, r.build(values), owned=True)
            return True
        if change.new is None:
            return False
        load, plan = r.load, r.plan
        assert load is not None and plan is not None
        row = load(change.new, plan)
        try:
            key = tuple([row[k] for k in r.key_columns])
        except KeyError:
            return False  # a key column not sent: fn says so
        if not key:
            return False  # no key: fn says so
        batch.put(r.table, r.key_columns, key, row)
        return True

    def ops(self, env: Envelope, change: Change, transform: TableTransform) -> list[TargetOp]:
        """The transform's operations for ``change`` (after :meth:`relation` for it); bad data
        raises :class:`replicator.errors.DataError`."""
        r = self._rels[change.rel]
        if r.load is None:
            self._plan(env, change.rel, r, transform)
        load, plan = r.load, r.plan
        assert load is not None and plan is not None
        new, old, op = change.new, change.old, change.op
        old_row = None if old is None else load(old, plan)
        ops = transform.fn(
            RowChange(
                "insert" if op == "snapshot" else op,  # type: ignore[arg-type]
                r.table,
                None if new is None else load(new, plan),
                old_row,
                frozenset(change.unchanged) if change.unchanged else _NONE,
                r.key_columns,
            )
        )
        if change.part is None or old_row is None:
            return ops
        gone = RowChange("delete", r.table, None, old_row, _NONE, r.key_columns)
        return _half(ops, transform, gone, change.part)


def _half(
    ops: list[TargetOp], transform: TableTransform, gone: RowChange, part: str
) -> list[TargetOp]:
    """One half of a key change that scale-out routed to two partitions (replicator.capture):
    "old" gets what becomes of the old key — the operations the transform also makes of the
    old row's delete — and "new" the rest. Each target row is then written only on the
    partition that carries its source row's other changes, in their order."""
    try:
        removal = transform.fn(gone)
    except DataError:
        removal = []  # the old row names no target row of its own: nothing is removed
    old: list[TargetOp] = []
    rest: list[TargetOp] = []
    for op in ops:
        if op in removal:
            removal.remove(op)
            old.append(op)
        else:
            rest.append(op)
    return old if part == "old" else rest


def repair_delete(direction: Direction, control: Mapping[str, Any]) -> Delete:
    """A repair's delete of a row that validation found with no source row (a control message
    on the snapshot topic, after the repair's marker: replicator.validate.repair). Only a
    mapped table's row; anything else is refused, to the dead-letter queue."""
    table, key = control.get("table"), control.get("key")
    if table not in direction.target_tables or not isinstance(key, dict) or not key:
        raise DataError(
            f"a repair asked to delete a row of {table!r}, which is not a mapped table",
            table=str(table),
            hint="nothing was deleted; `replicator validate --repair` deletes rows of mapped tables only",
        )
    # The sink deletes by the columns named: a part of the key would delete every row sharing it.
    wanted = direction.target_tables[table].key
    if set(key) != set(wanted):
        raise DataError(
            f"a repair asked to delete a row of {table} by {sorted(key)}, not by its key {list(wanted)}",
            table=str(table),
            hint="nothing was deleted; validate again and repair that row by hand",
        )
    return Delete(str(table), key)


def exclusive_targets(direction: Direction) -> dict[str, list[str]]:
    """Source table -> target tables it alone writes (safe to truncate with it)."""
    writers: dict[str, int] = {}
    for t in direction.tables.values():
        for w in t.writes:
            writers[w.name] = writers.get(w.name, 0) + 1
    return {
        src: [w.name for w in t.writes if writers[w.name] == 1]
        for src, t in direction.tables.items()
    }
