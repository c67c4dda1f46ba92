"""`validate --repair`: from "there is a difference" to "it is fixed", through the pipeline.

For each confirmed difference of a validation run, the legacy rows behind the key (the run's
provenance) are read again and sent through the snapshot path — the same transforms, the same
exactly-once apply, the same dead-letter queue for what the mapping refuses — and a target row
that no legacy row produces is deleted (a ``repair_delete`` control message, only ever a row of
a mapped target table: replicator.apply.rows.repair_delete).

Why it never overwrites a newer change: a repair is a backfill of a few keys (ARCHITECTURE.md
section 5). Its ``backfill_started`` marker goes through the log first; apply applies every
change before the marker, holds the changes after it, loads the repair's chunk (read *after*
the marker, so never older than what it overwrites), then replays the held changes over it.
An extra row is deleted only if, in the same legacy snapshot read after the marker, no legacy
row writes its key (an insert committed since the validation keeps its row). Sending the same
rows twice is harmless (upserts and deletes are idempotent): a second repair finds nothing.

Not repaired, and said so: a key two legacy rows write (``collides``: the mapping or the data
must change), a legacy row the transform refuses (``rejected``: it is in the dead-letter queue
again only if re-sent; fix it, then `replicator dlq replay`), rows still changing
(``unsettled``), orphans (their parent is what is missing).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from connectors import pg
from connectors.envelope import Envelope
from connectors.kafka_io import Producer
from replicator.backfill.reader import _describe, emit_marker, snapshot_messages
from replicator.config import Settings
from replicator.errors import PreconditionError, TransientDatabaseError
from replicator.state import ensure_schema
from replicator.validate.context import snapshot
from replicator.validate.expect import fold_all
from replicator.validate.insql.catalog import catalog
from replicator.validate.insql.plan import SESSION_SQL
from replicator.validate.report import Difference, Report, key_text
from replicator.validate.scope import shapes_from
from transforms.api import Direction, MappingSet

if TYPE_CHECKING:
    from replicator.cutover.recover import SwitchLock

log = logging.getLogger(__name__)

REPAIR_PREFIX = "repair-"  # replicator.backfill ids of repairs (status and the page skip them)
RESENT = ("missing", "differs")  # their legacy rows are sent again
WAIT_APPLIED_S = 120.0


@dataclass
class Action:
    """One difference and what the repair does (or would do) about it."""

    table: str
    key: dict[str, str]
    kind: str  # the difference: missing | extra | differs | collides | unsettled | rejected
    action: str  # resend | delete | keep (an extra a legacy row now writes) | refuse | none
    sources: list[dict[str, Any]] = field(default_factory=list)  # legacy rows re-sent
    reason: str = ""
    result: str = ""  # after the check: repaired | still_different | refused

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "key": self.key,
            "kind": self.kind,
            "action": self.action,
            "sources": [
                {"table": x["table"], "key": [None if v is None else str(v) for v in x["key"]]}
                for x in self.sources
            ],
            "reason": self.reason,
            "result": self.result,
        }


@dataclass
class RepairReport:
    dry_run: bool
    direction: str = "fwd"  # rev: after a cutover, legacy is repaired from the target
    repair_id: str | None = None
    actions: list[Action] = field(default_factory=list)
    seconds: float = 0.0
    after_run_id: int | None = None  # the validation run that checked the keys again

    def count(self, result: str) -> int:
        return sum(1 for a in self.actions if a.result == result)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "direction": self.direction,
            "repair_id": self.repair_id,
            "seconds": round(self.seconds, 3),
            "after_run_id": self.after_run_id,
            "counts": {
                r: self.count(r) for r in ("repaired", "still_different", "refused", "planned")
            },
            "actions": [a.to_json() for a in self.actions],
        }


def plan(report: Report, direction: str = "fwd") -> list[Action]:
    """What a repair does about each difference of ``report`` (pure). ``direction``: the
    pipeline's, "rev" after a cutover (the target is right, legacy is repaired)."""
    act = _action if direction == "fwd" else _reverse_action
    out = [act(report, d) for d in report.differences]
    for r in report.rejected:
        out.append(
            Action(
                r.source, r.key, "rejected", "refuse",
                reason=f"the mapping refuses this legacy row ({r.reason}): fix the row on legacy"
                " or the mapping, then `replicator dlq replay`",
            )
        )  # fmt: skip
    for o in report.orphans:
        out.append(
            Action(
                o.table, o.key, "orphan", "none",
                reason=f"its parent in {o.parent} is missing ({o.constraint}): repair the parent",
            )
        )  # fmt: skip
    return out


