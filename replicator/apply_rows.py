"""The apply worker's row path: one change of an envelope → target operations (no I/O).

Rows are loaded from PostgreSQL's text form by type and handed to the table's transform. What
depends only on the relation (its table name, transform and loading plan) is worked out once per
envelope, not once per row: this is the hottest loop of apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from connectors.envelope import Envelope
from connectors.pgtypes import CANONICAL_TEXT_KEYS, RowPlan, TextLoader
from transforms.api import Direction, RowChange, TableTransform, TargetOp

_NONE: frozenset[str] = frozenset()
# How a relation's row images reach its transform: loaded by type, or as text.
_Load = Callable[[Mapping[str, str | None], RowPlan], Mapping[str, Any]]


class RowMapper:
    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        self._loader = TextLoader()
        # The relations of the envelope being mapped: relid -> (table, transform, row plan and
        # how rows load; None until the first row).
        self._env: Envelope | None = None
        self._rels: dict[int, tuple[str, TableTransform | None, tuple[RowPlan, _Load] | None]] = {}

    def relation(self, env: Envelope, relid: int) -> tuple[str, TableTransform | None]:
        """The source table a change of ``env`` belongs to, and its transform (None: unmapped)."""
        if env is not self._env:
            self._env, self._rels = env, {}
        found = self._rels.get(relid)
        if found is None:
            table = env.relations[relid].qualname
            # Planned with the first row, where a malformed relation is dead-lettered.
            found = self._rels[relid] = (table, self.direction.transform_for(table), None)
        return found[0], found[1]

    def ops(self, env: Envelope, change: Any, transform: TableTransform) -> list[TargetOp]:
        """The transform's operations for ``change`` (after :meth:`relation` for it); bad data
        raises :class:`replicator.errors.DataError`."""
        table, _, planned = self._rels[change.rel]
        rel = env.relations[change.rel]
        if planned is None:
            plan = self._loader.row_plan(rel.columns, rel.type_oids)
            # Decided once per relation: every row of a table must reach the batch in the same
            # form, or one key could be coalesced as two (text and loaded).
            key_oids = [
                o for c, o in zip(rel.columns, rel.type_oids, strict=True) if c in rel.key_columns
            ]
            as_text = transform.text_values and CANONICAL_TEXT_KEYS.issuperset(key_oids)
            load: _Load = self._loader.as_text if as_text else self._loader.load
            planned = (plan, load)
            self._rels[change.rel] = (table, transform, planned)
        plan, load = planned
        new = load(change.new, plan) if change.new is not None else None
        old = load(change.old, plan) if change.old is not None else None
        return transform(
            RowChange(
                op="insert" if change.op == "snapshot" else change.op,
                table=table,
                new=new,
                old=old,
                unchanged=frozenset(change.unchanged) if change.unchanged else _NONE,
                key_columns=rel.key_columns,
            )
        )
