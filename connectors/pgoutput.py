"""pgoutput logical replication messages (protocol versions 1 and 2) decoded from bytes, no I/O.

One call decodes one message: the payload of a walsender XLogData frame, or one ``data`` row of
``pg_logical_slot_get_binary_changes``. Layouts follow PostgreSQL's "Logical Replication Message
Formats" (``src/backend/replication/logical/proto.c``).

Protocol 2 adds streamed transactions: between Stream Start and Stream Stop, Relation, Type,
Insert, Update, Delete, Truncate and Message carry the (sub)transaction's xid right after the
type byte. Whether those 4 bytes are there is not in the message itself, so decoding is stateful:
:class:`PgOutputDecoder` follows Stream Start/Stop and must see every message of a session in
order. :func:`decode_message` is the same decoding with that state passed explicitly.

Values: ``None`` is SQL NULL; :data:`UNCHANGED` is a TOASTed value the server did not send
because the change left it unchanged (it is not NULL: the column keeps its old value); text
columns are ``str``, binary-format columns (``binary 'true'``) ``bytes``. Timestamps stay raw
(int64 microseconds since 2000-01-01 UTC, see :func:`pg_timestamp`); LSNs and xids are ints.

Any malformed input raises :class:`PgOutputDecodeError`, naming what was wrong and where.
"""

from __future__ import annotations

import datetime as dt
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias


class PgOutputDecodeError(ValueError):
    """A message that is not valid pgoutput; ``offset`` is the byte position of the problem."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at offset {offset}")
        self.offset = offset


class Unchanged(enum.Enum):
    """Type of :data:`UNCHANGED` (an enum so that the singleton survives copy and pickle)."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED
Value: TypeAlias = str | bytes | Literal[Unchanged.UNCHANGED] | None
Row: TypeAlias = tuple[Value, ...]
OldKind: TypeAlias = Literal["K", "O"]
ReplicaIdentity: TypeAlias = Literal["d", "n", "f", "i"]  # default, nothing, full, index

PG_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def pg_timestamp(micros: int) -> dt.datetime:
    """An aware UTC datetime from int64 microseconds since 2000-01-01 (ValueError if too far)."""
    try:
        return PG_EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError(f"timestamp {micros} us is outside datetime's range") from None


def pg_timestamp_iso(micros: int) -> str:
    return pg_timestamp(micros).isoformat()


# -- messages ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_ts: int
    xid: int


