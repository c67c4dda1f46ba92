"""Rollback's verification: which legacy rows the reverse stream wrote, to re-check them forward.

After a rollback's drain, legacy must hold what the target holds. The reverse changes topic is
the record of every target change since the cutover; the reverse transforms turn each into the
legacy rows it wrote (table and key). Validating exactly those legacy keys forward — their
transformed rows against the target — covers everything the reverse direction could have got
wrong, in time proportional to the writes made on the target, not to the tables' size.

The topic is read in two parts: up to its end before the fence (the preflight, no write
blocked), then only the tail inside the write pause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from connectors import pg
from connectors.envelope import Envelope, decode_envelopes
from connectors.pgtypes import TextLoader
from replicator.config import DatabaseSettings, KafkaSettings
from replicator.errors import DataError
from replicator.validate.expect import SourceKey
from replicator.validate.fast import read_range
from transforms.api import Delete, MappingSet, Patch, RowChange, Truncate, Upsert


@dataclass
class ReverseKeys:
    """The legacy keys written by the reverse stream, accumulated over successive reads."""

    mapping: MappingSet
    legacy: DatabaseSettings
    keys: dict[str, set[SourceKey]] = field(default_factory=dict)
    full: set[str] = field(default_factory=set)  # legacy tables to check whole
    offsets: dict[int, int] = field(default_factory=dict)
    changes: int = 0
    # Target writes the reverse mapping refuses (dead-lettered by the reverse apply): legacy
    # will not hold them. Those the preflight read are letters its DLQ check counts; one read
    # after that fails the switch (verify.py).
    refused: list[str] = field(default_factory=list)
    _loader: TextLoader = field(default_factory=TextLoader)
    _oids: dict[str, dict[str, int]] = field(default_factory=dict)
    _conn: psycopg.Connection[Any] | None = None

    def read(self, kafka: KafkaSettings, topic: str, timeout_s: float = 60.0) -> None:
        """Read ``topic`` from where the last read ended to its current end."""
        with (
            pg.connect(self.legacy.conninfo(), autocommit=True) as conn,
            pg.translated(self.legacy.masked()),
        ):
            self._conn = conn
            try:
                # After the first read (the preflight's) the partitions are known: the read in
                # the write pause skips the cluster-wide metadata request.
                known = list(self.offsets) if self.offsets else None
                ends = read_range(
                    kafka.bootstrap_servers,
                    topic,
                    self.offsets,
                    self._collect,
                    timeout_s,
                    partitions=known,
                    gap_hint="the rollback cannot list the legacy rows the reverse stream "
                    "wrote: keep the topic's log for good (`replicator check` prints the "
                    "command) and compare legacy with the target before going back",
                    **kafka.client_options(),
                )
            finally:
                self._conn = None
        self.offsets.update(ends)

    def _collect(self, value: bytes) -> None:
        try:
            envs = decode_envelopes(value)
        except DataError as exc:
            self.refused.append(f"an undecodable message: {exc.message}")
            return
        for env in envs:
            self._collect_envelope(env)

    def _collect_envelope(self, env: Envelope) -> None:
        if env.control is not None:
            return
        for change in env.changes:
            rel = env.relations.get(change.rel)
            t = self.mapping.reverse.transform_for(rel.qualname) if rel else None
            if rel is None or t is None:
                continue  # a target-only table (sessions, verifications): nothing on legacy
            self.changes += 1
            if change.op == "truncate":
                self.full.update(w.name for w in t.writes)
                continue
            try:
                new = self._typed(change.new, rel.columns, rel.type_oids)
                old = self._typed(change.old, rel.columns, rel.type_oids)
                ops = t(
                    RowChange(
                        op=change.op,  # type: ignore[arg-type]
                        table=rel.qualname,
                        new=new,
                        old=old,
                        unchanged=frozenset(change.unchanged),
                        key_columns=rel.key_columns,
                    )
                )
            except DataError as exc:
                self.refused.append(f"{rel.qualname}: {exc.message}")
                continue
            for op in ops:
                self._note(op)

    def _typed(
        self, image: Mapping[str, str | None] | None, cols: tuple[str, ...], oids: tuple[int, ...]
    ) -> dict[str, Any] | None:
        return None if image is None else self._loader.row(image, cols, oids)

    def _note(self, op: Upsert | Patch | Delete | Truncate) -> None:
        table = op.table
        if isinstance(op, Truncate):
            self.full.add(table)
            return
        fwd = self.mapping.forward.tables.get(table)
        if fwd is None:
            return  # written by the reverse mapping but not mapped forward: nothing to compare
        key_cols = fwd.source_key
        if not key_cols or set(op.key) != set(key_cols):
            # Keyed by something other than the legacy table's key: the whole table it is.
            self.full.add(table)
            return
        oids = self._legacy_oids(table)
        # Typed the way a read of the legacy row types it (a uuid column gives a UUID), so that
        # the validator can tell a key that is gone from one that is there.
        text = {c: None if op.key[c] is None else str(op.key[c]) for c in key_cols}
        typed = self._loader.row(text, key_cols, tuple(oids.get(c, 25) for c in key_cols))
        self.keys.setdefault(table, set()).add(tuple(typed[c] for c in key_cols))

    def _legacy_oids(self, table: str) -> dict[str, int]:
        if table not in self._oids:
            assert self._conn is not None, "only while reading"
            schema, _, name = table.partition(".")
            rows = self._conn.execute(
                "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = "
                "(quote_ident(%s) || '.' || quote_ident(%s))::regclass "
                "AND attnum > 0 AND NOT attisdropped",
                (schema, name),
            ).fetchall()
            self._oids[table] = {str(r[0]): int(r[1]) for r in rows}
        return self._oids[table]
