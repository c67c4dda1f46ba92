"""The raw change envelope carried by Kafka (ARCHITECTURE.md section 3).

One Kafka message holds one source transaction, or one slice of a large one. Values stay in
PostgreSQL's text form with the relation's column names and type OIDs, so the log is a faithful
record of the source and transforms can be changed and replayed without a new capture.

Wire form (orjson)::

    {v, origin, xid, commit_lsn, commit_ts, seq, last,
     relations: {relid: {schema, table, columns, type_oids, key_columns}},
     changes: [[op, rel, values] | {op, rel, new, old, unchanged, part}],
     control: {kind, ...}            # heartbeats and markers only; changes is then empty
    }

A change whose new row carries every column and which has no old image (most inserts and
updates, every snapshot row) is a list: ``values`` in the relation's column order. Others are
an object: ``new``/``old`` map column name to text value (``None`` is SQL NULL), and a TOASTed
column that pgoutput reported as unchanged is absent from ``new`` and listed in ``unchanged``:
a third state beside a value and NULL. ``part`` ("old" or "new", absent otherwise) marks the two
copies of a key change that scale-out routed to two partitions. Version 1 had objects only;
both are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from replicator.errors import MalformedMessage

ENVELOPE_VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})

Op = Literal["insert", "update", "delete", "truncate", "snapshot"]
OPS: frozenset[str] = frozenset({"insert", "update", "delete", "truncate", "snapshot"})
ROW_OPS: frozenset[str] = frozenset({"insert", "update", "snapshot"})  # may be a list on the wire
_PARTS = frozenset({None, "old", "new"})  # a change's ``part``: whole, or a half of a key change
_NO_COLUMNS: list[str] = []  # the unchanged columns of most changes: shared, never mutated


@dataclass(frozen=True, slots=True)
class RelationInfo:
    schema: str
    table: str
    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    key_columns: tuple[str, ...]
    # values in column order -> {column: value}; see _row_builder.
    row: Callable[[Sequence[str | None]], dict[str, str | None]] = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "row", _row_builder(self.columns))

    @property
    def qualname(self) -> str:
        return f"{self.schema}.{self.table}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "columns": list(self.columns),
            "type_oids": list(self.type_oids),
            "key_columns": list(self.key_columns),
        }


_BUILDERS: dict[tuple[str, ...], Callable[[Sequence[str | None]], dict[str, str | None]]] = {}


def _row_builder(
    columns: tuple[str, ...],
) -> Callable[[Sequence[str | None]], dict[str, str | None]]:
    """A function from a row's values in column order to the row by column name.

    Compiled once per column list into a dict display (``lambda v: {'id': v[0], ...}``): three
    times as fast as ``dict(zip(columns, v))``, and every positional row becomes a dict once
    in apply. The source is made only of ``repr`` of the column names (string literals) and
    indexes, so no column name can be more than a key."""
    found = _BUILDERS.get(columns)
    if found is None:
        if len(_BUILDERS) >= 10_000:  # as many table shapes only from a log gone wrong
            _BUILDERS.clear()
        plain = all(type(c) is str for c in columns) and len(set(columns)) == len(columns)
        if not plain or len(columns) > 1000:
            found = lambda v: dict(zip(columns, v, strict=True))  # noqa: E731
        else:
            body = ", ".join(f"{c!r}: v[{i}]" for i, c in enumerate(columns))
            found = eval(f"lambda v: {{{body}}}")  # see the docstring
        _BUILDERS[columns] = found
    return found


class Change:
    """One row change (or a truncate) of an envelope.

    A complete new row without an old image may be held positionally (``values``, in the
    relation's ``columns`` order): the capture and the backfill make their rows this way and
    the wire keeps them so (a list per row, not an object), and ``new`` is built from them on
    first use. Hand-written rather than a dataclass for that lazy ``new``.
    """

    __slots__ = ("_new", "_relation", "_values", "old", "op", "part", "rel", "unchanged")

    def __init__(
        self,
        op: str,
        rel: int,
        new: dict[str, str | None] | None = None,
        old: dict[str, str | None] | None = None,
        unchanged: list[str] | None = None,
        *,
        values: Sequence[str | None] | None = None,
        relation: RelationInfo | None = None,
        part: str | None = None,
    ) -> None:
        self.op = op
        # A key change split over two partitions (scale-out): "old" applies what becomes of the
        # old key, "new" the rest (replicator.capture routes, replicator.apply.rows splits).
        self.part = part
        self.rel = rel
        self._new = new
        self.old = old
        self.unchanged: list[str] = _NO_COLUMNS if unchanged is None else unchanged
        self._values = values
        self._relation = relation  # whose columns ``values`` follow

    @property
    def new(self) -> dict[str, str | None] | None:
        if self._new is None and self._values is not None:
            assert self._relation is not None, "positional values need their relation"
            self._new = self._relation.row(self._values)
        return self._new

    @property
    def values(self) -> Sequence[str | None] | None:
        """The new row in column order, when the change was made (or read) that way."""
        return self._values

    def text_size(self) -> int:
        """Characters of the new row's values (what a slice's byte limit counts)."""
        row = self._values if self._values is not None else (self._new or {}).values()
        return sum(map(len, filter(None, row)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Change):
            return NotImplemented
        return (self.op, self.rel, self.new, self.old, list(self.unchanged), self.part) == (
            other.op,
            other.rel,
            other.new,
            other.old,
            list(other.unchanged),
            other.part,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Change(op={self.op!r}, rel={self.rel!r}, new={self.new!r}, old={self.old!r}, "
            f"unchanged={self.unchanged!r}"
            + (f", part={self.part!r})" if self.part is not None else ")")
        )

    def to_wire(self) -> dict[str, Any]:
        """The object form (dead letters keep this one: every value named by its column)."""
        out: dict[str, Any] = {"op": self.op, "rel": self.rel}
        if self.new is not None:
            out["new"] = self.new
        if self.old is not None:
            out["old"] = self.old
        if self.unchanged:
            out["unchanged"] = self.unchanged
        if self.part is not None:
            out["part"] = self.part
        return out

    def wire(self) -> list[Any] | dict[str, Any]:
        """The form an envelope carries: a list for a positional row, else the object."""
        if self._values is not None and self.old is None and not self.unchanged and not self.part:
            return [self.op, self.rel, self._values]
        return self.to_wire()


@dataclass(slots=True)
class Envelope:
    """One source transaction (or slice), or one control message."""

    origin: str
    xid: int
    commit_lsn: int
    commit_ts: str | None
    seq: int = 0
    last: bool = True
    relations: dict[int, RelationInfo] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    control: dict[str, Any] | None = None

    @property
    def is_control(self) -> bool:
        return self.control is not None

    def encode(self) -> bytes:
        doc: dict[str, Any] = {
            "v": ENVELOPE_VERSION,
            "origin": self.origin,
            "xid": self.xid,
            "commit_lsn": self.commit_lsn,
            "commit_ts": self.commit_ts,
            "seq": self.seq,
            "last": self.last,
            "relations": {str(k): r.to_wire() for k, r in self.relations.items()},
            "changes": [c.wire() for c in self.changes],
        }
        if self.control is not None:
            doc["control"] = self.control
        return orjson.dumps(doc)


def group_envelopes(encoded: list[bytes]) -> bytes:
    """One message value for several whole transactions' envelopes (a JSON array of them),
    so that a backlog of small transactions costs one Kafka message, not one each."""
    if len(encoded) == 1:
        return encoded[0]
    return b"[" + b",".join(encoded) + b"]"


def decode_envelopes(data: bytes) -> list[Envelope]:
    """Parse a Kafka message value: one envelope, or a group of them (in commit order).
    Anything malformed raises :class:`MalformedMessage`."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"change envelope is not JSON: {exc}") from None
    if type(doc) is list and doc:
        return [_envelope(d) for d in doc]
    return [_envelope(doc)]


