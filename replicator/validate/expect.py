"""The expected target: legacy rows run through the forward transforms, folded per target key.

Each legacy row becomes an insert :class:`RowChange` (a vanished one, looked up by key, a
delete) and its ops are folded the way the sink writes them: an ``Upsert`` creates the row or
overwrites the given columns, a ``Delete`` removes it, a ``Patch`` fills columns of a row that
exists (the N→1 merge) and is applied after every upsert, since the sink's ``UPDATE`` of a row
that is not there yet does nothing. Where each expected row came from (source table and key) is
kept, so a mismatching row can be re-read by key instead of re-reading the table.

Two legacy rows of one source table that write one target key (by upsert or patch) are a
mapping collision: the sink would keep the last one written, so the fold does not pick one, it
marks the key (``Exp.collides``, with both rows' keys) and validation reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from replicator.errors import DataError
from replicator.validate.canon import Exp, Key, SourceRow, TableShape, expected_row
from transforms.api import Delete, Direction, Patch, RowChange, TableTransform, Upsert

SourceKey = tuple[Any, ...]
KEY_BATCH = 500


@dataclass(frozen=True, slots=True)
class Rejected:
    """A legacy row the transform refused: it is in the dead-letter queue, not in the target."""

    source: str
    key: dict[str, str]
    reason: str


@dataclass
class _Acc:
    state: str = "present"  # present | absent | if_present
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Expectation:
    rows: dict[str, dict[Key, Exp]]
    sources: dict[str, dict[Key, set[tuple[str, SourceKey]]]]
    rejected: list[Rejected]
    source_rows: int


class Folder:
    """Accumulates transform output into expected rows of the target tables in ``shapes``.

    ``partial``: only some source rows are transformed (--fast, or a re-check by key), so
    columns nobody wrote are not compared, and a patch alone expects the columns only if the
    row exists.
    """

    def __init__(self, shapes: Mapping[str, TableShape], *, partial: bool) -> None:
        self.shapes = shapes
        self.partial = partial
        self._acc: dict[str, dict[Key, _Acc]] = {t: {} for t in shapes}
        self._patches: list[tuple[str, Key, Mapping[str, Any]]] = []
        self.sources: dict[str, dict[Key, set[tuple[str, SourceKey]]]] = {t: {} for t in shapes}
        self.rejected: list[Rejected] = []
        self.source_rows = 0
        # What cannot collide though it is in ``sources``: rows looked up and gone, and the
        # deletes a row's transform makes (table, key, source, source key).
        self._gone: set[tuple[str, SourceKey]] = set()
        self._deletes: set[tuple[str, Key, str, SourceKey]] = set()
        self._key_names: dict[str, tuple[str, ...]] = {}

    def add(self, transform: TableTransform, row: Mapping[str, Any]) -> None:
        self._run(
            transform, RowChange("insert", transform.source, new=row, key_columns=_key(transform))
        )

    def add_deleted(self, transform: TableTransform, key: Mapping[str, Any]) -> None:
        self._gone.add((transform.source, tuple(key.get(c) for c in _key(transform))))
        self._run(
            transform, RowChange("delete", transform.source, old=key, key_columns=_key(transform))
        )

    def _run(self, transform: TableTransform, change: RowChange) -> None:
        self.source_rows += 1
        self._key_names[transform.source] = _key(transform)
        src_key = tuple(change.key_row.get(c) for c in _key(transform))
        try:
            ops = transform(change)
        except DataError as exc:
            names = _key(transform)
            self.rejected.append(
                Rejected(
                    transform.source,
                    {c: str(v) for c, v in zip(names, src_key, strict=True)},
                    exc.message,
                )
            )
            return
        for op in ops:
            if not isinstance(op, Upsert | Patch | Delete) or op.table not in self.shapes:
                continue  # a truncate cannot come from an insert; other tables are out of scope
            shape = self.shapes[op.table]
            key = shape.key_of(op.key)
            self.sources[op.table].setdefault(key, set()).add((transform.source, src_key))
            accs = self._acc[op.table]
            if isinstance(op, Delete):
                self._deletes.add((op.table, key, transform.source, src_key))
                accs[key] = _Acc("absent")
            elif isinstance(op, Upsert):
                acc = accs.get(key)
                if acc is None or acc.state != "present":
                    acc = accs[key] = _Acc("present")
                acc.values.update(op.values)
                acc.values.update(op.key)
            else:
                self._patches.append((op.table, key, {**op.values, **op.key}))

    def finish(self) -> Expectation:
        for table, key, values in self._patches:
            acc = self._acc[table].get(key)
            if acc is None:
                if not self.partial:
                    continue  # the sink's UPDATE finds no row: nothing is written
                acc = self._acc[table][key] = _Acc("if_present")
            if acc.state != "absent":
                acc.values.update(values)
        self._patches = []
        rows: dict[str, dict[Key, Exp]] = {}
        for table, accs in self._acc.items():
            shape = self.shapes[table]
            partial = self.partial
            out: dict[Key, Exp] = {}
            for key, acc in accs.items():
                if acc.state == "absent":
                    out[key] = Exp("absent")
                else:
                    row = expected_row(shape, acc.values, partial=partial or acc.state != "present")
                    out[key] = Exp(acc.state, row)  # type: ignore[arg-type]
            for key, writers in self.sources[table].items():
                if len(writers) > 1 and key in out and out[key].state != "absent":
                    collides = self._collision(table, key, writers)
                    if collides:
                        out[key] = Exp(out[key].state, out[key].row, collides)
            rows[table] = out
        return Expectation(rows, self.sources, self.rejected, self.source_rows)

    def _collision(
        self, table: str, key: Key, writers: set[tuple[str, SourceKey]]
    ) -> tuple[SourceRow, ...]:
        """The legacy rows of one source table that all write ``key`` (none: no collision)."""
        by_source: dict[str, set[SourceKey]] = {}
        for source, sk in writers:
            if (source, sk) not in self._gone and (table, key, source, sk) not in self._deletes:
                by_source.setdefault(source, set()).add(sk)
        return tuple(
            sorted(
                (
                    (source, tuple(zip(self._key_names[source], map(_text, sk), strict=True)))
                    for source, keys in by_source.items()
                    if len(keys) > 1
                    for sk in keys
                ),
                key=repr,  # a key may hold NULLs: not comparable with text
            )
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _key(transform: TableTransform) -> tuple[str, ...]:
    return transform.source_key


def _ident(table: str) -> sql.Identifier:
    schema, _, name = table.partition(".")
    return sql.Identifier(schema, name)


def read_all(
    conn: psycopg.Connection[Any], table: str, itersize: int = 5_000
) -> Iterator[dict[str, Any]]:
    """Every row of ``table``, streamed through a server-side cursor (inside the caller's
    transaction, which gives the read its snapshot)."""
    with conn.cursor(name=f"validate_{abs(hash(table))}", row_factory=dict_row) as cur:
        cur.itersize = itersize
        cur.execute(sql.SQL("SELECT * FROM {}").format(_ident(table)))
        yield from cur


def read_keys(
    conn: psycopg.Connection[Any],
    table: str,
    key_cols: tuple[str, ...],
    keys: Iterable[SourceKey],
) -> Iterator[dict[str, Any]]:
    """The rows of ``table`` whose ``key_cols`` match one of ``keys`` (typed Python values)."""
    todo = list(keys)
    if len(key_cols) == 1:
        # One array parameter: a short statement, not thousands of placeholders to parse.
        stmt = sql.SQL("SELECT * FROM {} WHERE {} = ANY(%s)").format(
            _ident(table), sql.Identifier(key_cols[0])
        )
        for i in range(0, len(todo), KEY_BATCH):
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(stmt, ([k[0] for k in todo[i : i + KEY_BATCH]],))
                yield from cur
        return
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in key_cols)
    one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(key_cols)))
    for i in range(0, len(todo), KEY_BATCH):
        part = todo[i : i + KEY_BATCH]
        stmt = sql.SQL("SELECT * FROM {} WHERE ({}) IN ({})").format(
            _ident(table), cols, sql.SQL(", ").join([one] * len(part))
        )
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(stmt, [v for k in part for v in k])
            yield from cur


def fold_all(
    conn: psycopg.Connection[Any],
    transforms: Iterable[TableTransform],
    shapes: Mapping[str, TableShape],
) -> Expectation:
    """The whole expected content of ``shapes`` from every row of ``transforms``' tables."""
    folder = Folder(shapes, partial=False)
    for t in transforms:
        for row in read_all(conn, t.source):
            folder.add(t, row)
    return folder.finish()


def fold_keys(
    conn: psycopg.Connection[Any],
    direction: Direction,
    source_keys: Mapping[str, set[SourceKey]],
    shapes: Mapping[str, TableShape],
    *,
    partial: bool,
) -> Expectation:
    """Expected rows from the named legacy rows only; a key no longer on legacy is a delete."""
    folder = Folder(shapes, partial=partial)
    for source, keys in source_keys.items():
        t = direction.tables[source]
        found: set[SourceKey] = set()
        for row in read_keys(conn, source, _key(t), keys):
            found.add(tuple(row[c] for c in _key(t)))
            folder.add(t, row)
        for gone in keys - found:
            folder.add_deleted(t, dict(zip(_key(t), gone, strict=True)))
    return folder.finish()
