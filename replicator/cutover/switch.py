"""Cutover (and, mirrored, rollback): fence, drain, verify, sequences, reverse slot, switch.

ARCHITECTURE.md section 9. No writes are blocked until preflight has passed. From the fence on,
every step is timed, printed as it happens and journaled in the target's ``replicator`` schema;
a failure before the switch completes unfences the old writer, so it stays authoritative and
sync keeps running. The write pause the application sees is fence commit → switch hook done.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from connectors import kafka_io, pg
from connectors.pgsequences import set_target_past, source_high
from connectors.pgsource import create_slot, ensure_publication, slot_info, source_problems
from replicator.config import DatabaseSettings, Settings
from replicator.cutover import fence as fencing
from replicator.errors import CutoverAborted, PreconditionError, ReplicatorError
from replicator.state import ensure_schema
from transforms.api import Direction, MappingSet

if TYPE_CHECKING:
    from replicator.validate.fast import Touched
    from replicator.validate.reverse import ReverseKeys

log = logging.getLogger(__name__)

JOURNAL_SQL = """
CREATE TABLE IF NOT EXISTS replicator.cutover_journal (
    run_id      text        NOT NULL,
    action      text        NOT NULL,   -- cutover | rollback | dry-run
    step        text        NOT NULL,
    ok          boolean     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms double precision NOT NULL,
    detail      text
);
"""


@dataclass
class Plan:
    """One direction's switch: from ``old`` (fenced) to ``new`` (becomes the writer)."""

    action: str  # "cutover" | "rollback"
    old: DatabaseSettings
    new: DatabaseSettings
    old_dir: str  # the direction that drains: "fwd" for a cutover
    new_dir: str  # the direction armed at the switch: "rev" for a cutover
    drain: Direction  # the mapping of the draining direction
    arm: Direction  # the mapping of the direction armed at the switch


def plan_for(s: Settings, mapping: MappingSet, action: str) -> Plan:
    if action == "cutover":
        return Plan("cutover", s.source, s.target, "fwd", "rev", mapping.forward, mapping.reverse)
    return Plan("rollback", s.target, s.source, "rev", "fwd", mapping.reverse, mapping.forward)


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Outcome:
    action: str
    run_id: str
    switched: bool
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    pause_s: float | None = None  # fence commit → switch (or unfence, for a dry run)
    preflight_problems: list[str] = field(default_factory=list)


Report = Callable[[StepResult], None]