def _sources(report: Report, d: Difference) -> list[dict[str, Any]]:
    src = report.provenance.get((d.table, key_text(d.key)), set())
    return [{"table": t, "key": list(k)} for t, k in sorted(src, key=repr)]


def _action(report: Report, d: Difference) -> Action:
    rows = _sources(report, d)
    if d.kind in RESENT:
        if not rows:
            return Action(d.table, d.key, d.kind, "refuse", reason="its legacy rows are unknown")
        return Action(d.table, d.key, d.kind, "resend", rows)
    if d.kind == "extra":
        return Action(d.table, d.key, d.kind, "delete", rows)
    return _other(d)


def _reverse_action(report: Report, d: Difference) -> Action:
    """After a cutover: a target row that legacy lacks or holds differently is re-sent through
    the reverse transforms; legacy rows whose target row is gone are deleted."""
    if d.kind in ("differs", "extra"):
        return Action(
            d.table, d.key, d.kind, "resend", [{"table": d.table, "key": list(d.key.values())}]
        )
    if d.kind == "missing":
        rows = _sources(report, d)
        if not rows:
            return Action(d.table, d.key, d.kind, "refuse", reason="its legacy rows are unknown")
        return Action(d.table, d.key, d.kind, "delete", rows)
    return _other(d)


def _other(d: Difference) -> Action:
    if d.kind == "collides":
        names = ", ".join(f"{s['table']} {s['key']}" for s in d.sources)
        return Action(
            d.table, d.key, d.kind, "refuse",
            reason=f"legacy rows {names} all write this key: change the data or the mapping",
        )  # fmt: skip
    return Action(d.table, d.key, d.kind, "none", reason="still changing on legacy: validate again")


def observed_direction(s: Settings) -> str:
    """The pipeline's direction as the target records it ("fwd" before any)."""
    with pg.connect(s.target.conninfo(), autocommit=True) as conn, pg.translated(s.target.masked()):
        if conn.execute("SELECT to_regclass('replicator.pipeline')").fetchone() in (None, (None,)):
            return "fwd"
        row = conn.execute(
            "SELECT observed_direction FROM replicator.pipeline WHERE name = %s", (s.name,)
        ).fetchone()
    return str(row[0]) if row else "fwd"


def repair(
    settings: Settings,
    mapping: MappingSet,
    report: Report,
    *,
    dry_run: bool = False,
    direction: str | None = None,
) -> RepairReport:
    """Send the fixes of ``report``'s differences through the pipeline and wait until apply
    has loaded them (the caller validates again). ``dry_run``: only the plan. ``direction``:
    the pipeline's (read from the target when not given)."""
    started = time.monotonic()
    s = settings
    direction = direction or observed_direction(s)
    out = RepairReport(dry_run, actions=plan(report, direction))
    out.direction = direction
    for a in out.actions:
        if a.action == "refuse":
            a.result = "refused"
        elif a.action == "none":
            a.result = "still_different"
        elif dry_run and a.action in ("resend", "delete"):
            a.result = "planned"
    todo = [a for a in out.actions if a.action in ("resend", "delete")]
    if dry_run or not todo:
        out.seconds = time.monotonic() - started
        return out
    lock = _one_writer(s, direction)
    try:
        _send(s, mapping, out, todo, direction)
    finally:
        lock.release()
    out.seconds = time.monotonic() - started
    return out


def _one_writer(s: Settings, direction: str) -> SwitchLock:
    """The switch lock, held while the repair is sent and applied, once the records show the
    direction's source as the one writer. A repair during a switch (a fence, a decision not
    finished: the application may write to the new side already) would load the old writer's
    rows, or delete rows, over the new writer's later writes."""
    from replicator.cutover.recover import SIDE_NAMES, SwitchLock, read_state

    lock = SwitchLock.take(s)  # a switch cannot start until the repair is applied
    state = read_state(s)
    if state.writer != SIDE_NAMES[direction] or state.problems or state.direction != direction:
        lock.release()
        why = "; ".join(state.problems) or f"the writer is {state.writer or 'unknown'}"
        raise PreconditionError(
            f"a repair from {SIDE_NAMES[direction]} needs it to be the one writer, with no"
            f" switch under way: {why}",
            hint="finish or recover the switch first (`replicator status` says how), then"
            " `replicator validate --repair` again",
        )
    return lock