def decode_envelope(data: bytes) -> Envelope:
    """Parse a Kafka message value that holds one envelope (tests, tools)."""
    envs = decode_envelopes(data)
    if len(envs) != 1:
        raise MalformedMessage(f"expected one envelope, the message holds {len(envs)}")
    return envs[0]


def _envelope(doc: Any) -> Envelope:
    try:
        if not isinstance(doc, dict) or doc.get("v") not in READABLE_VERSIONS:
            raise MalformedMessage(
                f"unsupported envelope version {doc.get('v') if isinstance(doc, dict) else None!r}"
            )
        relations = {int(k): _relation(r) for k, r in doc["relations"].items()}
        # The hottest loop of apply's parsing: one pass, positional construction, the checks
        # that keep a malformed change out of the transforms and nothing more.
        changes: list[Change] = []
        append = changes.append
        for c in doc["changes"]:
            if type(c) is list:
                op, rel, values = c
                if op not in ROW_OPS:
                    raise MalformedMessage(f"change op {op!r} cannot be a row of values")
                info = relations.get(rel)
                if info is None:
                    raise MalformedMessage(f"change refers to relation {rel} not in the envelope")
                if type(values) is not list or len(values) != len(info.columns):
                    raise MalformedMessage(
                        f"a row of {info.qualname} is not a list of {len(info.columns)} values"
                    )
                append(Change(op, rel, values=values, relation=info))
                continue
            op = c["op"]
            if op not in OPS:
                raise MalformedMessage(f"unknown change op {op!r}")
            rel = c["rel"]
            if rel not in relations:
                rel = int(rel)  # a relid written as a string
                if rel not in relations:
                    raise MalformedMessage(f"change refers to relation {rel} not in the envelope")
            unchanged = c.get("unchanged")
            part = c.get("part")
            if part not in _PARTS:
                raise MalformedMessage(f"unknown part {part!r} of a split key change")
            append(
                Change(
                    op,
                    rel,
                    c.get("new"),
                    c.get("old"),
                    list(unchanged) if unchanged else None,
                    part=part,
                )
            )
        return Envelope(
            origin=str(doc["origin"]),
            xid=int(doc["xid"]),
            commit_lsn=int(doc["commit_lsn"]),
            commit_ts=doc.get("commit_ts"),
            seq=int(doc.get("seq", 0)),
            last=bool(doc.get("last", True)),
            relations=relations,
            changes=changes,
            control=doc.get("control"),
        )
    except MalformedMessage:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedMessage(f"change envelope is missing or mistypes a field: {exc!r}") from None


