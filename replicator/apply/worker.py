"""The apply worker: Kafka change log → typed rows → transforms → the target, exactly once.

Exactly-once effect (ARCHITECTURE.md section 4): in the same target transaction as the rows, the
worker stores the next Kafka offset of every partition it consumed and the last applied source
``commit_lsn``. On (re)assignment it seeks to those offsets; a message whose ``commit_lsn`` is
not above the stored one is a duplicate (a capture replay) and is skipped. A source transaction
sliced over several messages is applied in one target transaction: the worker commits only at
boundaries where no partition is inside an unfinished source transaction.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from connectors import pg
from connectors.copy_chunk import is_copy_chunk
from connectors.envelope import Envelope, decode_envelopes
from connectors.kafka_io import Consumer, Producer, ensure_topics
from connectors.pgsink import Batch, Sink
from replicator.apply.barrier import held_partitions, reach_marker, start_snapshot_phase
from replicator.apply.bulk import BulkLoader
from replicator.apply.controls import act_on_control
from replicator.apply.pacing import CommitPacer
from replicator.apply.positions import ApplyStats, Partition, gap_hint
from replicator.apply.rows import RowMapper, exclusive_targets
from replicator.apply.session import connect_session
from replicator.apply.set_aside import restore, set_aside, worth_setting_aside
from replicator.config import Settings
from replicator.derived import prove_on_source
from replicator.dlq.letters import DeadLetter, DeadLetterWriter, dead_letter, truncate_refusal
from replicator.drift.recorder import RelationWatch
from replicator.errors import (
    DataError,
    ReplicatorError,
    StateError,
    TargetRejected,
    TransformError,
    TransientDatabaseError,
)
from replicator.health import StageHealth, waiting_sleep
from replicator.retry import RetryPolicy
from replicator.stage_timings import apply_timings
from replicator.state import (
    add_snapshot_progress,
    add_table_stats,
    load_offsets,
    send_offset,
)
from transforms.api import Direction, Truncate

log = logging.getLogger(__name__)


class ApplyWorker:
    def __init__(
        self,
        settings: Settings,
        direction: Direction,
        *,
        dir_name: str = "fwd",
        target: Any = None,
        on_commit: Callable[[ApplyStats], None] | None = None,
        health: StageHealth | None = None,
    ) -> None:
        self.s = settings
        self.direction = direction
        self.dir_name = dir_name
        self.db = target if target is not None else settings.target
        self.changes_topic = settings.topic(dir_name, "changes")
        self.snapshot_topic = settings.topic(dir_name, "snapshot")
        self.topic = self.changes_topic  # the topic of the current phase
        self.stats = ApplyStats()
        self.health = health if health is not None else StageHealth()
        self._switch = False  # a phase switch a control message asked for, after the commit
        self._barrier_reached = False  # a barrier row in the open batch: try the phase after it
        self._batch_rows: dict[str, int] = {}  # rows written by the open batch, per table
        self._backfill_id: str | None = None
        self._snapshot_rows: dict[str, int] = {}
        self._drift = RelationWatch(self)  # schema changes seen in relations and the catalog
        self._rows = RowMapper(direction, on_relation=self._drift.see)
        self._on_commit = on_commit
        self._parts: dict[int, Partition] = {}
        self._reseeked = False
        # After the target refused a batch: partition -> offset up to which every row is
        # written under its own savepoint, so the poison row is dead-lettered alone.
        self._isolate_until: dict[int, int] = {}
        # A marker is a rendezvous someone waits for (a cutover's drain, validate, the lag
        # probe): its batch commits at the next boundary instead of after batch_max_wait_ms.
        self._marker_waiting = False
        self._current: tuple[int, int, int | None] = (0, 0, None)
        # Dead letters of the open batch: written to Kafka just before its commit, dropped
        # with it on a re-seek, so a replayed stretch never dead-letters a row twice.
        self._dead_pending: list[DeadLetter] = []
        self._truncate_owned = exclusive_targets(direction)
        self._timings, self._read_at = apply_timings(settings.metrics.stage_timings_dir), 0.0
        self._pacer = CommitPacer()  # how long a poll may hold the open batch

    # -- set-up --------------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The session, with any merge a flush left running waited for first: a flush inside a
        large source transaction returns while the target still merges (Sink, defer=True), so
        the next rows are prepared meanwhile; every other use of the session waits here."""
        self.sink.settle()
        return self._conn

    def _positions(self, partitions: list[int]) -> dict[int, int]:
        """Where each assigned partition resumes: the offsets stored beside the rows (none: 0).
        Anything written but not committed belongs to the old assignment: it is discarded and
        will be read again from the stored offsets."""
        # A merge a flush left running belongs to the discarded work too: its outcome (even a
        # refusal) no longer matters, and raising it here would break the group's rebalance.
        with contextlib.suppress(ReplicatorError):
            self.sink.settle()
        with pg.translated(self.db.masked()):
            self.conn.rollback()
            stored = load_offsets(self.conn, self.topic)
            held = held_partitions(self.conn) if self.topic == self.changes_topic else set()
            self.conn.commit()
        self._reseeked = True
        self._forget_uncommitted()
        out = {}
        for p in partitions:
            off, lsn = stored.get(p, (0, 0))
            self._parts[p] = Partition(next_offset=off, last_lsn=lsn, committed=off, held=p in held)
            out[p] = off
        return out

    def _forget_uncommitted(self) -> None:
        """Drop the positions and pending work of an earlier assignment or session. What was
        not committed with its rows is read again from the stored offsets; committing it
        later, from a new session, would skip the rows the failed transaction lost."""
        self._dead_pending = []
        self._bulk.discard()
        self._timings.forget()
        self._barrier_reached = False
        self._batch_rows = {}
        self._snapshot_rows = {}
        self._parts = {}

    # -- main loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        if not stop.is_set():
            RetryPolicy(
                self.s.retry,
                "apply",
                stop=stop,
                on_failure=lambda exc: self.health.waiting(f"{exc.message} (retrying)"),
                sleep=waiting_sleep(self.health, stop),
            ).run(lambda: self._run_once(stop))

    def _run_once(self, stop: threading.Event) -> None:
        # Subscribing to a topic that does not exist yet would leave the group without
        # partitions until the next metadata refresh: create them if the capture has not.
        ensure_topics(
            self.s.kafka.bootstrap_servers,
            self.s.topics(self.dir_name),
            self.s.kafka.replication_factor,
            **self.s.kafka.client_options(),
        )
        # Converters' derived SQL forms, proved before a bulk chunk is planned with them.
        prove_on_source(self.s.source if self.dir_name == "fwd" else self.s.target, self.direction)
        self._conn = connect_session(self.db, self.s.name, self.dir_name)
        self.sink = Sink(self._conn, self.db.masked())
        self._bulk = BulkLoader(
            self.direction,
            self.sink,
            self.db.masked(),
            flush=self._flush,
            change=self._change,
            dead=self._dead,
            count=self._count_bulk,
            connect=self._connect,
            connections=self.s.backfill.apply_connections,
        )
        producer = Producer(
            self.s.kafka.bootstrap_servers,
            compression=self.s.kafka.compression,
            **self.s.kafka.client_options(),
        )
        self.dlq = DeadLetterWriter(producer, self.s.topic(self.dir_name, "dlq"))
        try:
            while not stop.is_set():
                # A backfill in its snapshot phase is loaded before any later change.
                self._backfill_id = self._pending_backfill()
                snapshot = self._backfill_id is not None
                if not snapshot:  # what a loaded snapshot set aside comes back before any change
                    with pg.translated(self.db.masked()):
                        restore(self.conn, self._connect, self.s.backfill.apply_connections)
                self.topic = self.snapshot_topic if snapshot else self.changes_topic
                # Until the new consumer's assignment, nothing is ours to commit: a failed
                # session's dirty positions must not be stored by this one.
                self._forget_uncommitted()
                consumer = Consumer(
                    self.s.kafka.bootstrap_servers,
                    self.topic,
                    group=f"{self.s.name}-{self.dir_name}-{'snapshot' if snapshot else 'apply'}",
                    seek_to=self._positions,
                    gap_hint=gap_hint(self.dir_name),
                    **self.s.kafka.client_options(),
                )
                try:
                    self._loop(consumer, stop)
                finally:
                    consumer.close()
                self._switch = False
        finally:
            producer.close()
            self._bulk.close()
            with contextlib.suppress(ReplicatorError):
                self.sink.settle()  # a merge still running: its outcome no longer matters
            with contextlib.suppress(psycopg.Error):
                self._conn.rollback()
                self._conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        return connect_session(self.db, self.s.name, self.dir_name)

    def _pending_backfill(self) -> str | None:
        with pg.translated(self.db.masked()):
            row = self.conn.execute(
                "SELECT id FROM replicator.backfill WHERE status = 'snapshot' "
                "ORDER BY started_at LIMIT 1"
            ).fetchone()
            self.conn.commit()
        return str(row[0]) if row else None

    def _loop(self, consumer: Consumer, stop: threading.Event) -> None:
        batch = Batch()
        started = last_phase_check = time.monotonic()
        max_wait = self.s.apply.batch_max_wait_ms / 1000
        while not stop.is_set() and not self._switch:
            if not consumer.assigned:
                self.health.waiting("connected; waiting for Kafka to assign it partitions")
            elif not consumer.coordinated:
                self.health.waiting("Kafka's group coordinator is unreachable (retrying)")
            else:
                self.health.ready()
            pending = bool(len(batch)) or any(p.dirty for p in self._parts.values())
            wait_ms = self._pacer.poll_timeout_ms(
                pending=pending, at_boundary=self._at_boundary(), started=started, max_wait=max_wait
            )
            records = consumer.poll(timeout_ms=wait_ms)
            self._read_at = time.time()  # the stage timings' "read by apply"
            if not records and self._backfill_id and time.monotonic() - last_phase_check > 2:
                # A worker without the snapshot partition learns from the target when the
                # snapshot phase is over.
                last_phase_check = time.monotonic()
                if not len(batch) and self._pending_backfill() != self._backfill_id:
                    return
            holding = any(p.held for p in self._parts.values())
            if holding and time.monotonic() - last_phase_check > 0.5:
                # Held at a backfill marker: ask the target, even while a writer's changes keep
                # coming (records polled now are read again from the stored offsets).
                last_phase_check = time.monotonic()
                idle = not len(batch) and not any(p.dirty for p in self._parts.values())
                if idle and self._held_released():
                    return
            if self._reseeked:
                self._reseeked = False
                batch, started = Batch(), time.monotonic()
            try:
                for partition, offset, value in records:
                    part = self._parts.get(partition)
                    if part is None or offset < part.next_offset:
                        continue  # re-delivered from before a re-seek
                    if part.held and part.open_lsn is None:
                        # Past the marker's transaction: read again from the stored offset
                        # after the snapshot.
                        continue
                    self._handle(partition, offset, value, batch)
                    part.next_offset = offset + 1
                    part.dirty = True
                    if not self._at_boundary():
                        if len(batch) >= self.s.apply.batch_max_changes:
                            # Inside a large source transaction: write, commit at its end.
                            self._flush(batch)
                        continue
                    if (
                        self._isolate_until
                        or self._switch
                        or self._marker_waiting
                        or len(batch) >= self.s.apply.batch_max_changes
                    ):
                        self._marker_waiting = False
                        self._commit(batch, consumer)
                        batch, started = Batch(), time.monotonic()
                        self._leave_isolation()
                        if self._switch:
                            return
                dirty = any(p.dirty for p in self._parts.values())
                waited = time.monotonic() - started >= max_wait
                if dirty and self._at_boundary() and (not records or waited):
                    self._commit(batch, consumer)
                    batch, started = Batch(), time.monotonic()
            except TargetRejected as exc:
                # The target refused a row the transform let through. Go back to the stored
                # offsets and write that stretch again one row at a time, so that only the
                # poison row is dead-lettered.
                log.warning("target refused a batch (%s); isolating the row", exc.message)
                self._isolate_until = {p: part.next_offset for p, part in self._parts.items()}
                consumer.reseek()

    def _held_released(self) -> bool:
        """Leave the held changes phase: the snapshot phase began, or the backfill is applied."""
        if self._try_snapshot_phase() or self._pending_backfill() is not None:
            return True
        with pg.translated(self.db.masked()):
            held = held_partitions(self.conn)
            self.conn.commit()
        return not held & {p for p, part in self._parts.items() if part.held}

    def _at_boundary(self) -> bool:
        return all(p.open_lsn is None for p in self._parts.values())

    def _leave_isolation(self) -> None:
        if self._isolate_until and all(
            self._parts[p].next_offset >= o
            for p, o in self._isolate_until.items()
            if p in self._parts
        ):
            self._isolate_until = {}

    # -- one message ---------------------------------------------------------------------------

    def _handle(self, partition: int, offset: int, value: bytes, batch: Batch) -> None:
        self.stats.messages += 1
        self._current = (partition, offset, None)
        if is_copy_chunk(value):  # a backfill chunk as COPY output: the bulk path
            self._bulk.load(partition, offset, value, batch)
            return
        self._bulk.join(batch)  # what follows may depend on the rows of chunks in flight
        try:
            envs = decode_envelopes(value)
        except DataError as exc:
            self._dead(exc, partition, offset, None, value.decode("utf-8", "replace")[:10_000])
            return
        for env in envs:  # several whole transactions when the capture had a backlog
            self._envelope(partition, offset, env, batch)
            self._timings.read(partition, offset, env, self._read_at)
            if self._isolate_until and len(envs) > 1:
                # Row by row after a refusal: written per transaction, so that a refused
                # row's letter names its own transaction's commit LSN.
                self._flush(batch)

    def _envelope(self, partition: int, offset: int, env: Envelope, batch: Batch) -> None:
        part = self._parts[partition]
        if self.topic == self.snapshot_topic:
            # Snapshot chunks are idempotent upserts: a re-sent chunk needs no de-duplication.
            if env.control is not None:
                self._control(env, partition, batch)
            for change in env.changes:
                self._change(env, change, partition, offset, batch)
            return
        if env.xid == 0 and env.control is not None:
            # A message outside any transaction (heartbeat). Its LSN is the *end* of its WAL
            # record, which can equal the commit LSN of the next transaction: it must not
            # advance the position that de-duplicates transactions. Replays are harmless.
            self._control(env, partition, batch)
            return
        if part.open_lsn is not None:
            if env.commit_lsn != part.open_lsn:
                raise StateError(
                    f"partition {partition}: transaction at {part.open_lsn} ended without its "
                    f"last slice; the log is incomplete at offset {offset}"
                )
            if env.seq < part.open_seq:
                self.stats.skipped_duplicates += 1
                return  # a slice replayed after a capture restart
        elif env.commit_lsn <= part.last_lsn:
            self.stats.skipped_duplicates += 1
            return
        self._current = (partition, offset, env.commit_lsn)
        part.open_lsn, part.open_seq = (None, 0) if env.last else (env.commit_lsn, env.seq + 1)
        if env.last:
            part.last_lsn, part.last_ts = env.commit_lsn, env.commit_ts or part.last_ts
        if env.control is not None:
            self._control(env, partition, batch)
            return
        for change in env.changes:
            self._change(env, change, partition, offset, batch)

    def _change(
        self, env: Envelope, change: Any, partition: int, offset: int, batch: Batch
    ) -> None:
        table, transform = self._rows.relation(env, change.rel)
        if transform is None:
            if table in self.direction.ignored:
                return
            self._dead(
                TransformError(f"no mapping for source table {table}", table=table),
                partition,
                offset,
                env.commit_lsn,
                change.to_wire(),
            )
            return
        if change.op == "snapshot":
            self._snapshot_rows[table] = self._snapshot_rows.get(table, 0) + 1
        if change.op == "truncate":
            self._flush(batch)
            if owned := self._truncate_owned.get(table, []):
                self.sink.truncate(owned)
            if refused := truncate_refusal(self.direction, table, owned):  # never a silent skip
                self._dead(refused, partition, offset, env.commit_lsn, change.to_wire())
            return
        try:
            if self._rows.copy_into(env, change, transform, batch):
                return
            ops = self._rows.ops(env, change, transform)
        except DataError as exc:
            if exc.table is None:
                exc.table = table
            self._dead(exc, partition, offset, env.commit_lsn, change.to_wire())
            return
        for op in ops:
            if isinstance(op, Truncate):
                self._flush(batch)
                self.sink.truncate([op.table])
            else:
                batch.add(op)

    def _count_bulk(self, table: str, rows: int, touched: dict[str, int]) -> None:
        self._snapshot_rows[table] = self._snapshot_rows.get(table, 0) + rows
        self._count_written(touched)

    def _count_written(self, touched: dict[str, int]) -> None:
        for t, n in touched.items():
            self.stats.rows[t] = self.stats.rows.get(t, 0) + n
            self._batch_rows[t] = self._batch_rows.get(t, 0) + n

    def _control(self, env: Envelope, partition: int, batch: Batch) -> None:
        act_on_control(self, env, partition, batch)  # replicator.apply.controls

    def _reach_backfill_marker(self, ctl: dict[str, Any], partition: int) -> None:
        """Hold this partition at the marker (replicator.apply.barrier)."""
        if reach_marker(self.conn, ctl, partition):
            self._parts[partition].held = True
            self._barrier_reached = True

    def _try_snapshot_phase(self) -> bool:
        """Start the snapshot phase if every partition reached the marker. Its own transaction,
        after the barrier rows' commit: a lock held across polls could deadlock a rebalance."""
        with pg.translated(self.db.masked()):
            started = start_snapshot_phase(self.conn)
            if started is not None and started[0]:
                owned = [t for src in started[1] for t in self._truncate_owned.get(src, [])]
                if owned:
                    self.sink.truncate(owned)
            elif started is not None:  # a first backfill: empty tables load without indexes
                tables = worth_setting_aside(self.conn, started[2], self.direction)
                set_aside(self.conn, started[2], tables, self.s.backfill.keep_indexes)
            self.conn.commit()
        return started is not None

    def _dead(
        self, exc: ReplicatorError, partition: int, offset: int, lsn: int | None, change: Any
    ) -> None:
        log.error("dead-lettered (partition %s offset %s): %s", partition, offset, exc.message)
        letter = dead_letter(
            exc, topic=self.topic, partition=partition, offset=offset, commit_lsn=lsn, change=change
        )
        self._dead_pending.append(letter)

    # -- writing -------------------------------------------------------------------------------

    def _flush(self, batch: Batch) -> None:
        if not len(batch):
            return
        if self._isolate_until:
            touched = self._flush_isolated(batch)
        else:
            with pg.translated(self.db.masked()):
                touched = self.sink.flush(batch, defer=True)
        self._count_written(touched)
        batch.tables.clear()
        batch.size = 0

    def _flush_isolated(self, batch: Batch) -> dict[str, int]:
        """Every row under its own savepoint: a refused row is dead-lettered, the rest apply."""
        touched: dict[str, int] = {}
        for table, one in batch.split():
            try:
                with pg.translated(self.db.masked()), self.conn.transaction():
                    self.sink.flush(one)
                touched[table] = touched.get(table, 0) + 1
            except TargetRejected as exc:
                key_cols = one.key_columns[table]
                key = next(iter(one.tables[table]))
                exc.table, exc.key = table, dict(zip(key_cols, key, strict=True))
                partition, offset, lsn = self._current
                self._dead(exc, partition, offset, lsn, {"table": table, "key": exc.key})
        return touched

    def _commit(self, batch: Batch, consumer: Consumer) -> None:
        begun = time.monotonic()
        try:
            # No offset is stored past a chunk in flight: a phase switch waits for them all.
            held = self._bulk.settle(batch, everything=self._switch)
            self._flush(batch)
            for exc in self.sink.sweep(self.s.apply.patch_wait_s, begun):  # patches' rows came
                self._dead(exc, *self._current, {"table": exc.table, "key": exc.key})
            self._store_positions(held)
            for letter in self._dead_pending:
                self.dlq.write(letter)
            with pg.translated(self.db.masked()):
                self.conn.commit()
            self.sink.committed()
            self.stats.dead_letters += len(self._dead_pending)
            self._dead_pending = []
            self._bulk.committed()
            self._timings.committed()
            self._pacer.committed(begun)
        except ReplicatorError:
            # The connection may be the thing that failed; the error raised says so already.
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()
            raise
        if self._barrier_reached:
            self._barrier_reached = False
            if self._try_snapshot_phase():
                self._switch = True
        done = {p: part.committed for p, part in self._parts.items() if part.dirty}
        for p, part in self._parts.items():
            part.dirty = p in held  # stored up to a chunk in flight: the rest at the next commit
            self.stats.last_commit_lsn = max(self.stats.last_commit_lsn, part.last_lsn)
        self.stats.commits += 1
        consumer.commit_advisory(done)
        if self._on_commit is not None:
            self._on_commit(self.stats)

    def _store_positions(self, held: dict[int, int]) -> None:
        """The batch's positions, fenced (a worker that lost a partition cannot commit), snapshot
        progress and rows per table, sent behind the merges: one round trip for them all."""
        conn = self._conn  # not self.conn: that would wait for the merges first
        with pg.translated(self.db.masked()):
            self.sink.hold()
            fences = [
                (
                    p,
                    part,
                    upto,
                    send_offset(
                        conn, self.topic, p, upto, part.last_lsn, part.committed, part.last_ts
                    ),
                )
                for p, part in self._parts.items()
                if part.dirty
                for upto in (min(part.next_offset, held.get(p, part.next_offset)),)
            ]
            progress = self._snapshot_rows and self._backfill_id is not None
            if progress:
                add_snapshot_progress(conn, str(self._backfill_id), self._snapshot_rows)
            add_table_stats(conn, self.topic, self._batch_rows)
            self.sink.settle()
        if progress:
            self._snapshot_rows = {}
        self._batch_rows = {}
        for p, part, upto, cur in fences:
            if cur.rowcount != 1:
                raise TransientDatabaseError(
                    f"partition {p} was committed by another worker; re-reading its position"
                )
            part.committed = upto