class Cutover:
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
        self.max_lag_s = max_lag_s if max_lag_s is not None else settings.cutover.max_lag_s
        self.lock_timeout_ms = lock_timeout_ms or settings.cutover.lock_timeout_ms
        self.switch_hook = switch_hook if switch_hook is not None else settings.cutover.switch_hook
        self.validation_max_age_s = validation_max_age_s
        self._report = report or (lambda r: None)
        # Test hook: raise at the named step, to prove every abort path restores the old writer.
        self._fail_at = fail_at or os.environ.get("REPLICATOR_CUTOVER_FAIL_AT")
        self.run_id = uuid.uuid4().hex[:12]
        self._reverse_keys: ReverseKeys | None = None
        self._partitions = 0  # of the draining direction's topic, once the preflight counted them
        self._touched: Touched | None = None  # the changes topic as the preflight read it

    # -- the whole run ---------------------------------------------------------------------------

    def run(self, *, dry_run: bool = False) -> Outcome:
        p = self.plan
        out = Outcome(p.action, self.run_id, switched=False, dry_run=dry_run)
        with self._step(out, "preflight"):
            problems = self.preflight()
            out.preflight_problems = problems
            if problems:
                raise PreconditionError(
                    f"{p.action} preflight failed:\n  " + "\n  ".join(problems),
                    hint="fix each reason (`replicator status` shows them), then run it again",
                )
        tables = p.drain.source_tables
        with self._step(out, "fence"):
            f = fencing.fence(
                p.old,
                tables,
                app_roles=self.s.cutover.app_roles,
                lock_timeout_ms=self.lock_timeout_ms,
                attempts=self.s.cutover.lock_attempts,
                marker={"action": p.action, "run_id": self.run_id},
            )
        try:
            with self._step(out, "drain"):
                # Counted by the preflight's lag probe: no Kafka metadata round trip in the pause.
                partitions = self._partitions or kafka_io.partition_count(
                    self.s.kafka.bootstrap_servers,
                    self._topic(p.old_dir),
                    **self.s.kafka.client_options(),
                )
                waited = fencing.wait_marker(
                    self._state_db(p.old_dir),
                    self._topic(p.old_dir),
                    f.marker_id,
                    partitions,
                    self.s.cutover.drain_timeout_s,
                )
                if waited is None:
                    raise CutoverAborted(
                        f"apply did not pass the fence marker within {self.s.cutover.drain_timeout_s:.0f}s",
                        step="drain",
                        hint="is `replicator run` (or `apply`) running? `replicator status` shows its lag",
                    )
            with self._step(out, "verify"):
                self._verify()
            if dry_run:
                with self._step(out, "unfence"):
                    fencing.unfence(p.old, f)
                out.pause_s = time.monotonic() - f.committed_at
                return out
            with self._step(out, "sequences"):
                self._sync_sequences()
            with self._step(out, "reverse slot"):
                self._arm_next_direction()
            with self._step(out, "switch"):
                fencing.drop_fence(p.new)  # a fence left by an earlier switch the other way
                self._run_hook()
                self._set_direction(p.new_dir)
            out.pause_s = time.monotonic() - f.committed_at
            out.switched = True
            return out
        except BaseException:
            # Not switched: the old writer stays authoritative, forward sync goes on.
            fencing.unfence(p.old, f)
            self._disarm_next_direction()
            out.pause_s = time.monotonic() - f.committed_at
            self._journal(StepResult("unfence", True, 0.0, "aborted: old writer restored"))
            raise

    # -- preflight -------------------------------------------------------------------------------

    def preflight(self) -> list[str]:
        """Every reason not to start, at once; no write is blocked while it runs."""
        p = self.plan
        problems: list[str] = []
        state = self._state_db(p.old_dir)
        try:
            with (
                pg.connect(state.conninfo(), autocommit=True) as conn,
                pg.translated(state.masked()),
            ):
                ensure_schema(conn)
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE reading OR status <> 'applied'), count(*) FROM replicator.backfill"
                ).fetchone()
                if p.action == "cutover" and row is not None:
                    if row[1] == 0:
                        problems.append(
                            "no backfill has run: the target lacks the rows that existed before the slot"
                        )
                    elif row[0]:
                        problems.append(
                            "a backfill is not complete (`replicator status` shows its progress)"
                        )
                if p.action == "cutover":
                    problems.extend(self._validation_problems(conn))
        except ReplicatorError as exc:
            problems.append(f"state database unreachable: {exc.message}")
        lag = self._probe_lag()
        if lag is None:
            problems.append(
                f"end-to-end lag is over {self.max_lag_s:.1f}s (a probe marker did not arrive in time)"
            )
        dlq = self._dlq_pending()
        if dlq:
            problems.append(
                f"the dead-letter queue holds {dlq} event(s): `replicator dlq list`, then replay or purge"
            )
        problems.extend(self._privilege_problems())
        if p.action == "cutover" and not problems:
            self._read_touched()
        if p.action == "rollback":
            # Most of the reverse stream is read now, before any write is blocked; the verify
            # step reads only what arrived since.
            from replicator.validate.reverse import ReverseKeys

            self._reverse_keys = ReverseKeys(self.mapping, self.s.source)
            try:
                self._reverse_keys.read(self.s.kafka, self._topic("rev"))
            except ReplicatorError as exc:
                problems.append(f"the reverse stream could not be read: {exc.message}")
        return problems

    def _read_touched(self) -> None:
        """The changes topic since the last clean full validation, read before any write is
        blocked; the verify step reads only what arrived since. A failure here is left to the
        verify step, which reads the whole range again and reports it."""
        from replicator.validate.fast import touched_since
        from replicator.validate.report import fast_baseline

        state = self._state_db("fwd")
        try:
            with (
                pg.connect(state.conninfo(), autocommit=True) as conn,
                pg.translated(state.masked()),
            ):
                base = fast_baseline(conn, None)
            if base is not None:
                self._touched = touched_since(
                    self.s.kafka.bootstrap_servers,
                    self._topic("fwd"),
                    self.mapping.forward,
                    base[1],
                    **self.s.kafka.client_options(),
                )
        except ReplicatorError as exc:
            log.warning("cutover: reading the changes topic ahead of the pause failed: %s", exc)
            self._touched = None

    def _validation_problems(self, conn: Any) -> list[str]:
        try:
            from replicator.validate.report import last_validation
        except ImportError:
            return []
        last = last_validation(conn, scope="full")
        if last is None:
            return ["no validation has run: `replicator validate` first"]
        out = []
        if last.get("outcome") != "clean":
            out.append(f"the last validation found differences (outcome {last.get('outcome')})")
        if float(last.get("age_s") or 0) > self.validation_max_age_s:
            out.append(
                f"the last validation is {float(last['age_s']) / 3600:.1f} h old: run `replicator validate`"
            )
        return out

    def _probe_lag(self) -> float | None:
        """Exact end-to-end lag: a marker emitted now on the old side, seen applied."""
        p = self.plan
        marker_id = uuid.uuid4().hex
        try:
            with (
                pg.connect(p.old.conninfo(), autocommit=True) as conn,
                pg.translated(p.old.masked()),
            ):
                fencing.emit(conn, {"kind": "marker", "marker": "probe", "id": marker_id})
            partitions = kafka_io.partition_count(
                self.s.kafka.bootstrap_servers,
                self._topic(p.old_dir),
                **self.s.kafka.client_options(),
            )
            self._partitions = partitions
            return fencing.wait_marker(
                self._state_db(p.old_dir),
                self._topic(p.old_dir),
                marker_id,
                partitions,
                self.max_lag_s,
            )
        except ReplicatorError:
            return None

    def _dlq_pending(self) -> int:
        """Letters neither replayed nor purged (as ``status`` counts them): a letter dealt
        with must not hold the cutover back."""
        from replicator.dlq.letters import done_count

        topic = self._topic(self.plan.old_dir, "dlq")
        total = sum(
            kafka_io.end_offsets(
                self.s.kafka.bootstrap_servers, topic, **self.s.kafka.client_options()
            ).values()
        )
        state = self._state_db(self.plan.old_dir)
        with pg.connect(state.conninfo(), autocommit=True) as conn, pg.translated(state.masked()):
            return max(0, total - done_count(conn, topic))

    def _privilege_problems(self) -> list[str]:
        p = self.plan
        problems: list[str] = []
        try:
            with (
                pg.connect(p.old.conninfo(), autocommit=True) as conn,
                pg.translated(p.old.masked()),
            ):
                for table in p.drain.source_tables:
                    row = conn.execute(
                        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
                        "WHERE c.oid = %s::regclass",
                        (fencing._quoted(table),),
                    ).fetchone()
                    if row is None or not row[0]:
                        problems.append(
                            f"{p.old.masked()}: may not fence {table} (not its owner)",
                        )
        except ReplicatorError as exc:
            problems.append(f"old writer unreachable: {exc.message}")
        try:
            with (
                pg.connect(p.new.conninfo(), autocommit=True) as conn,
                pg.translated(p.new.masked()),
            ):
                for prob in source_problems(conn, p.arm.source_tables):
                    problems.append(f"{p.new_dir} stream not preparable: {prob.message}")
        except ReplicatorError as exc:
            problems.append(f"new writer unreachable: {exc.message}")
        return problems

    # -- steps inside the window -----------------------------------------------------------------

    def _verify(self) -> None:
        """The fenced side is static now: a validation of what changed is exact. A cutover
        re-checks the legacy keys changed since the last full validation; a rollback, the legacy
        rows the reverse stream wrote (the topic's tail since the preflight read it)."""
        from replicator.validate.run import validate

        if self.plan.action == "cutover":
            report = validate(
                self.s, self.mapping, fast=True, marker_timeout_s=5.0, read_ahead=self._touched
            )
        else:
            rk = self._reverse_keys
            if rk is None:
                raise CutoverAborted("the preflight did not read the reverse stream", step="verify")
            rk.read(self.s.kafka, self._topic("rev"))
            report = validate(
                self.s,
                self.mapping,
                keys=rk.keys,
                full_sources=rk.full,
                marker_timeout_s=5.0,
                save=False,
            )
        if report.difference_count or report.unsettled_count:
            raise CutoverAborted(
                f"verification found {report.difference_count} difference(s)",
                step="verify",
                hint="`replicator validate` lists them",
            )

    def _sync_sequences(self) -> None:
        """Sequences are not replicated: set the new writer's past the old writer's values."""
        p = self.plan
        with (
            pg.connect(p.old.conninfo(), autocommit=True) as old,
            pg.connect(p.new.conninfo(), autocommit=True) as new,
        ):
            for seq in p.drain.sequences:
                with pg.translated(p.old.masked()):
                    high = source_high(old, seq)
                with pg.translated(p.new.masked()):
                    set_target_past(new, seq, high)

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
            **self.s.kafka.client_options(),
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
            raise CutoverAborted(
                f"switch hook exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}",
                step="switch",
                hint="the application was not switched; fix the hook and run again",
            )

    def _set_direction(self, direction: str) -> None:
        for db in (self.s.source, self.s.target):
            with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                ensure_schema(conn)
                conn.execute(
                    "INSERT INTO replicator.pipeline (name, desired_direction, observed_direction, state) "
                    "VALUES (%s, %s, %s, 'sync') ON CONFLICT (name) DO UPDATE SET "
                    "desired_direction = EXCLUDED.desired_direction, observed_direction = EXCLUDED.observed_direction, "
                    "updated_at = now()",
                    (self.s.name, direction, direction),
                )

    # -- helpers ---------------------------------------------------------------------------------

    def _topic(self, direction: str, kind: str = "changes") -> str:
        return self.s.topic(direction, kind)

    def _state_db(self, direction: str) -> DatabaseSettings:
        """Where the apply of ``direction`` keeps its offsets and markers: the side it writes."""
        return self.s.target if direction == "fwd" else self.s.source

    @contextmanager
    def _step(self, out: Outcome, name: str) -> Iterator[None]:
        if self._fail_at == name:
            self._fail_at = None
            result = StepResult(name, False, 0.0, "induced failure")
            out.steps.append(result)
            self._report(result)
            self._journal(result)
            raise CutoverAborted(f"induced failure at step {name}", step=name)
        start = time.monotonic()
        try:
            yield
        except ReplicatorError as exc:
            result = StepResult(name, False, time.monotonic() - start, exc.message)
            out.steps.append(result)
            self._report(result)
            self._journal(result)
            if isinstance(exc, CutoverAborted):
                raise
            raise CutoverAborted(
                f"{self.plan.action} stopped at {name}: {exc.message}", step=name, hint=exc.hint
            ) from None
        result = StepResult(name, True, time.monotonic() - start)
        out.steps.append(result)
        self._report(result)
        self._journal(result)

    def _journal(self, r: StepResult) -> None:
        db = self.s.target
        try:
            with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                ensure_schema(conn)
                conn.execute(JOURNAL_SQL)
                conn.execute(
                    "INSERT INTO replicator.cutover_journal VALUES (%s, %s, %s, %s, now() - make_interval(secs => %s), %s, %s)",
                    (
                        self.run_id,
                        self.plan.action,
                        r.name,
                        r.ok,
                        r.seconds,
                        r.seconds * 1000,
                        r.detail,
                    ),
                )
        except ReplicatorError:
            pass  # the journal must never turn a good cutover into a failed one


def outcome_json(out: Outcome) -> str:
    return json.dumps(
        {
            "action": out.action,
            "run_id": out.run_id,
            "switched": out.switched,
            "dry_run": out.dry_run,
            "pause_s": out.pause_s,
            "steps": [
                {"name": r.name, "ok": r.ok, "seconds": round(r.seconds, 4), "detail": r.detail}
                for r in out.steps
            ],
        }
    )


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