# Relations as read, by their wire form: every envelope repeats its relations, and building
# them anew per message was a tenth of apply's CPU under TPC-B (one transaction a message).
# Shared, they are also the same objects from one envelope to the next.
_RELATIONS: dict[tuple[Any, ...], RelationInfo] = {}


def _relation(r: Any) -> RelationInfo:
    try:
        wire = (
            r["schema"],
            r["table"],
            tuple(r["columns"]),
            tuple(r["type_oids"]),
            tuple(r["key_columns"]),
        )
        found = _RELATIONS.get(wire)
    except TypeError:  # an unhashable value: checked (and refused) below
        wire, found = None, None
    if found is None:
        found = RelationInfo(
            schema=r["schema"],
            table=r["table"],
            columns=_names(r["columns"]),
            type_oids=tuple(int(o) for o in r["type_oids"]),
            key_columns=_names(r["key_columns"]),
        )
        if wire is not None:
            if len(_RELATIONS) >= 10_000:  # as many table shapes only from a log gone wrong
                _RELATIONS.clear()
            _RELATIONS[wire] = found
    return found


def _names(names: Any) -> tuple[str, ...]:
    out = tuple(names)
    if not all(type(n) is str for n in out):
        raise MalformedMessage(f"column names that are not all text: {out!r:.200}")
    return out


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    try:
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise MalformedMessage(f"not an LSN: {text!r}") from None
