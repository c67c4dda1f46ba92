"""A switch's preflight: every reason not to start, gathered before any write is blocked.

Lag (an exact probe through the pipeline), the dead-letter queue (the count `status` shows),
backfill and validation, privileges to fence and to arm the next direction, and the direction
itself (no second cutover). A rollback also reads most of the reverse stream here.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from connectors import kafka_io, pg
from connectors.pgsource import source_problems
from replicator.config import DatabaseSettings, Settings
from replicator.cutover import fence as fencing
from replicator.cutover.plan import Plan
from replicator.drift.store import blocking as drift_blocking
from replicator.errors import ReplicatorError
from replicator.state import ensure_schema
from transforms.api import MappingSet

if TYPE_CHECKING:
    from replicator.validate.fast import Touched
    from replicator.validate.reverse import ReverseKeys

log = logging.getLogger(__name__)


class Preflight:
    """The preflight of :class:`replicator.cutover.switch.Cutover` (a mixin: its state is the
    switch's)."""

    s: Settings
    mapping: MappingSet
    plan: Plan
    max_lag_s: float
    validation_max_age_s: float
    _partitions: int
    _touched: Touched | None
    _reverse_keys: ReverseKeys | None

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
                    if self.s.cutover.require_parity:
                        problems.extend(self._parity_problems(conn))
                    problems.extend(drift_blocking(conn))  # schema changes (replicator.drift)
                problems.extend(self._direction_problems())
        except ReplicatorError as exc:
            problems.append(f"state database unreachable: {exc.message}")
        if p.action == "rollback":
            # Most of the reverse stream is read now, before any write is blocked; the verify
            # step reads only what arrived since. Read before the lag probe: once the probe is
            # applied, every write this read saw that the reverse mapping refuses is a dead
            # letter, which the DLQ count below sees; one read later fails the switch.
            from replicator.validate.reverse import ReverseKeys

            self._reverse_keys = ReverseKeys(self.mapping, self.s.source)
            try:
                self._reverse_keys.read(self.s.kafka, self._topic("rev"))
            except ReplicatorError as exc:
                problems.append(f"the reverse stream could not be read: {exc.message}")
        lag = self._probe_lag()
        if lag is None:
            problems.append(
                f"end-to-end lag is over {self.max_lag_s:.1f}s (a probe marker did not arrive in time)"
            )
        try:
            dlq = self._dlq_pending()
        except ReplicatorError as exc:
            problems.append(f"the dead-letter queue could not be counted: {exc.message}")
        else:
            if dlq:
                problems.append(
                    f"the dead-letter queue holds {dlq} letter(s) neither replayed nor purged:"
                    " `replicator dlq list`, then `dlq replay` or `dlq purge`"
                )
        problems.extend(self._privilege_problems())
        if p.action == "cutover" and not problems:
            self._read_touched()
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
        from replicator.runtime.continuous import read_points

        # Continuous validation stores each walk that finds every table clean as a full run
        # (so it stands in for a fresh one); a table it finds different refuses the cutover.
        out = [
            f"continuous validation finds {t} different (keys: {p['keys'][:3]}):"
            " `replicator validate --repair`"
            for t, p in read_points(conn).items()
            if p["outcome"] == "different"
        ]
        last = last_validation(conn, scope="full")
        if last is None:
            return [*out, "no validation has run: `replicator validate` first"]
        if last.get("outcome") != "clean":
            out.append(f"the last validation found differences (outcome {last.get('outcome')})")
        if float(last.get("age_s") or 0) > self.validation_max_age_s:
            out.append(
                f"the last validation is {float(last['age_s']) / 3600:.1f} h old: run `replicator validate`"
            )
        return out

    def _parity_problems(self, conn: Any) -> list[str]:
        """``cutover.require_parity``: the last parity run must have every pair agree and meet
        its goal, and be as recent as a validation must be (docs/parity.md)."""
        from replicator.parity.report import last_parity

        last = last_parity(conn)
        if last is None:
            return ["cutover.require_parity is on and no parity run is stored: `replicator parity`"]
        out = []
        if last["outcome"] != "pass":
            out.append(
                f"the last parity run is {last['outcome']} ({last['differing']} pair(s) differ,"
                f" {last['slow']} miss their goal): `replicator parity` names them"
            )
        if float(last.get("age_s") or 0) > self.validation_max_age_s:
            out.append(
                f"the last parity run is {float(last['age_s']) / 3600:.1f} h old: run `replicator parity`"
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
        """Letters of the draining direction not replayed or purged: the count `status` shows."""
        from replicator.dlq.letters import pending_count

        topic = self._topic(self.plan.old_dir, "dlq")
        ends = kafka_io.end_offsets(
            self.s.kafka.bootstrap_servers, topic, **self.s.kafka.client_options()
        )
        db = self._state_db(self.plan.old_dir)
        with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
            return pending_count(conn, topic, ends)

    def _privilege_problems(self) -> list[str]:
        p = self.plan
        problems: list[str] = []
        try:
            with (
                pg.connect(p.old.conninfo(), autocommit=True) as conn,
                pg.translated(p.old.masked()),
            ):
                if not _may_set_replication_role(conn):
                    user = p.old.user
                    problems.append(
                        f"{p.old.masked()}: {user} may not set session_replication_role: once"
                        f" fenced, the {p.new_dir} apply's writes into it would meet the fence"
                        f" and stop, so the switch could never be undone. Run there, as a"
                        f" superuser: GRANT SET ON PARAMETER session_replication_role TO"
                        f' "{user}" (PostgreSQL 15+; before 15 the role must be superuser;'
                        " rds_superuser on RDS)"
                    )
                for table in p.drain.source_tables:
                    row = conn.execute(
                        "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
                        "WHERE c.oid = %s::regclass",
                        (fencing._quoted(table),),
                    ).fetchone()
                    if row is None or not row[0]:
                        problems.append(
                            f"{p.old.masked()}: may not fence {table} (not its owner): run"
                            f' ALTER TABLE {fencing._quoted(table)} OWNER TO "{p.old.user}"',
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

    def _direction_problems(self) -> list[str]:
        """A cutover when the target already writes (or a rollback when legacy does)."""
        db = self.s.target
        with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
            row = conn.execute(
                "SELECT observed_direction FROM replicator.pipeline WHERE name = %s",
                (self.s.name,),
            ).fetchone()
        current = str(row[0]) if row else "fwd"
        if current == self.plan.old_dir:
            return []
        if self.plan.action == "cutover":
            return ["already cut over: the target is the writer (`replicator rollback` goes back)"]
        return ["nothing to roll back: legacy is the writer (no cutover since the last rollback)"]

    def _topic(self, direction: str, kind: str = "changes") -> str:
        return self.s.topic(direction, kind)

    def _state_db(self, direction: str) -> DatabaseSettings:
        """Where the apply of ``direction`` keeps its offsets and markers: the side it writes."""
        return self.s.target if direction == "fwd" else self.s.source


def _may_set_replication_role(conn: Any) -> bool:
    """Whether this session's role may set ``session_replication_role`` (what an apply into a
    fenced side needs: the fence is a trigger, and replica sessions do not fire it)."""
    row = conn.execute(
        "SELECT current_setting('is_superuser') = 'on',"
        " current_setting('server_version_num')::int >= 150000"
    ).fetchone()
    if row is None or row[0]:
        return bool(row and row[0])
    if not row[1]:
        return False
    got = conn.execute(
        "SELECT has_parameter_privilege('session_replication_role', 'SET')"
    ).fetchone()
    return bool(got and got[0])
