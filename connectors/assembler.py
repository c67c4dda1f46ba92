"""Transaction assembly: decoded pgoutput messages in, change envelopes out (no network I/O).

A source transaction becomes one envelope, or several slices (``seq`` 0, 1, … with ``last`` on
the final one) when it exceeds the slice limits, so the capture's memory stays bounded whatever
the transaction's size. With protocol 2, PostgreSQL streams large transactions before they
commit; their changes are spooled to a temporary file and sliced out only at Stream Commit (and
dropped at Stream Abort), so nothing uncommitted ever reaches the log.

Each output carries ``ack_lsn``: the position the slot may confirm once that envelope and every
envelope before it are acknowledged by Kafka.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

import orjson

from connectors import pgoutput as po
from connectors.envelope import Change, Envelope, RelationInfo

CONTROL_PREFIX = "replicator"
# A DDL command from the source's event trigger (replicator.drift.trigger): travels as a control
# message of kind "ddl", at its place in its transaction.
DDL_PREFIX = "replicator.ddl"
_PREFIXES = (CONTROL_PREFIX, DDL_PREFIX)
pg_time = po.pg_timestamp_iso


@dataclass
class Output:
    envelope: Envelope
    ack_lsn: int | None


@dataclass
class _Txn:
    xid: int
    commit_lsn: int
    commit_ts: str | None
    origin: str | None = None
    seq: int = 0
    changes: list[Change] = field(default_factory=list)
    relations: dict[int, RelationInfo] = field(default_factory=dict)
    size: int = 0


class Assembler:
    def __init__(
        self,
        origin: str,
        *,
        slice_max_changes: int = 5_000,
        slice_max_bytes: int = 8 << 20,
        # Transactions whose origin name starts with one of these are our own apply's writes.
        skip_origins: frozenset[str] = frozenset(),
        spool_dir: str | None = None,
    ) -> None:
        self.origin = origin
        self.slice_max_changes = slice_max_changes
        self.slice_max_bytes = slice_max_bytes
        self.skip_origins = skip_origins
        self.spool_dir = spool_dir
        self.relations: dict[int, RelationInfo] = {}
        self.relation_changes = 0  # relations whose columns changed mid-stream
        self.changed_relations: list[str] = []  # their names, for the capture to report
        self._txn: _Txn | None = None
        self._skip = False
        self._stream_xid: int | None = None
        self._spools: dict[int, _Spool] = {}

    @property
    def in_txn(self) -> bool:
        """Whether a transaction is partly received (the slot must not be confirmed past it)."""
        return self._txn is not None or bool(self._spools)

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, msg: po.Message) -> Iterable[Output]:
        """The envelopes ``msg`` completes. Lazy: a streamed transaction is sliced from its spool
        as the caller consumes, so only one slice is in memory at a time."""
        if type(msg) is po.Insert and self._stream_xid is None:  # most of the traffic first
            txn = self._txn
            if txn is None or self._skip:
                return []
            return self._add_one(txn, _change("insert", self.relations[msg.relid], msg))
        if type(msg) in _ROW_MESSAGES and self._stream_xid is None:
            if self._txn is None or self._skip:
                return []
            return self._add(self._txn, self._changes(msg))  # type: ignore[arg-type]
        if isinstance(msg, po.Relation):
            return self._relation(msg)
        if self._stream_xid is not None and not isinstance(msg, po.StreamStop | po.StreamStart):
            return self._streamed(msg)
        if isinstance(msg, po.Begin):
            self._txn = _Txn(msg.xid, msg.final_lsn, pg_time(msg.commit_ts))
            self._skip = False
            return []
        if isinstance(msg, po.Origin):
            if self._txn is not None:
                self._txn.origin = msg.name
                self._skip = self._skipped(msg.name)
            return []
        if isinstance(msg, po.Commit):
            txn, self._txn = self._txn, None
            if txn is None:
                return []
            if self._skip:
                # Our own apply's writes: never echoed back (the slot still advances).
                return [Output(self._control_env(txn.commit_lsn, {"kind": "skip"}), msg.end_lsn)]
            return [self._slice(txn, last=True, ack=msg.end_lsn)]
        if isinstance(msg, po.LogicalMessage):
            return self._message(msg)
        if isinstance(msg, po.Insert | po.Update | po.Delete | po.Truncate):
            if self._txn is None or self._skip:
                return []
            return self._add(self._txn, self._changes(msg))
        if isinstance(msg, po.StreamStart):
            self._stream_xid = msg.xid
            if msg.xid not in self._spools:
                self._spools[msg.xid] = _Spool(self.spool_dir)
            return []
        if isinstance(msg, po.StreamStop):
            self._stream_xid = None
            return []
        if isinstance(msg, po.StreamCommit):
            return self._stream_commit(msg)
        if isinstance(msg, po.StreamAbort):
            spool = self._spools.get(msg.xid)
            if spool is not None:
                if msg.subxid == msg.xid:
                    spool.close()
                    del self._spools[msg.xid]
                else:
                    spool.aborted.add(msg.subxid)
            return []
        return []  # Type and anything informational

    def _relation(self, msg: po.Relation) -> list[Output]:
        info = RelationInfo(
            schema=msg.namespace or "pg_catalog",
            table=msg.name,
            columns=tuple(c.name for c in msg.columns),
            type_oids=tuple(c.type_oid for c in msg.columns),
            key_columns=tuple(c.name for c in msg.columns if c.is_key),
        )
        old = self.relations.get(msg.relid)
        if old is not None and (old.columns, old.type_oids) != (info.columns, info.type_oids):
            self.relation_changes += 1
            self.changed_relations.append(info.qualname)
        self.relations[msg.relid] = info
        txn = self._txn
        if (
            self._stream_xid is None
            and txn is not None
            and txn.relations.get(msg.relid, info) != info
        ):
            # The table changed inside this transaction (ALTER TABLE, then more rows): an
            # envelope has one shape per table, so the rows of the old shape go in a slice first.
            return [self._slice(txn, last=False, ack=None)]
        return []

    def _changes(self, msg: po.Insert | po.Update | po.Delete | po.Truncate) -> list[Change]:
        if isinstance(msg, po.Truncate):
            return [Change("truncate", relid) for relid in msg.relids]
        rel = self.relations[msg.relid]
        if isinstance(msg, po.Insert):
            return [_change("insert", rel, msg)]
        if isinstance(msg, po.Update):
            if msg.old is None:
                return [_change("update", rel, msg)]
            new, unchanged = _row(rel, msg.new)
            old = _old(rel, msg.old_kind, msg.old)
            return [Change("update", msg.relid, new=new, old=old, unchanged=unchanged)]
        return [Change("delete", msg.relid, old=_old(rel, msg.old_kind, msg.old))]

    def _add(self, txn: _Txn, changes: list[Change]) -> list[Output]:
        out: list[Output] = []
        for ch in changes:
            out.extend(self._add_one(txn, ch))
        return out

    def _add_one(self, txn: _Txn, ch: Change) -> list[Output]:
        txn.changes.append(ch)
        if ch.rel not in txn.relations:
            txn.relations[ch.rel] = self.relations[ch.rel]
        txn.size += 64 + ch.text_size()
        if len(txn.changes) >= self.slice_max_changes or txn.size >= self.slice_max_bytes:
            return [self._slice(txn, last=False, ack=None)]
        return []

    def _slice(self, txn: _Txn, *, last: bool, ack: int | None) -> Output:
        env = Envelope(
            origin=self.origin,
            xid=txn.xid,
            commit_lsn=txn.commit_lsn,
            commit_ts=txn.commit_ts,
            seq=txn.seq,
            last=last,
            relations=txn.relations,
            changes=txn.changes,
        )
        txn.seq += 1
        txn.changes, txn.relations, txn.size = [], {}, 0
        return Output(env, ack)

    # -- logical messages: heartbeats and markers ----------------------------------------------

    def _message(self, msg: po.LogicalMessage) -> list[Output]:
        if msg.prefix not in _PREFIXES:
            return []
        control = _control(msg)
        if msg.transactional and self._txn is not None:
            if self._skip:
                return []  # inside our own apply's transaction, which is not echoed at all
            # Part of the transaction: the next slice carries it, in order.
            out = [self._slice(self._txn, last=False, ack=None)] if self._txn.changes else []
            return [*out, self._in_txn_control(self._txn, control)]
        return [Output(self._control_env(msg.lsn, control), msg.lsn)]

    def _in_txn_control(self, txn: _Txn, control: dict[str, Any]) -> Output:
        env = self._control_env(txn.commit_lsn, control)
        env.xid, env.seq, env.last = txn.xid, txn.seq, False
        txn.seq += 1
        return Output(env, None)

    def _skipped(self, origin: str | None) -> bool:
        return origin is not None and any(origin.startswith(p) for p in self.skip_origins)

    def _control_env(self, lsn: int, control: dict[str, Any]) -> Envelope:
        return Envelope(origin=self.origin, xid=0, commit_lsn=lsn, commit_ts=None, control=control)

    # -- protocol 2 streaming --------------------------------------------------------------------

    def _streamed(self, msg: po.Message) -> list[Output]:
        assert self._stream_xid is not None
        spool = self._spools[self._stream_xid]
        if isinstance(msg, po.Insert | po.Update | po.Delete | po.Truncate):
            sub = msg.xid if msg.xid is not None else self._stream_xid
            for ch in self._changes(msg):
                spool.write(sub, self.relations[ch.rel], ch)
        elif isinstance(msg, po.Origin):
            # Sent once, after the transaction's first Stream Start: it decides at Stream Commit
            # whether the transaction is our own apply's writes (never echoed back).
            spool.origin = msg.name
        elif isinstance(msg, po.LogicalMessage):
            if not msg.transactional:
                return self._message(msg)  # belongs to no transaction: passes at once
            if msg.prefix in _PREFIXES:
                # A fence marker or watermark inside the transaction keeps its place among its
                # changes. pgoutput tags it with the top-level xid, not its subtransaction's.
                sub = msg.xid if msg.xid is not None else self._stream_xid
                spool.write_control(sub, _control(msg))
        return []

    def _stream_commit(self, msg: po.StreamCommit) -> Iterator[Output]:
        spool = self._spools.pop(msg.xid, None)
        txn = _Txn(msg.xid, msg.commit_lsn, pg_time(msg.commit_ts))
        if spool is not None:
            txn.origin = spool.origin
            if self._skipped(spool.origin):
                spool.close()
                yield Output(self._control_env(msg.commit_lsn, {"kind": "skip"}), msg.end_lsn)
                return
            for item in spool.replay():
                if isinstance(item, dict):  # a control message, in its place
                    if txn.changes:
                        yield self._slice(txn, last=False, ack=None)
                    yield self._in_txn_control(txn, item)
                    continue
                rel_id, rel, ch = item
                txn.changes.append(ch)
                txn.relations[rel_id] = rel
                txn.size += 64 + ch.text_size()
                if len(txn.changes) >= self.slice_max_changes or txn.size >= self.slice_max_bytes:
                    yield self._slice(txn, last=False, ack=None)
            spool.close()
        yield self._slice(txn, last=True, ack=msg.end_lsn)


class _Spool:
    """Changes of one streamed transaction on disk, until it commits or aborts.

    One orjson line per record: ``["R", relid, relation]`` when a relation is first used or
    changed, then ``["V", subxid, op, relid, values]`` per positional change (see
    ``envelope.Change``), ``["C", subxid, op, relid, new, old, unchanged]`` per other change and
    ``["M", subxid, control]`` per transactional control message, in stream order. Every change
    of a large transaction is written and read back once, so the format is the cheapest to
    encode and parse, not the envelope's. The transaction's replication origin is kept beside.
    """

    def __init__(self, directory: str | None) -> None:
        # Lives as long as the spool; close() releases it.
        self._file: IO[bytes] = tempfile.TemporaryFile("w+b", dir=directory)  # noqa: SIM115
        self._written: dict[int, RelationInfo] = {}
        self.aborted: set[int] = set()
        self.origin: str | None = None

    def write_control(self, subxid: int, control: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(["M", subxid, control], option=_LINE))

    def write(self, subxid: int, rel: RelationInfo, ch: Change) -> None:
        if self._written.get(ch.rel) is not rel:
            self._file.write(orjson.dumps(["R", ch.rel, rel.to_wire()], option=_LINE))
            self._written[ch.rel] = rel
        if ch.values is not None and ch.old is None and not ch.unchanged:
            rec = ["V", subxid, ch.op, ch.rel, ch.values]
        else:
            rec = ["C", subxid, ch.op, ch.rel, ch.new, ch.old, ch.unchanged]
        self._file.write(orjson.dumps(rec, option=_LINE))

    def replay(self) -> Iterator[tuple[int, RelationInfo, Change] | dict[str, Any]]:
        self._file.seek(0)
        rels: dict[int, RelationInfo] = {}
        aborted = self.aborted
        for line in self._file:
            rec = orjson.loads(line)
            if rec[0] == "R":
                r = rec[2]
                rels[rec[1]] = RelationInfo(
                    r["schema"],
                    r["table"],
                    tuple(r["columns"]),
                    tuple(r["type_oids"]),
                    tuple(r["key_columns"]),
                )
                continue
            if aborted and rec[1] in aborted:
                continue
            if rec[0] == "M":
                yield cast("dict[str, Any]", rec[2])
                continue
            if rec[0] == "V":
                _, _, op, rel_id, values = rec
                rel = rels[rel_id]
                yield rel_id, rel, Change(op, rel_id, values=values, relation=rel)
                continue
            _, _, op, rel_id, new, old, unchanged = rec
            yield rel_id, rels[rel_id], Change(op, rel_id, new, old, unchanged)

    def close(self) -> None:
        self._file.close()


_LINE = orjson.OPT_APPEND_NEWLINE


class CarrierRows:
    """PostgreSQL 13: rows of ``replicator.wal_message`` back into the logical messages they
    carry (its pgoutput drops ``pg_logical_emit_message``), fed on to the assembler.

    A transaction of nothing but carrier rows (a heartbeat) is no transaction to the assembler,
    as a non-transactional message is none on 14+: its Begin is held until a row of another
    table arrives, and dropped with its Commit. Carrier deletes (pruning) and truncates are not
    relayed.
    """

    def __init__(self, feed: Callable[[po.Message], Iterable[Output]]) -> None:
        self._feed = feed
        self._relid: int | None = None
        self._columns: tuple[str, ...] = ()
        self._held: list[po.Message] = []
        self.lsn = 0  # the current frame's WAL position, set by the caller before feed()

    def feed(self, msg: po.Message) -> list[Output]:
        if isinstance(msg, po.Relation) and (msg.namespace, msg.name) == CARRIER:
            self._relid, self._columns = msg.relid, tuple(c.name for c in msg.columns)
            return []
        if isinstance(msg, po.Begin):
            self._held = [msg]
            return []
        if isinstance(msg, po.Truncate) and self._relid in msg.relids:
            # Emptied by hand: not relayed, as its deletes are not (the assembler never saw
            # its relation); the other tables of the statement go on.
            rest = tuple(r for r in msg.relids if r != self._relid)
            if not rest:
                return []
            msg = po.Truncate(rest, msg.cascade, msg.restart_identity, msg.xid)
        if isinstance(msg, po.Insert | po.Update | po.Delete) and msg.relid == self._relid:
            if not isinstance(msg, po.Insert):
                return []
            row = dict(zip(self._columns, msg.new, strict=True))
            transactional = row["transactional"] == "t"
            content = str(row["content"]).encode()
            message = po.LogicalMessage(transactional, self.lsn, str(row["prefix"]), content)
            return list(self._feed(message)) if not transactional else self._release(message)
        if self._held and isinstance(msg, po.Commit):
            self._held = []  # carrier rows only: a heartbeat, already passed on
            return []
        if self._held and isinstance(msg, po.Origin):
            self._held.append(msg)
            return []
        return self._release(msg)

    def _release(self, msg: po.Message) -> list[Output]:
        held, self._held = self._held, []
        out: list[Output] = []
        for m in [*held, msg]:
            out.extend(self._feed(m))
        return out


CARRIER = ("replicator", "wal_message")


_PLAIN = frozenset({str, type(None)})
_ROW_MESSAGES = frozenset({po.Insert, po.Update, po.Delete})


# Any role that may connect to the source can emit a logical message with our prefix
# (pg_logical_emit_message is PUBLIC's): what the capture forwards must not stop it or apply.
# A control larger than this, or nested deeper, is forwarded as unreadable (its size and first
# characters); a real one (a DDL record with its statement and columns) is far smaller.
CONTROL_MAX_BYTES = 1 << 20
CONTROL_MAX_DEPTH = 16


def _control(msg: po.LogicalMessage) -> dict[str, Any]:
    """A control message's JSON object; an unreadable one is kept as text, never dropped."""
    raw = bytes(msg.content)
    try:
        if len(raw) > CONTROL_MAX_BYTES:
            raise ValueError(f"{len(raw)} bytes")
        # orjson: no RecursionError on deep nesting, and it refuses what the envelope's
        # encoder (orjson too) would refuse later (a lone surrogate), stopping the capture.
        control = orjson.loads(raw)
        if msg.prefix == DDL_PREFIX:
            control = {"kind": "ddl", "ddl": control}
        if not isinstance(control, dict):
            raise ValueError("not an object")
        if _depth(control) > CONTROL_MAX_DEPTH:
            raise ValueError("nested too deep")
        orjson.dumps(control)  # what else it could not encode (raises a TypeError)
    except (ValueError, TypeError) as exc:
        control = {
            "kind": "unreadable",
            "why": str(exc)[:200],
            "bytes": len(raw),
            "content": raw[:1000].decode("utf-8", "replace"),
        }
    return control


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (0: a scalar)."""
    deepest, level = 0, [(value, 1)]
    while level:
        v, d = level.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            if d <= CONTROL_MAX_DEPTH:
                level.extend((item, d + 1) for item in v)
    return deepest


def _change(op: str, rel: RelationInfo, msg: po.Insert | po.Update) -> Change:
    """A change with a new row and no old image: positional when the row is whole and text
    (the common case, checked at C speed), else by column name."""
    values = msg.new
    if len(values) == len(rel.columns) and _PLAIN.issuperset(map(type, values)):
        return Change(op, msg.relid, values=cast("tuple[str | None, ...]", values), relation=rel)
    new, unchanged = _row(rel, values)
    return Change(op, msg.relid, new, None, unchanged)


def _row(rel: RelationInfo, values: tuple[Any, ...]) -> tuple[dict[str, str | None], list[str]]:
    if len(values) != len(rel.columns):
        raise ValueError(
            f"{len(values)} values for the {len(rel.columns)} columns of {rel.qualname}"
        )
    if _PLAIN.issuperset(map(type, values)):  # the common case: text and NULLs only
        return dict(zip(rel.columns, values, strict=True)), []
    new: dict[str, str | None] = {}
    unchanged: list[str] = []
    for col, v in zip(rel.columns, values, strict=True):
        if v is po.UNCHANGED:
            unchanged.append(col)
        elif isinstance(v, bytes | bytearray | memoryview):
            new[col] = "\\x" + bytes(v).hex()  # binary format is never requested; keep it lossless
        else:
            new[col] = v
    return new, unchanged


def _old(
    rel: RelationInfo, kind: str | None, values: tuple[Any, ...] | None
) -> dict[str, str | None] | None:
    if values is None:
        return None
    row, _ = _row(rel, values)
    if kind == "K":
        # An old *key* tuple: the other columns are placeholders, not values.
        return {c: row.get(c) for c in rel.key_columns}
    return row
