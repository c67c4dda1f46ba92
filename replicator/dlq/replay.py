"""``replicator dlq replay``: apply dead-lettered rows once their cause is fixed.

The rule that keeps a replay safe while the stream runs: a replay never writes the logged
values. It finds the source row the letter is about (through the logged message), reads that
row's *current* state from the source and writes its transform, or deletes it when the row is
gone. A later change of the same key that the stream applied meanwhile is therefore never undone,
and replaying a letter twice is harmless.

One race is left between reading the source and writing the target: the stream could apply a
newer change in between. So the source row is read again after the write, while the written
target rows are still locked: unchanged, any newer change commits on the source after that read
and the apply writes it after this commit; changed, the write is rolled back and done again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from connectors import kafka_io, pg
from connectors.copy_chunk import decode_message
from connectors.envelope import Change, Envelope, RelationInfo
from connectors.pgsink import Batch, Sink
from connectors.pgtypes import TextLoader
from replicator.apply.session import set_replica_role
from replicator.config import DatabaseSettings, Settings
from replicator.dlq.letters import Letter
from replicator.errors import DataError, ReplicatorError
from transforms.api import Direction, RowChange, Truncate


@dataclass(frozen=True)
class ReplayResult:
    letter: Letter
    error: str | None  # None: applied


def replay(
    s: Settings,
    direction: Direction,
    source: DatabaseSettings,
    target: DatabaseSettings,
    letters: list[Letter],
) -> list[ReplayResult]:
    loader = TextLoader()
    results = []
    with (
        pg.connect(source.conninfo(), autocommit=True) as src,
        pg.connect(target.conninfo()) as tgt,
    ):
        # As the apply does: a row whose parent arrives in another letter must not fail, and a
        # fenced side takes the replay only as a replica session.
        with pg.translated(target.masked()):
            set_replica_role(tgt, target, "the dead-letter replay")
        tgt.commit()
        sink = Sink(tgt)
        for item in letters:
            try:
                _replay_checked(s, direction, src, tgt, sink, loader, item)
                results.append(ReplayResult(item, None))
            except ReplicatorError as exc:
                with contextlib.suppress(psycopg.Error):
                    tgt.rollback()
                results.append(ReplayResult(item, exc.message))
    return results


_ATTEMPTS = 5


def _replay_checked(
    s: Settings,
    direction: Direction,
    src: psycopg.Connection[Any],
    tgt: psycopg.Connection[Any],
    sink: Sink,
    loader: TextLoader,
    item: Letter,
) -> None:
    """Write the letter's rows and commit only if the source rows did not change meanwhile."""
    for _ in range(_ATTEMPTS):
        read = _replay_one(s, direction, src, sink, loader, item)
        if all(_read_row(src, rel, key) == row for rel, key, row in read):
            with pg.translated("target"):
                tgt.commit()
            return
        with pg.translated("target"):
            tgt.rollback()
    raise DataError(
        f"the source row of {item.letter.table} {item.letter.key} kept changing during the replay",
        table=item.letter.table,
        hint="replay it again once writes to that row calm down",
    )


def _replay_one(
    s: Settings,
    direction: Direction,
    src: psycopg.Connection[Any],
    sink: Sink,
    loader: TextLoader,
    item: Letter,
) -> list[tuple[RelationInfo, dict[str, str | None], dict[str, str | None] | None]]:
    """Write (not commit) the transform of the current state of the letter's source rows;
    returns what was read, for the re-check."""
    letter = item.letter
    if isinstance(letter.change, dict) and letter.change.get("op") == "truncate":
        raise DataError(
            f"a TRUNCATE of {letter.table} is not replayed (other source tables write its "
            "target tables too): undo its effect by hand as its reason says, then purge it",
            table=letter.table,
        )
    raw = kafka_io.read_at(
        s.kafka.bootstrap_servers,
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        **s.kafka.client_options(),
    )
    if raw is None:
        raise DataError(
            f"the logged message {letter.source_topic} "
            f"{letter.source_partition}:{letter.source_offset} is gone (retention?)",
            hint="re-sync the table instead: replicator backfill --table <table>",
        )
    # DataError when undecodable: the letter stays. A message may hold several transactions:
    # the letter's is the one at its commit LSN.
    rows = [
        row
        for env in decode_message(raw)
        if letter.commit_lsn is None or env.commit_lsn == letter.commit_lsn
        for row in _source_rows(env, direction, item)
    ]
    if not rows:
        raise DataError(
            f"no change in the logged message matches {letter.table} {letter.key}",
            hint="purge the letter if the row is no longer wanted",
        )
    batch = Batch()
    read = []
    for rel, key in rows:
        transform = direction.transform_for(rel.qualname)
        if transform is None:
            raise DataError(f"no mapping for source table {rel.qualname}", table=rel.qualname)
        rel = _as_now(src, rel)
        current = _read_row(src, rel, key)
        read.append((rel, key, current))
        new = loader.row(current, rel.columns, rel.type_oids) if current is not None else None
        old = loader.row(key, rel.key_columns, _key_oids(rel)) if current is None else None
        change = RowChange(
            op="insert" if current is not None else "delete",
            table=rel.qualname,
            new=new,
            old=old,
            key_columns=rel.key_columns,
        )
        for op in transform(change):
            if not isinstance(op, Truncate):
                batch.add(op)
    with pg.translated("target"):
        sink.flush(batch)
    return read