def _send(
    s: Settings, mapping: MappingSet, out: RepairReport, todo: list[Action], direction: str
) -> None:
    fwd = direction == "fwd"
    # Rows are re-read on the direction's source and loaded by its apply into its sink, whose
    # replicator schema holds that apply's backfill records.
    src_db, sink_db = (s.source, s.target) if fwd else (s.target, s.source)
    dmap = mapping.forward if fwd else mapping.reverse
    repair_id = out.repair_id = REPAIR_PREFIX + uuid.uuid4().hex[:12]
    resend: dict[str, set[tuple[Any, ...]]] = {}
    for a in todo:
        for r in a.sources if a.action == "resend" else ():
            # After a cutover the re-sent row is the target row itself, by its key's text.
            cols = dmap.tables[r["table"]].source_key
            key = tuple(r["key"]) if fwd else tuple(a.key.get(c) for c in cols)
            resend.setdefault(r["table"], set()).add(key)
    with (
        pg.connect(src_db.conninfo(), autocommit=True) as src,
        pg.connect(sink_db.conninfo(), autocommit=True) as sink,
    ):
        with pg.translated(src_db.masked()):
            slot = src.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (s.slot(direction),)
            ).fetchone()
        if slot is None:
            raise PreconditionError(
                f"a repair goes through the pipeline, and its slot {s.slot(direction)} does not exist",
                hint="start `replicator run` (it creates the slot and applies the repair), then"
                " `replicator validate --repair` again",
            )
        with pg.translated(sink_db.masked()):
            ensure_schema(sink)
            busy = sink.execute(
                "SELECT id, reading FROM replicator.backfill WHERE reading OR status <> 'applied'"
                " LIMIT 1"
            ).fetchone()
            if busy is not None:
                earlier = str(busy[0]).startswith(REPAIR_PREFIX)
                if earlier and busy[1]:  # interrupted, and its end not sent then: sent now
                    _close_out(s, s.topic(direction, "snapshot"), str(busy[0]), sink)
                raise PreconditionError(
                    f"{'repair' if earlier else 'backfill'} {busy[0]} is not applied yet:"
                    " a repair waits for it",
                    hint="start `replicator run` (apply loads it), then repair again"
                    if earlier
                    else "`replicator status` shows its progress; repair after it",
                )
            sink.execute(
                "INSERT INTO replicator.backfill (id, tables, truncate) VALUES (%s, %s, false)",
                (repair_id, sorted(resend)),
            )
        topic = s.topic(direction, "snapshot")
        try:
            with pg.translated(src_db.masked()):
                src.execute(SESSION_SQL)  # key texts as validation wrote them (instants in UTC)
                emit_marker(
                    src,
                    {
                        "kind": "backfill_started",
                        "backfill_id": repair_id,
                        "tables": sorted(resend),
                        "truncate": False,
                    },
                )
                # One snapshot of the source, taken after the marker committed: the rows re-sent
                # and the check that what is deleted still has no source row.
                deletes = [a for a in todo if a.action == "delete"]
                with snapshot(src, src_db.masked()):
                    messages = _rows(src, s.name, dmap, resend, as_text=not fwd)
                    if fwd:
                        gone = _still_extra(src, sink, s, mapping, deletes)
                    else:
                        gone = _still_missing(src, deletes)
            for a in deletes:
                if key_text(a.key) not in gone.get(a.table, set()):
                    a.action, a.reason = "keep", "a source row writes this key now: it stays"
                    continue
                for table, row_key in _deleted_rows(a, dmap if not fwd else None):
                    messages.append(
                        _control(s.name, {"kind": "repair_delete", "table": table, "key": row_key})
                    )
            messages.append(_control(s.name, {"kind": "snapshot_done", "backfill_id": repair_id}))
            producer = Producer(
                s.kafka.bootstrap_servers,
                compression=s.kafka.compression,
                **s.kafka.client_options(),
            )
            try:
                sent = [producer.send(topic, m, partition=0) for m in messages]
                producer.flush()
                for one in sent:
                    one.check()
            finally:
                producer.close()
        except BaseException:
            # Its marker may be in the log: apply holds every later change until this
            # repair's snapshot_done, and nothing else would send it (a repair is not
            # resumed like a backfill). Sent now, the rows that did go are loaded, no more.
            _close_out(s, topic, repair_id, sink)
            raise
        with pg.translated(sink_db.masked()):
            sink.execute(
                "UPDATE replicator.backfill SET reading = false WHERE id = %s", (repair_id,)
            )
            _wait_applied(sink, repair_id)


