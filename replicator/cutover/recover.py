"""Which database is the writer, and putting it right after a switch that died.

A switch records every effect on the database it changes (the fence's record, the decision), so
whoever comes next — the same command run again, ``replicator recover``, or ``status`` reading —
works from the records, not from the memory of a process that may be gone:

- a **decision** left on either side: the switch passed its point of no return; only running the
  same command again finishes it (the old writer is never unfenced);
- no decision: the writer is the side the stored direction names. It must carry no fence (a
  fence, or privileges revoked, without a decision is a switch that died in its pause), and the
  other side's fence, if a decision lifted it and was then taken back, is put back.

One switch or recovery of a pipeline runs at a time (:class:`SwitchLock`, an advisory lock on
the target), and a session a dead switch left behind — a fence still waiting for its locks — is
ended before anything is restored, so it cannot commit afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from connectors import pg
from replicator.config import Settings
from replicator.cutover import decision, records
from replicator.cutover import fence as fencing
from replicator.errors import PreconditionError, ReplicatorError

SIDE_NAMES = {"fwd": "legacy", "rev": "target"}  # the writer of each direction


def session_name(pipeline: str) -> str:
    """The ``application_name`` of every session a switch of ``pipeline`` opens."""
    return f"replicator-switch:{pipeline}"[:63]


def session_params(pipeline: str) -> dict[str, str]:
    """Connection parameters of a switch's sessions: named, and with TCP keepalives so that a
    lost peer (a node gone, a cut network) ends the session, and its lock, within a minute."""
    return {
        "application_name": session_name(pipeline),
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "30000",
    }


def watch_client(conn: psycopg.Connection[Any]) -> None:
    """Have the server end this session's statement soon after the client is gone (PG 14+):
    a fence waiting for its locks must not outlive a killed switch by long."""
    with contextlib.suppress(ReplicatorError), pg.translated("switch session"):
        conn.execute("SET client_connection_check_interval = '250ms'")


class SwitchLock:
    """An advisory lock on the target, held for a switch's (or a recovery's) whole run."""

    def __init__(self, conn: psycopg.Connection[Any], pid: int) -> None:
        self.conn = conn
        self.pid = pid

    @classmethod
    def take(cls, s: Settings) -> SwitchLock:
        db = s.target
        conn = pg.connect(db.conninfo(**session_params(s.name)), autocommit=True)
        try:
            with pg.translated(db.masked()):
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtext('replicator-switch'), hashtext(%s)),"
                    " pg_backend_pid()",
                    (s.name,),
                ).fetchone()
                assert row is not None
                if not row[0]:
                    held = conn.execute(
                        "SELECT a.pid, coalesce(host(a.client_addr), 'local'),"
                        " a.backend_start::text FROM pg_locks l JOIN pg_stat_activity a"
                        " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                        " AND l.classid = hashtext('replicator-switch')::oid"
                        " AND l.objid = hashtext(%s)::oid LIMIT 1",
                        (s.name,),
                    ).fetchone()
                    who = (
                        f" (session {held[0]} from {held[1]}, since {held[2][:19]})" if held else ""
                    )
                    raise PreconditionError(
                        f"another cutover, rollback, recover or repair of pipeline {s.name} is running{who}",
                        hint="wait for it to end (or stop it), then run this again",
                    )
        except BaseException:
            conn.close()
            raise
        return cls(conn, int(row[1]))

    def held(self) -> bool:
        """Its session still answers (the lock lives as long as the session)."""
        try:
            with pg.translated("the switch lock"):
                self.conn.execute("SELECT 1")
        except ReplicatorError:
            return False
        return True

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class WriterState:
    """Both databases as the records show them; ``writer`` is None when none takes writes
    (or, with ``both``, when both might)."""

    direction: str
    writer: str | None
    legacy: records.SideFence | None
    target: records.SideFence | None
    decision: dict[str, str] | None = None
    problems: list[str] = field(default_factory=list)
    both: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "direction": self.direction,
            "legacy": asdict(self.legacy) if self.legacy else None,
            "target": asdict(self.target) if self.target else None,
            "decision": self.decision,
            "problems": self.problems,
            "both_writable": self.both,
        }


def observe(
    legacy: psycopg.Connection[Any] | None,
    target: psycopg.Connection[Any] | None,
    name: str,
) -> WriterState:
    """The writer as the records say, from one session per side (None: unreachable)."""
    direction = "fwd"
    pending: decision.Decision | None = None
    sides: dict[str, records.SideFence | None] = {"legacy": None, "target": None}
    for side, conn in (("target", target), ("legacy", legacy)):
        if conn is None:
            continue
        sides[side] = records.read(conn)
        found = decision.read(conn, name)
        pending = pending or found
        if side == "target":
            direction = _direction(conn, name)
    st = WriterState(direction, None, sides["legacy"], sides["target"])
    if legacy is None or target is None:
        st.problems.append("a database is unreachable: the writer cannot be told")
        return st
    if pending is not None:
        st.decision = pending.to_json()
        new = SIDE_NAMES[pending.to_dir]
        if sides[new] is not None and sides[new].tables:  # type: ignore[union-attr]
            st.problems.append(
                f"a {pending.action} stopped between its two decisions: {new} is still fenced;"
                f" run {decision.rerun(pending.action)} to finish it"
            )
        else:
            st.writer = new
            st.problems.append(pending.explain())
        return st
    writer = SIDE_NAMES[direction]
    other = "target" if writer == "legacy" else "legacy"
    w, o = sides[writer], sides[other]
    assert w is not None and o is not None
    if w.fenced:
        st.problems.append(
            f"{writer} is the writer but is fenced without a decision ({len(w.tables)} table(s)"
            f" with the fence trigger, {w.revoked} privilege(s) revoked): a switch stopped in"
            " its pause; run `replicator recover`"
        )
    else:
        st.writer = writer
    if o.missing:
        st.both = st.both or not o.tables
        st.problems.append(
            f"{other} is fenced by its record but {len(o.missing)} table(s) lost the fence"
            f" trigger ({', '.join(o.missing[:3])}): run `replicator recover`"
        )
    if o.lifted_by:
        st.both = not w.fenced
        st.problems.append(
            f"{other}'s fence was lifted by a switch that did not finish"
            f" ({', '.join(o.lifted_by)}): run `replicator recover`"
        )
    if direction == "rev" and not o.tables:
        st.both = True
        st.problems.append(
            "legacy is not fenced although the target is the writer: run `replicator recover`"
        )
    return st


def _direction(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT to_regclass('replicator.pipeline') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return "fwd"
    got = conn.execute(
        "SELECT observed_direction FROM replicator.pipeline WHERE name = %s", (name,)
    ).fetchone()
    return str(got[0]) if got else "fwd"


def read_state(s: Settings) -> WriterState:
    """:func:`observe` on sessions of its own."""
    conns: dict[str, psycopg.Connection[Any] | None] = {}
    try:
        for side, db in (("legacy", s.source), ("target", s.target)):
            try:
                conns[side] = pg.connect(db.conninfo(), autocommit=True)
            except ReplicatorError:
                conns[side] = None
        with pg.translated("the writer's records"):
            return observe(conns["legacy"], conns["target"], s.name)
    finally:
        for c in conns.values():
            if c is not None:
                c.close()


def restore(s: Settings, lock: SwitchLock, *, legacy_tables: list[str] | None = None) -> list[str]:
    """With no decision pending: sessions a dead switch left ended, the writer unfenced from
    its record, the other side's lifted fence put back, an armed slot of the other direction
    dropped. Returns what it did, in words (empty: nothing was wrong). With a decision
    pending it changes nothing and says to finish the switch.

    ``legacy_tables`` (the forward mapping's) lets it fence legacy again when the target is the
    writer and legacy carries no fence."""
    done: list[str] = []
    dbs = {"legacy": s.source, "target": s.target}
    with (
        pg.connect(s.source.conninfo(), autocommit=True) as lc,
        pg.connect(s.target.conninfo(), autocommit=True) as tc,
    ):
        conns = {"legacy": lc, "target": tc}
        for side, conn in conns.items():
            with pg.translated(dbs[side].masked()):
                orphans = conn.execute(
                    "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity"
                    " WHERE application_name = %s AND pid <> pg_backend_pid() AND pid <> %s"
                    # pg_stat_activity is the cluster's: legacy and target may share one.
                    " AND datname = current_database()",
                    (session_name(s.name), lock.pid if side == "target" else -1),
                ).fetchone()
                pids = [int(p) for p in (orphans[0] if orphans else [])]
                if pids:
                    fencing.end_sessions(conn, pids)
                    done.append(f"ended {len(pids)} session(s) a switch left on {side}")
        with pg.translated("the writer's records"):
            st = observe(lc, tc, s.name)
        if st.decision is not None:
            raise PreconditionError(
                st.problems[-1],
                hint=f"run {decision.rerun(st.decision['action'])} to finish it",
            )
        writer = SIDE_NAMES[st.direction]
        other = "target" if writer == "legacy" else "legacy"
        w, o = (st.legacy, st.target) if writer == "legacy" else (st.target, st.legacy)
        assert w is not None and o is not None
        for run in o.lifted_by:
            with pg.translated(dbs[other].masked()):
                fencing.prepare(conns[other])
                conns[other].execute(records.restore_sql(run))
            done.append(f"{other} fenced again as it was before run {run}")
        if o.missing:
            with pg.translated(dbs[other].masked()):
                conns[other].execute(records.MEND_SQL)
            done.append(f"{other}: the fence trigger put back on {len(o.missing)} table(s)")
        if w.fenced or w.lifted_by:
            with pg.translated(dbs[writer].masked()):
                fencing.prepare(conns[writer])
                conns[writer].execute(records.DROP_SQL)
            done.append(
                f"{writer} (the writer) unfenced: {len(w.tables)} table(s), {w.revoked}"
                " privilege(s) given back"
            )
        if st.direction == "rev" and not o.tables and not o.lifted_by and legacy_tables:
            with pg.translated(dbs["legacy"].masked()):
                fencing.prepare(lc)
                lc.execute(
                    "SELECT replicator._fence_triggers(t) FROM unnest(%s::text[]) t",
                    ([fencing._quoted(t) for t in legacy_tables],),
                )
            done.append("legacy fenced again (the target is the writer)")
        idle = "rev" if st.direction == "fwd" else "fwd"
        slot_db = s.target if idle == "rev" else s.source
        with pg.translated(slot_db.masked()):
            dropped = (
                conns["target" if idle == "rev" else "legacy"]
                .execute(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND NOT active",
                    (s.slot(idle),),
                )
                .fetchone()
            )
        if dropped and dropped[0]:
            done.append(f"slot {s.slot(idle)} of the switch that stopped dropped")
    return done