def _source_rows(
    env: Envelope, direction: Direction, item: Letter
) -> list[tuple[RelationInfo, dict[str, str | None]]]:
    """(relation, source key) of every change in ``env`` that the letter is about: both keys
    of an update that changed the key, so that the old one's row goes as the change made it go
    (or, written again since, takes its current state)."""
    letter = item.letter
    out: list[tuple[RelationInfo, dict[str, str | None]]] = []
    for ch in env.changes:
        rel = env.relations[ch.rel]
        keys = _keys_of(ch, rel)
        if not keys:
            continue
        if letter.error != "TargetRejected":
            if rel.qualname == letter.table and (letter.key is None or letter.key in keys):
                out.extend((rel, key) for key in keys)
            continue
        # The target refused the row: the letter names the target table and key.
        transform = direction.transform_for(rel.qualname)
        if transform is None:
            continue
        try:
            ops = transform(_as_change(ch, rel))
        except ReplicatorError:
            continue
        for op in ops:
            if isinstance(op, Truncate):
                continue
            op_key = {k: str(v) for k, v in op.key.items()}
            if op.table == letter.table and op_key == letter.key:
                out.extend((rel, key) for key in keys)
                break
    return out


def _keys_of(ch: Change, rel: RelationInfo) -> list[dict[str, str | None]]:
    """The source keys ``ch`` touches: its new row's and its old image's, when they differ."""
    keys: list[dict[str, str | None]] = []
    for row in (ch.new, ch.old):
        if row and rel.key_columns and all(k in row for k in rel.key_columns):
            key = {k: row[k] for k in rel.key_columns}
            if key not in keys:
                keys.append(key)
    return keys


def _as_change(ch: Change, rel: RelationInfo) -> RowChange:
    loader = TextLoader()
    new = loader.row(ch.new, rel.columns, rel.type_oids) if ch.new is not None else None
    old = loader.row(ch.old, rel.columns, rel.type_oids) if ch.old is not None else None
    op = "insert" if ch.op == "snapshot" else ch.op
    # Unchanged TOAST values stay named as such: a column missing without that is a mapping
    # error to the transform, not a value to leave alone.
    unchanged = frozenset(ch.unchanged) if ch.unchanged else frozenset()
    return RowChange(
        op=op,  # type: ignore[arg-type]
        table=rel.qualname,
        new=new,
        old=old,
        unchanged=unchanged,
        key_columns=rel.key_columns,
    )


_COLUMNS_SQL = (
    "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = format('%%I.%%I', %s::text, %s::text)"
    "::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
)


def _as_now(conn: psycopg.Connection[Any], rel: RelationInfo) -> RelationInfo:
    """The letter's table as the source has it now: a letter logged before a column was renamed
    or added re-reads the row with today's columns (docs/drift.md), never the logged list."""
    with pg.translated("source"):
        cols = conn.execute(_COLUMNS_SQL, (rel.schema, rel.table)).fetchall()
    names = tuple(str(c[0]) for c in cols)
    if not names or not set(rel.key_columns) <= set(names):
        return rel  # gone, or its key changed: the logged relation says what to read
    return RelationInfo(
        rel.schema, rel.table, names, tuple(int(c[1]) for c in cols), rel.key_columns
    )


def _key_oids(rel: RelationInfo) -> tuple[int, ...]:
    by_name = dict(zip(rel.columns, rel.type_oids, strict=True))
    return tuple(by_name[k] for k in rel.key_columns)


def _read_row(
    conn: psycopg.Connection[Any], rel: RelationInfo, key: dict[str, str | None]
) -> dict[str, str | None] | None:
    query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in rel.columns),
        sql.Identifier(rel.schema, rel.table),
        sql.SQL(" AND ").join(
            sql.SQL("{}::text = {}").format(sql.Identifier(k), sql.Placeholder())
            for k in rel.key_columns
        ),
    )
    with pg.translated("source"):
        row = conn.execute(query, [key[k] for k in rel.key_columns]).fetchone()
    return dict(zip(rel.columns, row, strict=True)) if row is not None else None