def _close_out(s: Settings, topic: str, repair_id: str, sink: psycopg.Connection[Any]) -> None:
    """Best effort: an interrupted repair's snapshot_done sent, so that apply stops holding,
    and the repair no longer read (the next repair waits only until apply has loaded it)."""
    try:
        producer = Producer(
            s.kafka.bootstrap_servers, compression=s.kafka.compression, **s.kafka.client_options()
        )
        try:
            done = _control(s.name, {"kind": "snapshot_done", "backfill_id": repair_id})
            sent = producer.send(topic, done, partition=0)
            producer.flush()
            sent.check()
        finally:
            producer.close()
    except Exception as exc:  # the original error is the one raised; this one is said
        log.error(
            "repair %s stopped and its end could not be sent (%s): apply holds the changes"
            " after its marker until `replicator validate --repair` runs again",
            repair_id,
            exc,
        )
        return
    with contextlib.suppress(Exception):
        sink.execute("UPDATE replicator.backfill SET reading = false WHERE id = %s", (repair_id,))


def _deleted_rows(a: Action, reverse: Direction | None) -> list[tuple[str, dict[str, Any]]]:
    """The rows a delete action removes: the target row (forward), or its legacy rows by the
    reverse direction's key columns (after a cutover)."""
    if reverse is None:
        return [(a.table, a.key)]
    out = []
    for r in a.sources:
        cols = reverse.target_tables[r["table"]].key if r["table"] in reverse.target_tables else ()
        out.append(
            (
                r["table"],
                {c: None if v is None else str(v) for c, v in zip(cols, r["key"], strict=False)},
            )
        )
    return out


def _still_missing(
    target: psycopg.Connection[Any], deletes: Iterable[Action]
) -> dict[str, set[str]]:
    """Of the target rows legacy has and the target lacks, those still absent from the
    target (table -> key texts): a row written since the validation keeps its legacy rows."""
    out: dict[str, set[str]] = {}
    for a in deletes:
        cols = list(a.key)
        cond = sql.SQL(" AND ").join(
            sql.SQL("t.{}::text = %s").format(sql.Identifier(c)) for c in cols
        )
        stmt = sql.SQL("SELECT 1 FROM {} t WHERE {}").format(
            sql.Identifier(*a.table.split(".", 1)), cond
        )
        if target.execute(stmt, [a.key[c] for c in cols]).fetchone() is None:
            out.setdefault(a.table, set()).add(key_text(a.key))
    return out


def _control(origin: str, control: dict[str, Any]) -> bytes:
    return Envelope(origin=origin, xid=0, commit_lsn=0, commit_ts=None, control=control).encode()


def _rows(
    conn: psycopg.Connection[Any],
    origin: str,
    direction: Direction,
    resend: dict[str, set[tuple[Any, ...]]],
    *,
    as_text: bool,
) -> list[bytes]:
    """The named source rows as snapshot messages (text, in the relation's column order);
    ``as_text``: the keys are canonical text (a target key), else typed values."""
    out: list[bytes] = []
    for table, keys in sorted(resend.items()):
        source = _describe(conn, table)
        key_cols = direction.tables[table].source_key  # as validation keeps provenance
        cols = sql.SQL(", ").join(
            sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in source.columns
        )
        cast = "::text" if as_text else ""
        by = sql.SQL(", ").join(sql.SQL("t.{}" + cast).format(sql.Identifier(c)) for c in key_cols)
        one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(key_cols)))
        todo = sorted(keys, key=repr)
        for i in range(0, len(todo), 500):
            part = todo[i : i + 500]
            stmt = sql.SQL("SELECT {} FROM {} t WHERE ({}) IN ({})").format(
                cols,
                sql.Identifier(*table.split(".", 1)),
                by,
                sql.SQL(", ").join([one] * len(part)),
            )
            rows = conn.execute(stmt, [v for k in part for v in k]).fetchall()
            if rows:
                out.extend(snapshot_messages(origin, source, rows))
    return out


