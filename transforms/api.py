"""The mapping API: pure functions from one source row change to target row operations.

A transform never touches a socket. It receives typed Python values (the apply worker loads
PostgreSQL's text form by type OID before calling it) and returns operations that the sink
executes idempotently:

- :class:`Upsert` — insert the row, or update the given columns when the key exists. Columns not
  listed are left as they are, which is how unchanged-TOAST values survive an update.
- :class:`Patch` — update the given columns of an existing row, insert nothing. This is the
  N→1 merge: a second legacy table contributes disjoint columns to a row another table owns.
- :class:`Delete` — delete by key.
- :class:`Truncate` — empty a target table.

Target keys must be derivable from the source key alone (deterministic id mapping), so a
transform needs no look-ups. A transform that cannot map a row raises
:class:`replicator.errors.TransformError`; the row goes to the dead-letter queue, the stream goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

RowOp = Literal["insert", "update", "delete", "snapshot"]


# The per-row classes (RowChange and the operations) are not frozen: one of each is made for
# every row change, and a frozen dataclass's __init__ costs twice a plain one's (a
# object.__setattr__ per field). Treat them as values all the same: transforms and the sink
# never assign to their fields.


@dataclass(slots=True)
class RowChange:
    """One source row change with typed values.

    ``new`` lacks the columns listed in ``unchanged`` (TOASTed values the source did not send).
    ``old`` holds the old key (or the whole old row under REPLICA IDENTITY FULL) for updates
    that changed the key, and for deletes.
    """

    op: RowOp
    table: str
    new: Mapping[str, Any] | None = None
    old: Mapping[str, Any] | None = None
    unchanged: frozenset[str] = frozenset()
    # The source relation's key columns, as the log reported them.
    key_columns: tuple[str, ...] = ()

    def value(self, column: str) -> Any:
        """The new value of ``column`` (KeyError if the column is unchanged or absent)."""
        assert self.new is not None, "delete has no new row"
        return self.new[column]

    def has(self, column: str) -> bool:
        """Whether ``column`` has a new value (False for unchanged-TOAST and deletes)."""
        return self.new is not None and column in self.new

    @property
    def key_row(self) -> Mapping[str, Any]:
        """The row that carries the key: the old key when present, else the new row."""
        row = self.old if self.old is not None else self.new
        assert row is not None
        return row


@dataclass(slots=True)
class Upsert:
    """``insert_only`` columns are written when the row is inserted and never overwritten:
    a surrogate id derived for rows the source creates, which must not replace the id of a
    row the other side created (a credential account signed up on the target).

    ``values`` may repeat the key columns with the key's values (the identity hands over the
    whole row rather than copy it without them)."""

    table: str
    key: Mapping[str, Any]
    values: Mapping[str, Any] = field(default_factory=dict)
    insert_only: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Patch:
    table: str
    key: Mapping[str, Any]
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Delete:
    table: str
    key: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Truncate:
    table: str


TargetOp = Upsert | Patch | Delete | Truncate
TransformFn = Callable[[RowChange], list[TargetOp]]


@dataclass(frozen=True, slots=True)
class TargetTable:
    """What a mapping writes into one target table (``check`` and ``validate`` read this)."""

    name: str
    key: tuple[str, ...]
    columns: tuple[str, ...]
    # Set on insert only (see Upsert.insert_only): produced, but not determined by the source
    # for rows the other side created, so validation does not compare them.
    insert_only: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ColumnRead:
    """A source column a transform reads, and the mapping line that reads it (``check`` names
    both when the source relation lacks the column; apply refuses such a relation's rows)."""

    column: str
    # The target table and column computed from it (``target_column`` None: read to decide
    # something else, e.g. which rows a target takes).
    table: str
    target_column: str | None = None

    @property
    def line(self) -> str:
        """The mapping line, as an operator finds it in the mapping module."""
        if self.target_column is None:
            return f"the mapping of {self.table}"
        return f"{self.table}.{self.target_column}"


@dataclass(frozen=True, slots=True)
class TableTransform:
    """The transform for one source table, and what it writes."""

    source: str
    source_key: tuple[str, ...]
    fn: TransformFn
    writes: tuple[TargetTable, ...]
    # Every source column the transform reads (None: not declared, e.g. the identity, which
    # copies whatever the relation has). A column of this list that the source relation lacks
    # is a mapping error, never a NULL: ``check`` refuses it, apply dead-letters the relation's
    # rows, validation reports it.
    reads: tuple[ColumnRead, ...] | None = None
    # The transform takes the log's text forms as they are (it copies values, never reads
    # them): apply then skips loading them into Python values when the relation's key types
    # have one text form per value (connectors.pgtypes.CANONICAL_TEXT_KEYS).
    text_values: bool = False
    # An insert becomes an upsert of the same row into the table of the same name, keyed by
    # the relation's key (the identity): apply puts such rows into its batch without calling
    # ``fn``. Everything else (updates, deletes, a row without its key) still goes to ``fn``.
    copies_rows: bool = False
    # What the transform was declared from (transforms.declarative.Declared), when it was
    # declared rather than written as a function: transforms.compile reads it to build SQL.
    declared: Any = None

    def __call__(self, change: RowChange) -> list[TargetOp]:
        return self.fn(change)


@dataclass(frozen=True, slots=True)
class SequenceSync:
    """A sequence on the direction's target side to set past the values in use on its source
    side, when the target side becomes the writer (cutover; the reverse direction's at rollback).

    Each side is a table and column, or a sequence by name:

    - source side: ``table``/``column`` (the highest value in use), and/or ``source_sequence``
      (its current value: covers ids handed out and then deleted); at least one;
    - target side: ``target_table``/``target_column`` (default: the source's names; the
      sequence is the one the column owns, ``serial`` or identity), or ``target_sequence`` (a
      sequence by name; the target table and column, if also given, are read for their
      highest value as well).

    ``SequenceSync("public.item", "id")`` is the same table and column on both sides;
    ``SequenceSync("public.item", "id", target_table="public.items")`` a renamed table.
    Names are schema-qualified (``public.item``, ``public.item_id_seq``).
    """

    table: str | None = None
    column: str | None = None
    target_table: str | None = None
    target_column: str | None = None
    source_sequence: str | None = None
    target_sequence: str | None = None

    def __post_init__(self) -> None:
        if (self.table is None) != (self.column is None):
            raise ValueError("SequenceSync: give the source table and column together")
        if self.table is None and self.source_sequence is None:
            raise ValueError("SequenceSync: name the source table and column, or source_sequence")
        if self.target_sequence is None:
            # The target side defaults to the source's names (a table kept as it was).
            if self.target_table is None:
                object.__setattr__(self, "target_table", self.table)
            if self.target_column is None:
                object.__setattr__(self, "target_column", self.column)
            if self.target_table is None or self.target_column is None:
                raise ValueError(
                    "SequenceSync: name the target table and column, or target_sequence"
                )
        elif (self.target_table is None) != (self.target_column is None):
            raise ValueError("SequenceSync: give the target table and column together")

    def reversed(self) -> SequenceSync:
        """The same sequence seen from the other direction (for the rollback's mapping)."""
        return SequenceSync(
            self.target_table,
            self.target_column,
            self.table,
            self.column,
            source_sequence=self.target_sequence,
            target_sequence=self.source_sequence,
        )

    @property
    def described(self) -> str:
        src = self.source_sequence or f"{self.table}.{self.column}"
        dst = self.target_sequence or f"{self.target_table}.{self.target_column}"
        return f"sequence sync {src} -> {dst}"


@dataclass(frozen=True, slots=True)
class Direction:
    """Every table transform of one direction (forward: legacy → target; reverse: back)."""

    tables: Mapping[str, TableTransform]
    # Source tables that exist on this side but have no counterpart (filtered, never an error).
    ignored: frozenset[str] = frozenset()
    # Target sequences to set past the source values at the switch.
    sequences: tuple[SequenceSync, ...] = ()

    def transform_for(self, source_table: str) -> TableTransform | None:
        return self.tables.get(source_table)

    @property
    def source_tables(self) -> list[str]:
        return list(self.tables)

    @property
    def target_tables(self) -> dict[str, TargetTable]:
        out: dict[str, TargetTable] = {}
        for t in self.tables.values():
            for w in t.writes:
                prev = out.get(w.name)
                cols = w.columns if prev is None else tuple(dict.fromkeys(prev.columns + w.columns))
                only = (
                    w.insert_only
                    if prev is None
                    else tuple(dict.fromkeys(prev.insert_only + w.insert_only))
                )
                out[w.name] = TargetTable(w.name, w.key, cols, only)
        return out


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column as a schema defines it (``replicator check`` compares these)."""

    type: str
    not_null: bool = False
    has_default: bool = False
    # A generated column: logical replication (PostgreSQL 15) does not send its values.
    generated: bool = False


# table ("public.user") -> column -> spec
Catalog = Mapping[str, Mapping[str, ColumnSpec]]


@dataclass(frozen=True, slots=True)
class MappingSet:
    """A named migration: the forward direction and its reverse for rollback."""

    name: str
    forward: Direction
    reverse: Direction
    # The target schema the forward mapping was written against (e.g. a Drizzle snapshot):
    # ``check`` reports live columns whose type differs from it. None: types are not checked.
    expected_target: Callable[[], Catalog] | None = None
    # How to create the target schema, when the mapping ships a tool for it (the MCP mapping:
    # drizzle-kit migrate). None: ``check`` suggests the DDL of a missing table instead.
    target_schema_hint: str | None = None
