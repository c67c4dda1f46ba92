"""The raw change envelope carried by Kafka (ARCHITECTURE.md section 3).

One Kafka message holds one source transaction, or one slice of a large one. Values stay in
PostgreSQL's text form with the relation's column names and type OIDs, so the log is a faithful
record of the source and transforms can be changed and replayed without a new capture.

Wire form (orjson)::

    {v, origin, xid, commit_lsn, commit_ts, seq, last,
     relations: {relid: {schema, table, columns, type_oids, key_columns}},
     changes: [{op, rel, new, old, unchanged}],
     control: {kind, ...}            # heartbeats and markers only; changes is then empty
    }

``new``/``old`` map column name to text value (``None`` is SQL NULL). A TOASTed column that
pgoutput reported as unchanged is absent from ``new`` and listed in ``unchanged``: a third state
beside a value and NULL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from replicator.errors import MalformedMessage

ENVELOPE_VERSION = 1

Op = Literal["insert", "update", "delete", "truncate", "snapshot"]
OPS: frozenset[str] = frozenset({"insert", "update", "delete", "truncate", "snapshot"})


@dataclass(frozen=True, slots=True)
class RelationInfo:
    schema: str
    table: str
    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    key_columns: tuple[str, ...]

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


@dataclass(slots=True)
class Change:
    op: str
    rel: int
    new: dict[str, str | None] | None = None
    old: dict[str, str | None] | None = None
    unchanged: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "rel": self.rel}
        if self.new is not None:
            out["new"] = self.new
        if self.old is not None:
            out["old"] = self.old
        if self.unchanged:
            out["unchanged"] = self.unchanged
        return out


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
            "changes": [c.to_wire() for c in self.changes],
        }
        if self.control is not None:
            doc["control"] = self.control
        return orjson.dumps(doc)


def decode_envelope(data: bytes) -> Envelope:
    """Parse a Kafka message value; anything malformed raises :class:`MalformedMessage`."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"change envelope is not JSON: {exc}") from None
    try:
        if not isinstance(doc, dict) or doc.get("v") != ENVELOPE_VERSION:
            raise MalformedMessage(
                f"unsupported envelope version {doc.get('v') if isinstance(doc, dict) else None!r}"
            )
        relations = {
            int(k): RelationInfo(
                schema=r["schema"],
                table=r["table"],
                columns=tuple(r["columns"]),
                type_oids=tuple(int(o) for o in r["type_oids"]),
                key_columns=tuple(r["key_columns"]),
            )
            for k, r in doc["relations"].items()
        }
        changes = []
        for c in doc["changes"]:
            if c["op"] not in OPS:
                raise MalformedMessage(f"unknown change op {c['op']!r}")
            rel = int(c["rel"])
            if rel not in relations:
                raise MalformedMessage(f"change refers to relation {rel} not in the envelope")
            changes.append(
                Change(
                    op=c["op"],
                    rel=rel,
                    new=c.get("new"),
                    old=c.get("old"),
                    unchanged=list(c.get("unchanged", ())),
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


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    try:
        return (int(hi, 16) << 32) | int(lo, 16)
    except ValueError:
        raise MalformedMessage(f"not an LSN: {text!r}") from None
