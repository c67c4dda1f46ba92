"""The backfill's bulk path: which tables travel as COPY output, and reading one chunk of them.

A table whose transform compiles to SQL (transforms.compile.compile_for_load) is read with
``COPY (SELECT … ORDER BY key LIMIT n) TO STDOUT`` (binary where :func:`binary_format` allows)
and sent as that output (connectors.copy_chunk): apply stages it and writes the target with ``INSERT … SELECT``. Any
other table, or one an operator forces (``backfill.python_tables``), keeps the Python path (rows
as text in change envelopes, each through the transform). The decision is stored with the
table's progress, so ``status`` and the progress bars say which path each table took.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.abc import PQGen
from psycopg.pq.abc import PGconn
from psycopg.waiting import Wait

from connectors.copy_chunk import (
    BINARY_TEXT_OIDS,
    TRAILER,
    CopyChunk,
    binary_tuples,
    copy_fields,
    field_text,
    strip_binary_header,
)
from connectors.envelope import RelationInfo
from replicator.config import BackfillSettings
from transforms.api import TableTransform
from transforms.compile import CompiledTable, compile_for_load, source_categories

SQL_PATH = "sql"


@dataclass(frozen=True)
class SourceTable:
    """A mapped source table as the backfill reads it."""

    table: str
    relid: int
    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    types: tuple[str, ...]  # format_type() of each column
    key: tuple[str, ...]
    enums: tuple[str, ...] = ()  # columns of a user-defined enum type

    @property
    def relation(self) -> RelationInfo:
        schema, _, name = self.table.partition(".")
        return RelationInfo(schema, name, self.columns, self.type_oids, self.key)


def load_path(
    settings: BackfillSettings, transform: TableTransform | None, source: SourceTable
) -> str:
    """``sql``, or ``python: <why>``."""
    if transform is None:
        return "python: no transform"
    if not settings.compiled:
        return "python: backfill.compiled is off"
    if source.table in settings.python_tables:
        return "python: listed in backfill.python_tables"
    compiled = compile_for_load(
        transform, source_categories(source.columns, source.types, source.enums), source.key
    )
    if not isinstance(compiled, CompiledTable):
        return f"python: {compiled.reason}"
    return SQL_PATH


def binary_format(source: SourceTable, transform: TableTransform | None) -> bool:
    """Whether ``source`` travels in COPY's binary format: every column of a type whose
    binary form apply stages as that type and connectors.copy_chunk reads back as text (or an
    enum, staged as its label); not for a row-copying transform, which stages text."""
    if transform is None or transform.copies_rows:
        return False
    enums = set(source.enums)
    return all(
        oid in BINARY_TEXT_OIDS or c in enums
        for c, oid in zip(source.columns, source.type_oids, strict=True)
    )


@dataclass(frozen=True)
class CopyRead:
    messages: list[bytes]
    rows: int
    last_key: list[str | None] | None


def chunk_query(
    source: SourceTable, after: bool, *, as_text: bool = False, upper: bool = False
) -> sql.Composed:
    """One keyset page of ``source``; ``after``: past a key given as text parameters;
    ``upper``: up to and including a key given next (the end of a key range); ``as_text``:
    every column cast to text (the Python path's rows). ORDER BY and WHERE name the table's
    columns through the alias ``t``: a bare name would sort by the text output."""
    cast = "::text" if as_text else ""
    cols = sql.SQL(", ").join(
        sql.SQL("t.{}" + cast).format(sql.Identifier(c)) for c in source.columns
    )
    table = sql.Identifier(*source.table.split(".", 1))
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in source.key)
    types = dict(zip(source.columns, source.types, strict=True))
    bound = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(types[k])) for k in source.key)
    where = [sql.SQL("({}) > ({})").format(order, bound)] if after else []
    if upper:
        where.append(sql.SQL("({}) <= ({})").format(order, bound))
    cond = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    return sql.SQL("SELECT {} FROM {} t{} ORDER BY {} LIMIT %s").format(cols, table, cond, order)


def prepare_reader(conn: psycopg.Connection[Any]) -> None:
    """The session settings the COPY text is produced under: UTF-8, ISO dates, exact floats
    (apply parses it back with the same types)."""
    conn.execute(
        "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, MDY'; "
        "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3"
    )


def _drain(
    pgconn: PGconn, binary: bool, message_bytes: int, encoding: str
) -> PQGen[tuple[list[tuple[bytes, int]], bytes]]:
    """Every row of the COPY in progress on ``pgconn``, cut into parts of about
    ``message_bytes`` after a whole row: ([(data, rows)], the last row's block). The server
    sends one block per row; in binary, the first block also holds the file header and the
    last is the trailer alone."""
    parts: list[tuple[bytes, int]] = []  # (data, rows)
    buf, held, first = bytearray(), 0, True
    last: bytes | memoryview = b""
    get = pgconn.get_copy_data
    while True:
        nbytes, data = get(1)
        if nbytes > 0:
            block: bytes | memoryview = data
            if binary:
                if first:
                    first = False
                    if not (block := strip_binary_header(bytes(data))):
                        continue
                if block == TRAILER:
                    continue  # the end follows
                last = block
            buf += block
            held += 1
            if len(buf) >= message_bytes and (binary or buf.endswith(b"\n")):
                parts.append((bytes(buf), held if binary else buf.count(b"\n")))
                buf, held = bytearray(), 0
        elif nbytes == 0:  # nothing buffered: wait for the socket
            while not (yield Wait.R):
                pass
            pgconn.consume_input()
        else:  # -1: the COPY is over; its result says whether it succeeded
            break
    if buf:
        parts.append((bytes(buf), held if binary else buf.count(b"\n")))
    results = []  # every one read before raising, or the session is left mid-protocol
    while True:
        while pgconn.is_busy():
            while not (yield Wait.R):
                pass
            pgconn.consume_input()
        if (result := pgconn.get_result()) is None:
            break
        results.append(result)
    for result in results:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise psycopg.errors.error_from_result(result, encoding=encoding)
    return parts, bytes(last)


def read_copy_chunk(
    conn: psycopg.Connection[Any],
    origin: str,
    source: SourceTable,
    last_key: Sequence[Any] | None,
    chunk_rows: int,
    message_bytes: int,
    *,
    binary: bool = False,
    upper: Sequence[Any] | None = None,
) -> CopyRead:
    """The next ``chunk_rows`` rows after ``last_key`` as COPY chunk messages of at most about
    ``message_bytes`` each (a message always ends with a whole row; one row larger than the
    limit is a message of its own); ``binary``: in COPY's binary format (see
    :func:`binary_format`); ``upper``: the last key of the range being read."""
    query = chunk_query(source, last_key is not None, upper=upper is not None)
    stmt = sql.SQL("COPY ({}) TO STDOUT" + (" (FORMAT binary)" if binary else "")).format(query)
    with conn.cursor() as cur, cur.copy(stmt, (*(last_key or ()), *(upper or ()), chunk_rows)):
        # The rows are drained here rather than through the Copy object's iteration, which
        # waits on the socket once per row: that wait cost twice the reading itself (1.2 s of
        # CPU per 2 M rows). Leaving the block after the drain is clean: the COPY is over.
        parts, last = conn.wait(_drain(conn.pgconn, binary, message_bytes, conn.info.encoding))
    if not parts:
        return CopyRead([], 0, None)
    if binary:
        (fields,) = binary_tuples(bytes(last))
        at = {c: i for i, c in enumerate(source.columns)}
        enums = set(source.enums)
        key: list[str | None] = [
            None
            if (f := fields[at[k]]) is None
            else field_text(source.type_oids[at[k]], f, enum=k in enums)
            for k in source.key
        ]
    else:
        last_line = parts[-1][0][:-1].rpartition(b"\n")[2]
        text = copy_fields(last_line)
        key = [text[source.columns.index(k)] for k in source.key]
    relation = source.relation
    messages = [
        CopyChunk(
            origin, source.relid, relation, source.types, source.enums, n, data, binary
        ).encode()
        for data, n in parts
    ]
    return CopyRead(messages, sum(n for _, n in parts), key)
