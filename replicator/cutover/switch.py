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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from connectors import kafka_io, pg
from connectors.pgsequences import set_past_sql, sources_high, target_name
from connectors.pgsource import slot_info
from replicator.config import Settings
from replicator.cutover import arm, decision, records, recover
from replicator.cutover import fence as fencing
from replicator.cutover.faults import Faults
from replicator.cutover.hook import HookRefused, run_hook
from replicator.cutover.interrupt import SignalGuard
from replicator.cutover.plan import JOURNAL_SQL, Journal, Outcome, StepResult, plan_for
from replicator.cutover.preflight import Preflight
from replicator.cutover.verify import PauseVerification
from replicator.errors import CutoverAborted, PreconditionError, ReplicatorError
from replicator.state import ensure_schema
from replicator.validate.fast import Touched
from transforms.api import MappingSet

if TYPE_CHECKING:
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
        # Test hook: a fault at a named point, to prove every abort path keeps one writer.
        self._faults = Faults(fail_at or os.environ.get("REPLICATOR_CUTOVER_FAIL_AT"))
        self._guard = SignalGuard()
        self._lock: recover.SwitchLock | None = None
        self._reverse_keys: ReverseKeys | None = None
        self._partitions = 0  # of the draining direction's topic, once the preflight counted them
        self._touched: Touched | None = None  # the changes topic as the preflight read it
        self._conns: dict[str, psycopg.Connection[Any]] = {}  # held across the pause
        self._verification: PauseVerification | None = None
        self._seq_names: list[str] = []  # the new writer's sequences, resolved before the fence
        self.journal = Journal(settings, self.plan, self.run_id)
        self._hook_started = False
        self._hook_refused = False
        self._resumed_fresh = False
        self._decision_run = self.run_id  # the run a decision (and a lifted fence) is under
        self._pids: dict[str, int] = {}  # the held sessions' backends, ended before an abort

    # -- the whole run ---------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False) -> Outcome:
        out = Outcome(self.plan.action, self.run_id, switched=False, dry_run=dry_run)
        with self._guard.armed():
            try:
                # One switch (or recovery) of a pipeline at a time, across machines.
                self._lock = recover.SwitchLock.take(self.s)
                pending = self._pending_decision()
                if pending is not None:
                    if dry_run or pending.action != self.plan.action:
                        raise PreconditionError(
                            pending.explain(),
                            hint=f"run {decision.rerun(pending.action)} to finish it first",
                        )
                    return self._resume(out, pending)
                with self._guard.calm():
                    # A switch that died before its decision left a fence (or a lifted one):
                    # put the writer back first, from the records.
                    done = recover.restore(
                        self.s, self._lock, legacy_tables=self.mapping.forward.source_tables
                    )
                if done:
                    log.warning("%s: first %s", self.plan.action, "; ".join(done))
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
                with pg.translated(p.new.masked()):  # a sequence that is missing fails now
                    self._seq_names = [target_name(self._conn("new"), q) for q in p.drain.sequences]
                if not dry_run:
                    self._arm_next_direction()
            with self._step(out, "pre-verify"):
                self._verification = PauseVerification(
                    self.s, self.mapping, p.action, self._touched, self._reverse_keys
                )
                self._verification.before_fence()
            with self._step(out, "catch-up"):
                self._catch_up(dry_run)
        except BaseException:
            if not dry_run:
                with self._guard.calm():
                    self._disarm_next_direction()
            raise
        self.journal.hold()  # journal rows wait until the pause is over
        try:
            with self._step(out, "fence"):
                self._still_ours()
                f = fencing.fence(
                    p.old,
                    p.drain.source_tables,
                    app_roles=self.s.cutover.app_roles,
                    lock_timeout_ms=self.lock_timeout_ms,
                    attempts=self.s.cutover.lock_attempts,
                    run_id=self.run_id,
                    marker={"action": p.action, "run_id": self.run_id},
                    conn=self._conn("old"),
                    strike=self._strike,
                    calm=self._guard.calm,
                )
        except BaseException as exc:
            # fence() took back whatever it had done, from the record, on a fresh session
            # (the held one is gone): the old writer is unfenced, or the error says so.
            self._conns.pop("old", None)
            self.journal.release()
            if not dry_run:
                with self._guard.calm():
                    self._disarm_next_direction()
            if isinstance(exc, ReplicatorError) and not isinstance(exc, CutoverAborted):
                raise CutoverAborted(
                    f"{p.action} stopped at fence: {exc.message}", step="fence", hint=exc.hint
                ) from None
            raise
        decided = False
        try:
            with self._step(out, "drain"):
                applied = self._drain(f)
            prepared = None if dry_run else _Background(self._prepare_new_writer)
            try:
                with self._step(out, "verify"):
                    assert self._verification is not None
                    self._verification.in_pause(applied)
            finally:
                if prepared is not None:
                    with self._guard.calm():
                        prepared.join()  # no thread may outlive the step on a shared connection
            if dry_run:
                with self._step(out, "unfence"):
                    fencing.unfence(p.old, self.run_id)
                out.pause_s = time.monotonic() - f.committed_at
                self.journal.release()
                return out
            decided = True  # from its first write on: a partial decision is taken back below
            with self._step(out, "decide"):
                assert prepared is not None
                prepared.result()
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
                    hint=f"check the application, then run {decision.rerun(p.action)} again"
                    " to finish (it runs the hook again)",
                ) from exc
            with self._guard.calm():
                taken_back = self._abort(decided)
            if taken_back is not None:
                self.journal.release()
                raise CutoverAborted(
                    f"{p.action} stopped at {_step_of(exc)} and could not be taken back"
                    f" ({taken_back}); the old writer stays fenced",
                    step=_step_of(exc),
                    hint=f"run {decision.rerun(p.action)} again to finish the switch, or"
                    " `replicator recover` once both databases answer",
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
                fenced = records.read(old).fenced
            if not fenced:
                # Taken back by hand (the fence is gone): nothing was switched. Start afresh,
                # the decision taken back as an abort would (the new writer fenced again).
                log.warning("%s: a stale decision without a fence was dropped", p.action)
                self._decision_run = pending.run_id
                with self._guard.calm():
                    failed = self._abort(decided=True)
                if failed is not None:
                    raise CutoverAborted(
                        f"a stale decision could not be taken back ({failed})", step="resume"
                    )
                self._decision_run = self.run_id
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
            if not self._resumed_fresh:
                # A stop between the two sides' decisions leaves the new writer fenced: its
                # decision and the fence's lifting again (idempotent), before the hook.
                self._decision_run = pending.run_id
                self._decide_new()
        if self._resumed_fresh:
            out.resumed_run_id = None
            return self._switch(out, dry_run=False)
        with self._step(out, "switch"):
            self._hook_started = True
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
                hint=f"run {decision.rerun(self.plan.action)} again to finish",
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
            conn = self._conns[side] = pg.connect(db.conninfo(**self._app_name()), autocommit=True)
            self._pids[side] = conn.info.backend_pid
            with pg.translated(db.masked()):
                ensure_schema(conn)
                decision.ensure_table(conn)
                if db is self.s.target:
                    conn.execute(JOURNAL_SQL)
                fencing.prepare(conn)
                recover.watch_client(conn)

    def _conn(self, side: str) -> psycopg.Connection[Any]:
        return self._conns[side]

    def _close(self) -> None:
        if self._verification is not None:
            with contextlib.suppress(Exception):
                self._verification.close()
        self._verification = None
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.close()
        self._conns = {}
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _catch_up(self, dry_run: bool) -> None:
        """The last checks before the fence; then the new direction's slot moved past the
        draining apply's writes so far, leaving the pause's advance little WAL to decode."""
        assert self._verification is not None
        self._verification.catch_up()
        if not dry_run:
            with pg.translated(self.plan.new.masked()):
                self._conn("new").execute(
                    "SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())",
                    (self.s.slot(self.plan.new_dir),),
                )

    # -- inside the pause ------------------------------------------------------------------------

    def _drain(self, f: fencing.Fence) -> dict[int, int]:
        """Until apply has passed the fence marker; returns its offsets as of then."""
        p = self.plan
        # Counted by the preflight's lag probe: no Kafka metadata round trip in the pause.
        partitions = self._partitions or kafka_io.partition_count(
            self.s.kafka.bootstrap_servers,
            self._topic(p.old_dir),
            **self.s.kafka.client_options(),
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

    def _prepare_new_writer(self) -> None:
        """The new writer made ready, beside the verification (its own connections): sequences
        read on the old writer (static since the fence) and set on the new one; in the same
        statement the new direction's slot moved past everything written so far (the draining
        apply's rows must not echo back). Undone by an abort (the slot is dropped); nothing here
        is the decision, so its commit need not wait for the disk: the decision's commit after
        it flushes it. The new writer's own fence (from an earlier switch the other way) stays
        until the decision: lifted earlier, an abort would leave two writers."""
        p = self.plan
        seqs = list(p.drain.sequences)
        with pg.translated(p.old.masked()):
            highs = sources_high(self._conn("old"), seqs)
        statements = [
            sql.SQL("SET LOCAL synchronous_commit = off"),
            sql.SQL("SELECT pg_replication_slot_advance({}, pg_current_wal_lsn())").format(
                sql.Literal(self.s.slot(p.new_dir))
            ),
            *(
                sql.SQL("SELECT {}").format(set_past_sql(q, name, high))
                for q, name, high in zip(seqs, self._seq_names, highs, strict=True)
            ),
        ]
        with pg.translated(p.new.masked()):
            self._conn("new").execute(sql.SQL("; ").join(statements))

    def _decide(self) -> None:
        """The decision recorded on the old writer (it stays fenced from now on), then on the
        new writer together with lifting its fence: one transaction there, so the new side is
        writable exactly when its decision exists, and an abort finds what to fence again."""
        p = self.plan
        self._still_ours()
        record = decision.record(self.s.name, p.action, self.run_id, p.old_dir, p.new_dir)
        with pg.translated(p.old.masked()):
            self._conn("old").execute(record)
        self._strike("decide:new")
        self._decide_new()

    def _still_ours(self) -> None:
        """The switch lock is still held (its session alive): had it been lost, a recover or
        another switch could be changing the same fences."""
        if self._lock is not None and not self._lock.held():
            raise CutoverAborted(
                "the switch lost its lock (its session on the target ended)", step="lock"
            )

    def _decide_new(self) -> None:
        p = self.plan
        run = self._decision_run
        record = decision.record(self.s.name, p.action, run, p.old_dir, p.new_dir)
        # Lifting drops triggers (an exclusive lock): bounded, so a long reader on the new side
        # fails the decision (and the switch is taken back) instead of stretching the pause.
        wait = sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(f"{self.lock_timeout_ms * self.s.cutover.lock_attempts}ms")
        )
        with pg.translated(p.new.masked()):
            self._conn("new").execute(sql.SQL("; ").join([wait, record, records.lift_sql(run)]))

    def _abort(self, decided: bool) -> str | None:
        """Not switched: the new writer's decision taken back and its fence restored (one
        transaction), then the old writer's decision taken back and its fence dropped (one
        transaction), then the new direction's slot dropped — in that order, so that at no
        instant both sides take writes. Fresh sessions: the held ones may be what failed.
        Returns None when done, else why the old writer stays fenced."""
        p = self.plan
        run = self._decision_run
        held, self._conns = self._conns, {}
        for conn in held.values():
            with contextlib.suppress(Exception):
                conn.close()
        if decided:
            try:
                with (
                    pg.connect(p.new.conninfo(**self._app_name()), autocommit=True) as conn,
                    pg.translated(p.new.masked()),
                ):
                    # A decision statement still running there must not commit after this.
                    fencing.end_sessions(conn, [pid for s, pid in self._pids.items() if s == "new"])
                    fencing.prepare(conn)
                    conn.execute(
                        sql.SQL("; ").join(
                            [decision.forget(self.s.name, run), records.restore_sql(run)]
                        )
                    )
            except ReplicatorError as exc:
                log.error("%s: the decision could not be taken back: %s", p.action, exc.message)
                return f"{p.new.masked()}: {exc.message}"
        try:
            with (
                pg.connect(p.old.conninfo(**self._app_name()), autocommit=True) as conn,
                pg.translated(p.old.masked()),
            ):
                fencing.end_sessions(conn, [pid for s, pid in self._pids.items() if s == "old"])
                fencing.prepare(conn)
                conn.execute(
                    sql.SQL("; ").join([decision.forget(self.s.name), records.drop_run_sql(run)])
                )
        except ReplicatorError as exc:
            log.error("%s: the old writer could not be unfenced: %s", p.action, exc.message)
            return f"{p.old.masked()}: {exc.message}"
        self._disarm_next_direction()
        self.journal.add(StepResult("unfence", True, 0.0, "aborted: old writer restored"))
        return None

    def _pending_decision(self) -> decision.Decision | None:
        """A decision left on either side. Both must answer: a side that cannot be read may
        hold one, and starting afresh over it would unfence a writer the application uses."""
        for db in (self.s.target, self.s.source):
            with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                found = decision.read(conn, self.s.name)
            if found is not None:
                return found
        return None

    def _finish(self) -> None:
        """The new direction recorded and the decision deleted, target first (the side the
        pipeline and `status` read first), one statement each; the new writer's lifted fence
        forgotten with it (no abort can take this switch back any more)."""
        p = self.plan
        self._strike("finish:target")
        for db in (self.s.target, self.s.source):
            side = "new" if db is p.new else "old"
            statements = [decision.finish(self.s.name, p.new_dir)]
            if side == "new":
                statements.append(records.finish_sql(self._decision_run))
            with pg.translated(db.masked()):
                self._conn(side).execute(sql.SQL("; ").join(statements))
            self._strike("finish:source")

    def _strike(self, point: str, tables: Sequence[str] = ()) -> None:
        """Test hook: the fault named for this point (faults.py), if any."""
        if self._faults:
            self._faults.strike(point, self._conns.get, tables)

    def _app_name(self) -> dict[str, str]:
        """Every session of a switch is named, so that ``recover`` can end one left behind,
        and notices a peer that vanished (keepalives) within seconds, not hours."""
        return recover.session_params(self.s.name)

    def _arm_next_direction(self) -> None:
        arm.arm(self.s, self.plan)

    def _disarm_next_direction(self) -> None:
        arm.disarm(self.s, self.plan)

    def _run_hook(self) -> None:
        self._strike("switch:hook")
        if not self.switch_hook:
            return
        try:
            run_hook(
                self.switch_hook,
                self.s,
                action=self.plan.action,
                run_id=self._decision_run,
                new=self.plan.new,
            )
        except HookRefused:
            self._hook_refused = True  # it says it did not switch: the switch can be undone
            raise

    # -- helpers ---------------------------------------------------------------------------------

    @contextmanager
    def _step(self, out: Outcome, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            self._guard.check()
            self._strike(name)
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


class _Background:
    """A call on a thread of its own; :meth:`result` waits and raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as exc:
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ReplicatorError) else type(exc).__name__


def _step_of(exc: BaseException) -> str:
    return getattr(exc, "step", None) or "an unknown step"
