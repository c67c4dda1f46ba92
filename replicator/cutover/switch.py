"""Cutover (and, mirrored, rollback): fence, drain, verify, sequences, reverse slot, switch.

ARCHITECTURE.md section 9. No writes are blocked until preflight has passed. From the fence on,
every step is timed, printed as it happens and journaled in the target's ``replicator`` schema;
a failure before the switch completes unfences the old writer, so it stays authoritative and
sync keeps running. The write pause the application sees is fence commit → switch hook done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from connectors import kafka_io, pg
from connectors.pgsource import create_slot, ensure_publication, slot_info
from connectors.pgtypes import TextLoader
from replicator.config import Settings
from replicator.cutover import decision
from replicator.cutover import fence as fencing
from replicator.cutover.plan import JOURNAL_SQL, Journal, Outcome, StepResult, plan_for
from replicator.cutover.preflight import Preflight
from replicator.cutover.verify import KeyedCheck, Mismatch, Tail
from replicator.errors import CutoverAborted, PreconditionError, ReplicatorError
from replicator.state import ensure_schema
from replicator.validate.fast import Touched
from transforms.api import MappingSet

if TYPE_CHECKING:
    from replicator.validate.expect import SourceKey
    from replicator.validate.reverse import ReverseKeys

log = logging.getLogger(__name__)

Report = Callable[[StepResult], None]


class Cutover(Preflight):
    def __init__(
        self,
        settings: Settings,
        mapping: MappingSet,
        *,
        action: str = "cutover",
        max_lag_s: float | None = None,
        lock_timeout_ms: int | None = None,
        switch_hook: str | None = None,
        validation_max_age_s: float = 24 * 3600,
        report: Report | None = None,
        fail_at: str | None = None,
    ) -> None:
        self.s = settings
        self.mapping = mapping
        self.plan = plan_for(settings, mapping, action)
        self.run_id = uuid.uuid4().hex[:12]
        self.max_lag_s = max_lag_s if max_lag_s is not None else settings.cutover.max_lag_s
        self.lock_timeout_ms = lock_timeout_ms or settings.cutover.lock_timeout_ms
        self.switch_hook = switch_hook if switch_hook is not None else settings.cutover.switch_hook
        self.validation_max_age_s = validation_max_age_s
        self._report = report or (lambda r: None)
        # Test hook: raise at the named step, to prove every abort path restores the old writer.
        self._fail_at = fail_at or os.environ.get("REPLICATOR_CUTOVER_FAIL_AT")
        self._reverse_keys: ReverseKeys | None = None
        self._partitions = 0  # of the draining direction's topic, once the preflight counted them
        self._touched: Touched | None = None  # the changes topic as the preflight read it
        self._conns: dict[str, psycopg.Connection[Any]] = {}  # held across the pause
        self._check: KeyedCheck | None = None
        self._tail: Tail | None = None
        self._tail_keys: Callable[[], tuple[dict[str, set[SourceKey]], set[str]]] | None = None
        self._carried = Mismatch()  # rows the pre-fence verification saw in flight
        self.journal = Journal(settings, self.plan, self.run_id)
        self._hook_started = False
        self._hook_refused = False
        self._resumed_fresh = False

    # -- the whole run ---------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False) -> Outcome:
        out = Outcome(self.plan.action, self.run_id, switched=False, dry_run=dry_run)
        try:
            pending = self._pending_decision()
            if pending is not None:
                if dry_run or pending.action != self.plan.action:
                    raise PreconditionError(
                        pending.explain(),
                        hint=f"run `replicator {pending.action} --yes` to finish it first",
                    )
                return self._resume(out, pending)
            return self._switch(out, dry_run)
        finally:
            self._close()

    def _switch(self, out: Outcome, dry_run: bool) -> Outcome:
        p = self.plan
        with self._step(out, "preflight"):
            problems = self.preflight()
            out.preflight_problems = problems
            if problems:
                raise PreconditionError(
                    f"{p.action} preflight failed:\n  " + "\n  ".join(problems),
                    hint="fix each reason (`replicator status` shows them), then run it again",
                )
        try:
            # Before the fence, writes flowing: connections, the next direction's slot, and a
            # verification of everything up to the changes topic's current end.
            with self._step(out, "arm"):
                self._open()
                if not dry_run:
                    self._arm_next_direction()
            with self._step(out, "pre-verify"):
                self._pre_verify()
            with self._step(out, "catch-up"):
                self._catch_up(dry_run)
        except BaseException:
            if not dry_run:
                self._disarm_next_direction()
            raise
        self.journal.hold()  # journal rows wait until the pause is over
        try:
            with self._step(out, "fence"):
                f = fencing.fence(
                    p.old,
                    p.drain.source_tables,
                    app_roles=self.s.cutover.app_roles,
                    lock_timeout_ms=self.lock_timeout_ms,
                    attempts=self.s.cutover.lock_attempts,
                    marker={"action": p.action, "run_id": self.run_id},
                    conn=self._conn("old"),
                )
        except BaseException:
            self.journal.release()
            if not dry_run:
                self._disarm_next_direction()
            raise
        decided = False
        try:
            with self._step(out, "drain"):
                applied = self._drain(f)
            with self._step(out, "verify"):
                self._verify(applied)
            if dry_run:
                with self._step(out, "unfence"):
                    fencing.unfence(p.old, f)
                out.pause_s = time.monotonic() - f.committed_at
                self.journal.release()
                return out
            decided = True  # from its first write on: a partial decision is taken back below
            with self._step(out, "decide"):
                self._decide()
            # The point of no return: the old writer is never unfenced after this, unless the
            # hook says it did not switch the application.
            self._hook_started = False
            with self._step(out, "switch"):
                self._hook_started = True
                self._run_hook()
        except BaseException as exc:
            out.pause_s = time.monotonic() - f.committed_at
            if decided and self._hook_started and not self._hook_refused:
                self.journal.release()
                raise CutoverAborted(
                    f"{p.action} stopped in its switch hook ({_reason(exc)}); the application may"
                    " have been switched, so the old writer stays fenced",
                    step="switch",
                    hint=f"check the application, then run `replicator {p.action} --yes` again"
                    " to finish (it runs the hook again)",
                ) from exc
            if not self._abort(f, decided):
                self.journal.release()
                raise CutoverAborted(
                    f"{p.action} stopped at {_step_of(exc)} and could not take back its"
                    " decision; the old writer stays fenced",
                    step=_step_of(exc),
                    hint=f"run `replicator {p.action} --yes` again to finish the switch",
                ) from exc
            self.journal.release()
            raise
        out.pause_s = time.monotonic() - f.committed_at
        self.journal.release()
        self._finish_step(out)
        return out

    def _resume(self, out: Outcome, pending: decision.Decision) -> Outcome:
        """A rerun after a switch stopped past its decision: the hook again, then the direction.
        Never unfences: the application may write to the new writer already."""
        p = self.plan
        out.resumed_run_id = pending.run_id
        with self._step(out, "resume"):
            self._open()
            old, new = self._conn("old"), self._conn("new")
            with pg.translated(p.old.masked()):
                fenced = fencing.fenced_tables(old)
            if not fenced:
                # Taken back by hand (the fence is gone): nothing was switched. Start afresh.
                log.warning("%s: a stale decision without a fence was dropped", p.action)
                self._forget_decision()
                self._resumed_fresh = True
            else:
                with pg.translated(p.new.masked()):
                    armed = slot_info(new, self.s.slot(p.new_dir)).exists
                if not armed:
                    raise CutoverAborted(
                        f"the {p.new_dir} slot {self.s.slot(p.new_dir)} is gone: writes made on"
                        " the new writer since the decision cannot be streamed back",
                        step="resume",
                        hint="see docs/cutover.md (a lost slot after the switch)",
                    )
        if self._resumed_fresh:
            out.resumed_run_id = None
            return self._switch(out, dry_run=False)
        with self._step(out, "switch"):
            self._run_hook()
        self._finish_step(out)
        return out

    def _finish_step(self, out: Outcome) -> None:
        try:
            with self._step(out, "finish"):
                self._finish()
        except CutoverAborted as exc:
            raise CutoverAborted(
                f"{self.plan.action}: the application was switched but the new direction is not"
                f" recorded yet ({exc.message}); the old writer stays fenced",
                step="finish",
                hint=f"run `replicator {self.plan.action} --yes` again to finish",
            ) from None
        out.switched = True

    # -- before the fence ------------------------------------------------------------------------

    def _open(self) -> None:
        """Connections to both writers held across the pause (a connection costs milliseconds),
        and the tables the pause writes to, created now."""
        p = self.plan
        for side, db in (("old", p.old), ("new", p.new)):
            if side in self._conns:
                continue
            conn = self._conns[side] = pg.connect(db.conninfo(), autocommit=True)
            with pg.translated(db.masked()):
                ensure_schema(conn)
                decision.ensure_table(conn)
                if db is self.s.target:
                    conn.execute(JOURNAL_SQL)
        with pg.translated(p.old.masked()):
            fencing.prepare(self._conn("old"))

    def _conn(self, side: str) -> psycopg.Connection[Any]:
        return self._conns[side]

    def _close(self) -> None:
        for closer in (self._tail, self._check):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer.close()
        self._tail = self._check = None
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._conns = {}

    def _pre_verify(self) -> None:
        """Everything up to the changes topic's current end ``E1``, proven with writes flowing;
        a consumer then waits at ``E1`` for the pause's tail (replicator.cutover.verify)."""
        from replicator.validate.fast import _collect

        p = self.plan
        self._check = KeyedCheck(self.s, self.mapping)
        bootstrap = self.s.kafka.bootstrap_servers
        if p.action == "cutover":
            from replicator.validate.run import validate

            touched = self._touched or Touched()
            report = validate(
                self.s, self.mapping, fast=True, marker_timeout_s=5.0, read_ahead=touched
            )
            if report.difference_count or report.unsettled_count:
                raise CutoverAborted(
                    f"verification found {report.difference_count} difference(s)"
                    f" and {report.unsettled_count} row(s) still changing",
                    step="pre-verify",
                    hint="`replicator validate` lists them; nothing was fenced",
                )
            tail = Touched()
            loader = TextLoader()
            self._tail = Tail(
                bootstrap,
                self._topic("fwd"),
                touched.end_offsets,
                lambda v: _collect(v, self.mapping.forward, loader, tail),
            )
            self._tail_keys = lambda: (tail.keys, tail.truncated)
            return
        from replicator.validate.orphans import find_orphans
        from replicator.validate.reverse import ReverseKeys

        rk = self._reverse_keys
        if rk is None:
            raise CutoverAborted("the preflight did not read the reverse stream", step="pre-verify")
        rk.read(bootstrap, self._topic("rev"))
        carried = self._check.compare(rk.keys, rk.full)
        if carried.rejected:
            raise CutoverAborted(
                f"{carried.rejected} legacy row(s) written by the reverse stream are refused by"
                " the forward mapping",
                step="pre-verify",
                hint="`replicator validate` lists them; nothing was fenced",
            )
        _, orphans = find_orphans(
            self._check.target, self.mapping.forward, self._check.selected, None
        )
        if orphans:
            raise CutoverAborted(
                f"{orphans} target row(s) point at a parent that is not there",
                step="pre-verify",
                hint="`replicator validate` lists them; nothing was fenced",
            )
        self._carry(carried)  # rows in flight now: compared again once both sides are static
        tail_rk = ReverseKeys(self.mapping, self.s.source, offsets=dict(rk.offsets))
        tail_rk._oids = rk._oids
        tail_rk._conn = self._conn("new")  # legacy, for the types of a table not seen yet
        self._tail = Tail(bootstrap, self._topic("rev"), rk.offsets, tail_rk._collect)
        self._tail_keys = lambda: (tail_rk.keys, tail_rk.full)

    def _catch_up(self, dry_run: bool, rounds: int = 4, short_s: float = 0.05) -> None:
        """Shrink the pause's share: what arrived while the last check ran is compared now, with
        writes flowing (rows in flight are carried into the pause), until a round is short. Then
        the new direction's slot is moved past the draining apply's writes so far, leaving the
        pause's advance little WAL to decode."""
        assert self._tail is not None and self._check is not None
        for _ in range(rounds):
            start = time.monotonic()
            self._tail.read_to(self._tail.end_offsets())
            keys, full = self._take_tail()
            if keys or full:
                found = self._check.compare(keys, full)
                if found.rejected:
                    raise CutoverAborted(
                        f"{found.rejected} legacy row(s) are refused by the forward mapping",
                        step="catch-up",
                        hint="`replicator validate` lists them; nothing was fenced",
                    )
                self._carry(found)
            if time.monotonic() - start < short_s:
                break
        if not dry_run:
            with pg.translated(self.plan.new.masked()):
                self._conn("new").execute(
                    "SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())",
                    (self.s.slot(self.plan.new_dir),),
                )

    def _take_tail(self) -> tuple[dict[str, set[SourceKey]], set[str]]:
        """The keys the tail consumer collected since the last call (and forget them)."""
        assert self._tail_keys is not None
        keys, full = self._tail_keys()
        taken = ({t: set(k) for t, k in keys.items() if k}, set(full))
        keys.clear()
        full.clear()
        return taken

    def _carry(self, found: Mismatch) -> None:
        for t, k in found.keys.items():
            self._carried.keys.setdefault(t, set()).update(k)
        self._carried.full |= found.full

    # -- inside the pause ------------------------------------------------------------------------

    def _drain(self, f: fencing.Fence) -> dict[int, int]:
        """Until apply has passed the fence marker; returns its offsets as of then."""
        p = self.plan
        # Counted by the preflight's lag probe: no Kafka metadata round trip in the pause.
        partitions = self._partitions or kafka_io.partition_count(
            self.s.kafka.bootstrap_servers, self._topic(p.old_dir)
        )
        with pg.translated(p.new.masked()):
            applied = fencing.wait_drained(
                self._conn("new"),
                self._topic(p.old_dir),
                f.marker_id,
                partitions,
                self.s.cutover.drain_timeout_s,
            )
        if applied is None:
            raise CutoverAborted(
                f"apply did not pass the fence marker within {self.s.cutover.drain_timeout_s:.0f}s",
                step="drain",
                hint="is `replicator run` (or `apply`) running? `replicator status` shows its lag",
            )
        return applied

    def _verify(self, applied: dict[int, int]) -> None:
        """Both sides are static now: the keys changed since the pre-fence verification's
        ``E1`` (up to what apply applied), and the rows it saw in flight, compared exactly."""
        assert self._tail is not None and self._tail_keys is not None and self._check
        self._tail.read_to(applied)
        keys, full = self._take_tail()
        for t, k in self._carried.keys.items():
            keys.setdefault(t, set()).update(k)
        found = self._check.compare(keys, full | self._carried.full)
        if found:
            raise CutoverAborted(
                f"verification found {len(found.differences) + found.rejected} difference(s)",
                step="verify",
                hint="`replicator validate` lists them",
            )

    def _decide(self) -> None:
        """Sequences set and the decision recorded: one round trip on each writer. On the new
        one, with the same statement: its slot moved past everything written so far (the
        draining apply's rows must not echo back), and the fence of an earlier switch the
        other way dropped."""
        p = self.plan
        old, new = self._conn("old"), self._conn("new")
        record = decision.record(self.s.name, p.action, self.run_id, p.old_dir, p.new_dir)
        seqs = p.drain.sequences
        with pg.translated(p.old.masked()):
            highs: list[int] = []
            if seqs:
                cur = old.execute(
                    sql.SQL("{}; SELECT {}").format(
                        record,
                        sql.SQL(", ").join(
                            sql.SQL("(SELECT coalesce(max({}), 0) FROM {})").format(
                                sql.Identifier(q.column), sql.Identifier(*q.table.split(".", 1))
                            )
                            for q in seqs
                        ),
                    )
                )
                while cur.nextset():
                    pass
                row = cur.fetchone()
                highs = [int(v) for v in row] if row else [0] * len(seqs)
            else:
                old.execute(record)
        self._inject("decide:new")
        statements = [
            sql.SQL("SELECT pg_replication_slot_advance({}, pg_current_wal_lsn())").format(
                sql.Literal(self.s.slot(p.new_dir))
            ),
            *(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({}, {}), "
                    "GREATEST({}, (SELECT coalesce(max({}), 0) FROM {}), 1))"
                ).format(
                    sql.Literal(fencing._quoted(q.table)),
                    sql.Literal(q.column),
                    sql.Literal(high),
                    sql.Identifier(q.column),
                    sql.Identifier(*q.table.split(".", 1)),
                )
                for q, high in zip(seqs, highs, strict=True)
            ),
            sql.SQL(fencing.DROP_ALL_FENCES),
            record,
        ]
        with pg.translated(p.new.masked()):
            new.execute(sql.SQL("; ").join(statements))

    def _abort(self, f: fencing.Fence, decided: bool) -> bool:
        """Not switched: take back a decision, then unfence the old writer and drop the new
        direction's slot. False when the decision could not be taken back: the fence stays."""
        p = self.plan
        if decided:
            try:
                self._forget_decision()
            except ReplicatorError as exc:
                log.error("%s: the decision could not be taken back: %s", p.action, exc.message)
                return False
        fencing.unfence(p.old, f)
        self._disarm_next_direction()
        self.journal.add(StepResult("unfence", True, 0.0, "aborted: old writer restored"))
        return True

    def _forget_decision(self) -> None:
        for side, db in (("new", self.plan.new), ("old", self.plan.old)):
            with pg.translated(db.masked()):
                self._conn(side).execute(decision.forget(self.s.name))

    def _pending_decision(self) -> decision.Decision | None:
        for db in (self.s.target, self.s.source):
            try:
                with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                    found = decision.read(conn, self.s.name)
            except ReplicatorError:
                continue
            if found is not None:
                return found
        return None

    def _finish(self) -> None:
        """The new direction recorded and the decision deleted, target first (the side the
        pipeline and `status` read first), one statement each."""
        p = self.plan
        self._inject("finish:target")
        for db in (self.s.target, self.s.source):
            side = "new" if db is p.new else "old"
            with pg.translated(db.masked()):
                self._conn(side).execute(decision.finish(self.s.name, p.new_dir))
            self._inject("finish:source")

    def _inject(self, point: str) -> None:
        """Test hook: fail at a point inside a step (REPLICATOR_CUTOVER_FAIL_AT)."""
        if self._fail_at == point:
            self._fail_at = None
            raise CutoverAborted(f"induced failure at {point}", step=point.split(":")[0])

    def _arm_next_direction(self) -> None:
        """Publication and slot on the new writer, created now: the draining apply has stopped
        writing, so nothing it wrote can echo back through the new stream."""
        p = self.plan
        with pg.connect(p.new.conninfo(), autocommit=True) as conn, pg.translated(p.new.masked()):
            if p.new_dir == "rev":
                # Reverse deletes need the whole old row: the target's keys are derived ids,
                # the legacy key is in its columns (member → organization_member).
                for table in p.arm.source_tables:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                            sql.Identifier(*table.split(".", 1))
                        )
                    )
            ensure_publication(conn, self.s.publication_for(p.new_dir), p.arm.source_tables)
            if slot_info(conn, self.s.slot(p.new_dir)).exists:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (self.s.slot(p.new_dir),))
        create_slot(p.new.conninfo(), self.s.slot(p.new_dir))
        kafka_io.ensure_topics(
            self.s.kafka.bootstrap_servers,
            {self._topic(p.new_dir): self.s.kafka.partitions, self._topic(p.new_dir, "dlq"): 1},
            self.s.kafka.replication_factor,
        )

    def _disarm_next_direction(self) -> None:
        p = self.plan
        try:
            with (
                pg.connect(p.new.conninfo(), autocommit=True) as conn,
                pg.translated(p.new.masked()),
            ):
                if slot_info(conn, self.s.slot(p.new_dir)).exists:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (self.s.slot(p.new_dir),))
        except ReplicatorError:
            pass

    def _run_hook(self) -> None:
        if not self.switch_hook:
            return
        env = {
            **os.environ,
            "REPLICATOR_ACTION": self.plan.action,
            "REPLICATOR_RUN_ID": self.run_id,
        }
        try:
            done = subprocess.run(
                shlex.split(self.switch_hook), env=env, capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CutoverAborted(f"switch hook could not run: {exc}", step="switch") from None
        if done.returncode != 0:
            self._hook_refused = True  # it says it did not switch: the switch can be undone
            raise CutoverAborted(
                f"switch hook exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}",
                step="switch",
                hint="the application was not switched; fix the hook and run again",
            )

    # -- helpers ---------------------------------------------------------------------------------

    @contextmanager
    def _step(self, out: Outcome, name: str) -> Iterator[None]:
        if self._fail_at == name:
            self._fail_at = None
            result = StepResult(name, False, 0.0, "induced failure")
            out.steps.append(result)
            self._report(result)
            self.journal.add(result)
            raise CutoverAborted(f"induced failure at step {name}", step=name)
        start = time.monotonic()
        try:
            yield
        except ReplicatorError as exc:
            result = StepResult(name, False, time.monotonic() - start, exc.message)
            out.steps.append(result)
            self._report(result)
            self.journal.add(result)
            if isinstance(exc, CutoverAborted):
                raise
            raise CutoverAborted(
                f"{self.plan.action} stopped at {name}: {exc.message}", step=name, hint=exc.hint
            ) from None
        result = StepResult(name, True, time.monotonic() - start)
        out.steps.append(result)
        self._report(result)
        self.journal.add(result)


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ReplicatorError) else type(exc).__name__


def _step_of(exc: BaseException) -> str:
    return getattr(exc, "step", None) or "an unknown step"


def cutover_for_demo(settings: Settings, pipeline: Any, console: Any) -> None:
    """The demo's last act: a cutover with the live writer running, then a write on the target."""
    from rich.table import Table

    def show(r: StepResult) -> None:
        mark = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
        console.print(f"   {r.name:<14} {mark} {r.seconds * 1000:8.1f} ms {r.detail}")

    out = Cutover(settings, pipeline.mapping, report=show).run()
    table = Table("write pause", "switched")
    table.add_row(f"{(out.pause_s or 0) * 1000:.0f} ms", str(out.switched))
    console.print(table)