@dataclass(slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str  # "" means pg_catalog
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class TypeMsg:
    oid: int
    namespace: str
    name: str
    xid: int | None = None


# Begin, Commit and the row messages are most of the traffic: not frozen, because a frozen
# dataclass's __init__ costs several times more (object.__setattr__ per field).
@dataclass(slots=True)
class Insert:
    relid: int
    new: Row
    xid: int | None = None


@dataclass(slots=True)
class Update:
    relid: int
    old_kind: OldKind | None  # K: old replica identity key; O: whole old row (FULL)
    old: Row | None
    new: Row
    xid: int | None = None


@dataclass(slots=True)
class Delete:
    relid: int
    old_kind: OldKind
    old: Row
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int  # equal to xid when the whole transaction aborts


# fmt: off
Message: TypeAlias = (
    Begin | Commit | Origin | Relation | TypeMsg | Insert | Update | Delete | Truncate
    | LogicalMessage | StreamStart | StreamStop | StreamCommit | StreamAbort
)
# fmt: on

# -- decoding ---------------------------------------------------------------------------------

_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_REL_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, atttypmod
_CHANGE_HEAD = struct.Struct(">IB")  # relid, tuple marker
_STREAMED_CHANGE_HEAD = struct.Struct(">IIB")  # xid, relid, tuple marker
_TUPLE_KINDS = "n (null), u (unchanged), t (text) or b (binary)"
_IDENTITIES: Final[dict[str, ReplicaIdentity]] = {"d": "d", "n": "n", "f": "f", "i": "i"}


class _Reader:
    """Offset-based cursor over one message, for the parts that are not hot loops."""

    __slots__ = ("data", "msg", "pos")

    def __init__(self, data: bytes, msg: str) -> None:
        self.data = data
        self.msg = msg  # message name, for errors
        self.pos = 1  # after the type byte

    def error(self, what: str, offset: int | None = None) -> PgOutputDecodeError:
        return PgOutputDecodeError(f"{self.msg}: {what}", self.pos if offset is None else offset)

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if start + n > len(self.data):
            raise self.error(f"truncated {what} (needs {n} bytes, {len(self.data) - start} left)")
        self.pos = start + n
        return start

    def unpack(self, st: struct.Struct, what: str) -> tuple[int, ...]:
        return st.unpack_from(self.data, self.take(st.size, what))

    def u8(self, what: str) -> int:
        return self.data[self.take(1, what)]

    def u32(self, what: str) -> int:
        value: int = _U32.unpack_from(self.data, self.take(4, what))[0]
        return value

    def count(self, st: struct.Struct, what: str) -> int:
        (n,) = self.unpack(st, what)
        if n < 0:
            raise self.error(f"negative {what} {n}", self.pos - st.size)
        return n

    def cstr(self, what: str) -> str:
        start = self.pos
        nul = self.data.find(b"\0", start)
        if nul < 0:
            raise self.error(f"unterminated {what}")
        self.pos = nul + 1
        try:
            return self.data[start:nul].decode()
        except UnicodeDecodeError as exc:
            raise self.error(f"{what} is not valid UTF-8", start + exc.start) from None

    def xid(self, in_stream: bool) -> int | None:
        return self.u32("xid") if in_stream else None

    def end(self) -> None:
        extra = len(self.data) - self.pos
        if extra:
            raise self.error(f"{extra} trailing bytes")


def _tuple(r: _Reader) -> Row:
    """TupleData: Int16 column count, then per column a kind byte and, for t/b, Int32 length and
    the value. The hot loop: locals only, one bounds check per field."""
    data, pos = r.data, r.pos
    end = len(data)
    if pos + 2 > end:
        raise r.error("truncated tuple column count")
    (natts,) = _I16.unpack_from(data, pos)
    if natts < 0 or natts > end - pos - 2:  # every column takes at least its kind byte
        raise r.error(f"tuple claims {natts} columns with {end - pos - 2} bytes left")
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack_len = _I32.unpack_from
    i = start = 0
    try:
        for i in range(natts):
            if pos >= end:
                raise r.error(f"truncated tuple at column {i}", pos)
            kind = data[pos]
            if kind == 0x74 or kind == 0x62:  # t, b
                if pos + 5 > end:
                    raise r.error(f"truncated length of column {i}", pos + 1)
                (n,) = unpack_len(data, pos + 1)
                start = pos + 5
                pos = start + n
                if n < 0:
                    raise r.error(f"negative length {n} of column {i}", start - 4)
                if pos > end:
                    raise r.error(f"column {i} needs {n} bytes, {end - start} left", start)
                append(data[start:pos].decode() if kind == 0x74 else data[start:pos])
            elif kind == 0x6E:  # n
                append(None)
                pos += 1
            elif kind == 0x75:  # u
                append(UNCHANGED)
                pos += 1
            else:
                raise r.error(f"column {i} has kind {kind:#04x}, expected {_TUPLE_KINDS}", pos)
    except UnicodeDecodeError as exc:  # one handler for the loop: free until it fires
        raise r.error(f"column {i} is not valid UTF-8", start + exc.start) from None
    r.pos = pos
    return tuple(values)


def _marker(r: _Reader, kind: int, allowed: str) -> str:
    """Check a tuple marker byte (already read, at ``r.pos - 1``)."""
    marker = chr(kind)
    if marker not in allowed:
        raise r.error(f"tuple marker {marker!r}, expected one of {allowed!r}", r.pos - 1)
    return marker


def _change_head(r: _Reader, in_stream: bool, allowed: str) -> tuple[int | None, int, str]:
    """xid (in a stream), relid and first tuple marker of Insert/Update/Delete, in one unpack:
    these are most of the traffic."""
    if in_stream:
        xid, relid, kind = r.unpack(_STREAMED_CHANGE_HEAD, "header")
        return xid, relid, _marker(r, kind, allowed)
    relid, kind = r.unpack(_CHANGE_HEAD, "header")
    return None, relid, _marker(r, kind, allowed)


def _origin(r: _Reader, in_stream: bool) -> Origin:
    (lsn,) = r.unpack(_U64, "origin lsn")
    return Origin(lsn, r.cstr("origin name"))


def _relation(r: _Reader, in_stream: bool) -> Relation:
    xid = r.xid(in_stream)
    relid = r.u32("relid")
    namespace, name = r.cstr("namespace"), r.cstr("relation name")
    at = r.pos
    ident = _IDENTITIES.get(chr(r.u8("replica identity")))
    if ident is None:
        raise r.error(f"unknown replica identity {r.data[at : at + 1]!r}", at)
    natts = r.count(_I16, "column count")
    columns = []
    for _ in range(natts):
        flags = r.u8("column flags")
        col_name = r.cstr("column name")
        type_oid, typmod = r.unpack(_REL_COLUMN_TAIL, "column type")
        columns.append(Column(flags, col_name, type_oid, typmod))
    return Relation(relid, namespace, name, ident, tuple(columns), xid)


def _type(r: _Reader, in_stream: bool) -> TypeMsg:
    xid = r.xid(in_stream)
    oid = r.u32("type oid")
    return TypeMsg(oid, r.cstr("namespace"), r.cstr("type name"), xid)


def _insert(r: _Reader, in_stream: bool) -> Insert:
    xid, relid, _ = _change_head(r, in_stream, "N")
    return Insert(relid, _tuple(r), xid)


def _update(r: _Reader, in_stream: bool) -> Update:
    xid, relid, kind = _change_head(r, in_stream, "KON")
    if kind == "N":
        return Update(relid, None, None, _tuple(r), xid)
    old = _tuple(r)
    _marker(r, r.u8("new tuple marker"), "N")
    return Update(relid, "K" if kind == "K" else "O", old, _tuple(r), xid)


def _delete(r: _Reader, in_stream: bool) -> Delete:
    xid, relid, kind = _change_head(r, in_stream, "KO")
    return Delete(relid, "K" if kind == "K" else "O", _tuple(r), xid)


def _truncate(r: _Reader, in_stream: bool) -> Truncate:
    xid = r.xid(in_stream)
    n = r.count(_I32, "relation count")
    at = r.pos
    options = r.u8("options")
    # Unknown option bits could change what the truncate means: refuse rather than guess.
    if options & ~3:
        raise r.error(f"unknown truncate options {options:#04x}", at)
    relids = struct.unpack_from(f">{n}I", r.data, r.take(4 * n, "relids"))
    return Truncate(relids, bool(options & 1), bool(options & 2), xid)


def _message(r: _Reader, in_stream: bool) -> LogicalMessage:
    xid = r.xid(in_stream)
    at = r.pos
    flags = r.u8("flags")
    if flags & ~1:
        raise r.error(f"unknown message flags {flags:#04x}", at)
    (lsn,) = r.unpack(_U64, "lsn")
    prefix = r.cstr("prefix")
    n = r.count(_I32, "content length")
    start = r.take(n, "content")
    return LogicalMessage(bool(flags), lsn, prefix, r.data[start : start + n], xid)


def _stream_start(r: _Reader, in_stream: bool) -> StreamStart:
    xid, first = r.unpack(_STREAM_START, "body")
    if first > 1:
        raise r.error(f"first-segment flag must be 0 or 1, not {first}", r.pos - 1)
    return StreamStart(xid, first == 1)


_Decode: TypeAlias = Callable[[_Reader, bool], Message]


def _fixed(cls: Callable[..., Message], layout: struct.Struct) -> _Decode:
    """Decoder of a message that is one fixed layout, field for field."""
    return lambda r, _: cls(*r.unpack(layout, "body"))


# type byte -> (name, decoder, lowest protocol version, where it may appear: "in", "out", "any")
_DISPATCH: Final[dict[int, tuple[str, _Decode, int, str]]] = {
    ord("B"): ("Begin", _fixed(Begin, _BEGIN), 1, "out"),
    ord("C"): ("Commit", _fixed(Commit, _COMMIT), 1, "out"),
    # Origin follows the first Stream Start of a replicated-origin transaction, without an xid.
    ord("O"): ("Origin", _origin, 1, "any"),
    ord("R"): ("Relation", _relation, 1, "any"),
    ord("Y"): ("Type", _type, 1, "any"),
    ord("I"): ("Insert", _insert, 1, "any"),
    ord("U"): ("Update", _update, 1, "any"),
    ord("D"): ("Delete", _delete, 1, "any"),
    ord("T"): ("Truncate", _truncate, 1, "any"),
    ord("M"): ("Message", _message, 1, "any"),
    ord("S"): ("Stream Start", _stream_start, 2, "out"),
    ord("E"): ("Stream Stop", lambda r, _: StreamStop(), 2, "in"),
    ord("c"): ("Stream Commit", _fixed(StreamCommit, _STREAM_COMMIT), 2, "out"),
    ord("A"): ("Stream Abort", _fixed(StreamAbort, _STREAM_ABORT), 2, "out"),
}


def decode_message(
    data: bytes | bytearray | memoryview, *, proto_version: int = 1, in_stream: bool = False
) -> Message:
    """Decode one message. ``in_stream``: whether it comes between Stream Start and Stream Stop
    (protocol 2), which decides whether streamed messages carry an xid."""
    if type(data) is not bytes:
        data = bytes(data)
    if not data:
        raise PgOutputDecodeError("empty message", 0)
    if data[0] == 0x49 and not in_stream and len(data) > 6 and data[5] == 0x4E:
        # Insert with its new tuple, outside a streamed block: most of any bulk load, so it
        # skips the dispatch below. Anything unusual takes the general path and its errors.
        r = _Reader(data, "Insert")
        r.pos = 6
        row = _tuple(r)
        r.end()
        return Insert(_U32.unpack_from(data, 1)[0], row)
    entry = _DISPATCH.get(data[0])
    if entry is None:
        raise PgOutputDecodeError(f"unknown message type {data[:1]!r}", 0)
    name, decode, min_proto, where = entry
    if proto_version < min_proto:
        raise PgOutputDecodeError(f"{name} needs protocol 2, decoding protocol {proto_version}", 0)
    if (where == "out" and in_stream) or (where == "in" and not in_stream):
        inside = "inside" if in_stream else "outside"
        raise PgOutputDecodeError(f"{name} {inside} a streamed transaction block", 0)
    r = _Reader(data, name)
    msg = decode(r, in_stream)
    r.end()
    return msg


class PgOutputDecoder:
    """Decodes one replication session's messages, in order, following Stream Start/Stop.

    A failed decode leaves the state as it was. Use a new decoder for each new session (a
    restarted stream begins outside any streamed block).
    """

    __slots__ = ("_in_stream", "proto_version")

    def __init__(self, proto_version: int = 1) -> None:
        if proto_version not in (1, 2):
            raise ValueError(f"pgoutput protocol {proto_version} is not supported (1 or 2)")
        self.proto_version = proto_version
        self._in_stream = False

    @property
    def in_stream(self) -> bool:
        return self._in_stream

    def decode(self, data: bytes | bytearray | memoryview) -> Message:
        msg = decode_message(data, proto_version=self.proto_version, in_stream=self._in_stream)
        if type(msg) is StreamStart:
            self._in_stream = True
        elif type(msg) is StreamStop:
            self._in_stream = False
        return msg