def _still_extra(
    legacy: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    s: Settings,
    mapping: MappingSet,
    extras: Iterable[Action],
) -> dict[str, set[str]]:
    """Of the extra rows, those no legacy row writes in the current snapshot (table -> key
    texts). Reads the writers of their tables in full: extras' sources are unknown."""
    wanted: dict[str, set[str]] = {}
    for a in extras:
        wanted.setdefault(a.table, set()).add(key_text(a.key))
    if not wanted:
        return {}
    with pg.translated(s.target.masked()):
        tables = {t: mapping.forward.target_tables[t] for t in wanted}
        shapes = shapes_from(catalog(target, list(wanted)), tables)
    writers = {
        w.source: w
        for w in mapping.forward.tables.values()
        if any(x.name in wanted for x in w.writes)
    }
    exp = fold_all(legacy, writers.values(), shapes)
    out: dict[str, set[str]] = {}
    for t, keys in wanted.items():
        shape = shapes[t]
        present = {
            key_text(shape.key_dict(k)) for k, e in exp.rows[t].items() if e.state != "absent"
        }
        out[t] = keys - present
    return out


def _wait_applied(conn: psycopg.Connection[Any], repair_id: str) -> None:
    deadline = time.monotonic() + WAIT_APPLIED_S
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT status FROM replicator.backfill WHERE id = %s", (repair_id,)
        ).fetchone()
        if row is not None and row[0] == "applied":
            return
        time.sleep(0.2)
    raise TransientDatabaseError(
        f"apply did not load repair {repair_id} within {WAIT_APPLIED_S:.0f} s",
        hint="is `replicator run` running? It loads the repair when it comes; validate again then",
    )


def check(out: RepairReport, after: Report) -> None:
    """Each action's result from the validation run after the repair: a key that run still
    reports is still different; one it does not is repaired."""
    out.after_run_id = after.run_id
    left = {(d.table, key_text(d.key)) for d in after.differences}
    left |= {(r.source, key_text(r.key)) for r in after.rejected}
    left |= {(o.table, key_text(o.key)) for o in after.orphans}
    for a in out.actions:
        if a.result == "refused":
            continue
        a.result = "still_different" if (a.table, key_text(a.key)) in left else "repaired"


def print_repair(out: RepairReport, console: Any) -> None:
    """The repair's outcome, one line per key (rich console)."""
    head = "repair (dry run): would" if out.dry_run else f"repair {out.repair_id or ''}:"
    console.print(
        f"{head} repaired {out.count('repaired')}, still different {out.count('still_different')},"
        f" refused {out.count('refused')}"
        + (f", planned {out.count('planned')}" if out.dry_run else "")
    )
    for a in out.actions:
        what = {"resend": "re-send legacy rows", "delete": "delete the target row"}.get(
            a.action, a.action
        )
        src = (
            " from " + ", ".join(f"{r['table']} {r['key']}" for r in a.sources)
            if a.action == "resend"
            else ""
        )
        console.print(
            f"  {a.result or '-'}: {a.table} {a.key} ({a.kind}; {what}{src})"
            + (f" — {a.reason}" if a.reason else ""),
            markup=False,
            highlight=False,
        )


REPAIRS_SQL = """
CREATE TABLE IF NOT EXISTS replicator.repairs (
    id          text        PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT now(),
    direction   text        NOT NULL,
    counts      jsonb       NOT NULL,
    actions     jsonb       NOT NULL  -- the first 100, as in the JSON report
)
"""


def store_repair(settings: Settings, out: RepairReport) -> None:
    """Kept on the target for the web page's validation card (the last repair)."""
    if out.repair_id is None:
        return
    body = out.to_json()
    db = settings.target
    with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('replicator.repairs'))")
            conn.execute(REPAIRS_SQL)
        conn.execute(
            "INSERT INTO replicator.repairs (id, direction, counts, actions)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (out.repair_id, out.direction, Jsonb(body["counts"]), Jsonb(body["actions"][:100])),
        )


def last_repair(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The latest stored repair (id, finished_at, age_s, direction, counts, actions) or None."""
    if conn.execute("SELECT to_regclass('replicator.repairs')").fetchone() in (None, (None,)):
        return None
    row = conn.execute(
        "SELECT id, finished_at, extract(epoch FROM now() - finished_at)::float8, direction,"
        " counts, actions FROM replicator.repairs ORDER BY finished_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    return {
        "id": row[0],
        "finished_at": row[1].isoformat(),
        "age_s": row[2],
        "direction": row[3],
        "counts": row[4],
        "actions": row[5],
    }
