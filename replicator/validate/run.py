"""``replicator validate``: prove that the target equals the transformed legacy data.

Method (docs/validation.md has the operator's version and the guarantees):

1. If live sync runs (the forward slot exists), emit a marker on legacy and wait until apply has
   recorded it, so the target holds every legacy change committed before validation began.
2. Per group of tables linked by a transform (user + user_profile → user + account), read the
   target tables, then the legacy tables, each side in one REPEATABLE READ snapshot; run the
   legacy rows through the forward transforms and fold the ops into expected rows.
3. Canonicalise both sides by the target column types, compare counts, then md5 per chunk of
   keys; only mismatching chunks are compared row by row.
4. Live only — settle the candidates: re-read their legacy rows, emit a marker, wait for it,
   re-read their target rows; a row that now matches was in flight. A row that still differs is
   a confirmed difference once a further legacy read shows its source rows did not change
   across that target read. Rows still changing after every round are reported ``unsettled``.
5. Look for orphans along the target's foreign keys among the mapped tables.

``--fast`` checks only the keys that the changes topic says were touched since the last clean
full validation (:mod:`replicator.validate.fast`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from connectors import pg
from replicator.config import Settings
from replicator.errors import PreconditionError, ReplicatorError
from replicator.state import ensure_schema
from replicator.validate.canon import (
    CanonRow,
    Exp,
    Key,
    TableShape,
    chunk_digest,
    chunks,
    differing_columns,
    expected_view,
    masked,
    shown,
    verdict,
)
from replicator.validate.expect import Rejected, SourceKey, fold_all, fold_keys
from replicator.validate.fast import Touched, end_offsets, touched_since
from replicator.validate.orphans import find_orphans
from replicator.validate.report import (
    Difference,
    Report,
    TableResult,
    ensure_runs_table,
    fast_baseline,
    last_validation,
    store,
)
from replicator.validate.scope import (
    components,
    mapping_errors,
    read_target,
    require_keys,
    select_tables,
    shapes_of,
)
from replicator.validate.sql import (
    SESSION_SQL,
    GroupPlan,
    Hashing,
    choose_hashing,
    enum_columns,
    plan_group,
    run_group,
    source_columns,
)
from replicator.validate.sql_keys import check_keys, load_key_types
from transforms.api import Direction, MappingSet, TableTransform

__all__ = ["Report", "last_validation", "select_tables", "validate"]

log = logging.getLogger(__name__)

CHUNK_KEYS = 1_000
Pending = dict[Key, tuple[CanonRow | None, Exp | None]]


@dataclass
class _Passed:
    """One group compared in SQL: its candidates, table results and rejected rows."""

    pending: dict[str, Pending]
    tables: list[TableResult]
    rejected: list[Rejected]


@dataclass
class _Ctx:
    s: Settings
    direction: Direction
    legacy: psycopg.Connection[Any]
    target: psycopg.Connection[Any]
    shapes: dict[str, TableShape]
    live: bool
    marker_timeout_s: float
    partial: set[str] = field(default_factory=set)  # tables checked by key (--fast)
    provenance: dict[str, dict[Key, set[tuple[str, SourceKey]]]] = field(default_factory=dict)
    lagging: bool = False
    force_python: bool = False  # every table the Python way (tests, comparisons)
    hashing: Hashing = field(default_factory=lambda: Hashing(fast=False))
    legacy_columns: dict[str, dict[str, str]] | None = None  # source table -> column category
    # The SQL plan of each group, or why it keeps the Python path (a cutover's verify keeps
    # them across its checks: none is made in the write pause).
    plans: dict[tuple[str, ...], GroupPlan | str] = field(default_factory=dict)

    def writers(self, table: str) -> list[TableTransform]:
        return [t for t in self.direction.tables.values() if any(w.name == table for w in t.writes)]

    def sync(self) -> bool:
        """Emit a marker on legacy; True once apply has recorded it on every partition."""
        if not self.live or self.lagging:
            return False
        marker = str(uuid.uuid4())
        control = {"kind": "marker", "marker": "validate", "id": marker}
        self.legacy.execute(
            "SELECT pg_logical_emit_message(true, 'replicator', %s)", (json.dumps(control),)
        )
        topic = self.s.topic("fwd", "changes")
        deadline = time.monotonic() + self.marker_timeout_s
        while time.monotonic() < deadline:
            row = self.target.execute(
                "SELECT (SELECT count(*) FROM replicator.markers"
                " WHERE topic = %s AND marker_id = %s),"
                " (SELECT count(*) FROM replicator.offsets WHERE topic = %s)",
                (topic, marker, topic),
            ).fetchone()
            if row is not None and row[0] >= max(1, row[1]):
                # Our markers are only a rendezvous: do not let them pile up in the table.
                self.target.execute(
                    "DELETE FROM replicator.markers WHERE topic = %s AND marker_id = %s",
                    (topic, marker),
                )
                return True
            time.sleep(0.05)
        self.lagging = True
        return False


@contextlib.contextmanager
def _snapshot(conn: psycopg.Connection[Any], where: str) -> Iterator[None]:
    """One read-only snapshot: a table group is read consistently on each side."""
    with pg.translated(where), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _compare(
    shape: TableShape,
    actual: Mapping[Key, CanonRow],
    exp: Mapping[Key, Exp],
    res: TableResult,
    keys: Iterable[Key],
) -> Pending:
    """Chunked md5 comparison; row verdicts only inside mismatching chunks."""
    cand: Pending = {}
    view = expected_view(exp)
    for part in chunks(sorted(keys), CHUNK_KEYS):
        res.chunks += 1
        if chunk_digest(part, actual, exp) == chunk_digest(part, view):
            continue
        res.chunks_mismatched += 1
        for k in part:
            a, e = actual.get(k), exp.get(k)
            if verdict(a, e) is not None:
                cand[k] = (a, e)
    return cand


def group_plan(ctx: _Ctx, group: list[str]) -> GroupPlan | str:
    """The SQL plan of a group of target tables, or why it keeps the Python path."""
    if ctx.force_python:
        return "the Python path was asked for"
    known = ctx.plans.get(tuple(group))
    if known is not None:
        return known
    if ctx.legacy_columns is None:
        with pg.translated(ctx.s.source.masked()):
            ctx.legacy_columns = {s: source_columns(ctx.legacy, s) for s in ctx.direction.tables}
    legacy_cols = ctx.legacy_columns
    with pg.translated(ctx.s.target.masked()):
        enums = {t: enum_columns(ctx.target, t) for t in group}
    plan = plan_group(
        ctx.direction, group, ctx.shapes, lambda s: legacy_cols[s], lambda t: enums[t], ctx.hashing
    )
    if isinstance(plan, GroupPlan):
        with pg.translated(ctx.s.source.masked()):
            load_key_types(ctx.legacy, plan)
    ctx.plans[tuple(group)] = plan
    return plan


def _sql_pass(ctx: _Ctx, group: list[str]) -> _Passed | str:
    """The group compared by checksums in both databases, or why it keeps the Python path."""
    plan = group_plan(ctx, group)
    if not isinstance(plan, GroupPlan):
        return plan
    with _snapshot(ctx.target, ctx.s.target.masked()):
        ctx.target.execute("SELECT 1")  # the target's snapshot is taken first, as in Python
        with _snapshot(ctx.legacy, ctx.s.source.masked()):
            got = run_group(
                plan,
                ctx.direction,
                ctx.legacy,
                ctx.target,
                lambda shape, keys: read_target(ctx.target, shape, keys),
                ctx.hashing,
            )
    out: dict[str, Pending] = {}
    tables: list[TableResult] = []
    for t in group:
        o = got.tables[t]
        ctx.provenance[t] = {k: v for k, v in o.provenance.items() if v}
        res = TableResult(t, "full", path="sql")
        res.expected_rows, res.target_rows = o.expected_rows, o.target_rows
        res.rows_checked = max(o.expected_rows, o.target_rows)
        res.chunks, res.chunks_mismatched = o.buckets, o.buckets_mismatched
        tables.append(res)
        out[t] = o.pending
    return _Passed(out, tables, got.rejected)


def _full_passes(ctx: _Ctx, groups: list[list[str]], report: Report) -> dict[str, Pending]:
    """Every group in full. Groups are compared two at a time, the largest first, on a second
    pair of sessions as well (each group in snapshots of its own, as always: groups share no
    table), so both servers and both cores stay busy where one group at a time left the target
    idle while legacy computed; a group that does not compile is then read the Python way."""
    done: dict[tuple[str, ...], _Passed | str] = {}
    if len(groups) > 1 and not ctx.force_python:
        size = _legacy_bytes(ctx, groups)
        queue = collections.deque(sorted(groups, key=lambda g: -size[tuple(g)]))

        def work(c: _Ctx) -> None:
            while queue:
                try:
                    g = queue.popleft()
                except IndexError:
                    return
                done[tuple(g)] = _sql_pass(c, g)

        with ThreadPoolExecutor(max_workers=1) as pool:
            second = pool.submit(_with_sessions, ctx, work)
            work(ctx)
            second.result()
    pending: dict[str, Pending] = {}
    for g in groups:
        got = done.get(tuple(g)) or _sql_pass(ctx, g)
        if isinstance(got, str):
            pending.update(_first_pass_python(ctx, g, report, None, dict.fromkeys(g, got)))
            continue
        report.tables.extend(got.tables)
        report.rejected.extend(got.rejected)
        pending.update(got.pending)
    return pending


def _with_sessions(ctx: _Ctx, work: Callable[[_Ctx], None]) -> None:
    """``work`` on a context of its own two sessions (set up as the first ones). Where a server
    refuses more sessions, the first pair does all the work, as before."""
    with contextlib.ExitStack() as stack:
        conns: list[psycopg.Connection[Any]] = []
        for db in (ctx.s.source, ctx.s.target):
            try:
                with pg.translated(db.masked()):
                    conns.append(stack.enter_context(pg.connect(db.conninfo(), autocommit=True)))
            except ReplicatorError as exc:
                log.warning("validating one group at a time: %s", exc)
                return
        for conn in conns:
            conn.execute(SESSION_SQL)
        work(dataclasses.replace(ctx, legacy=conns[0], target=conns[1]))


def _legacy_bytes(ctx: _Ctx, groups: list[list[str]]) -> dict[tuple[str, ...], int]:
    """The size of the legacy tables each group reads: what its comparison costs, roughly."""
    sources = {tuple(g): sorted({w.source for t in g for w in ctx.writers(t)}) for g in groups}
    names = sorted({s for ss in sources.values() for s in ss})
    with pg.translated(ctx.s.source.masked()):
        rows = ctx.legacy.execute(
            "SELECT t, coalesce(pg_total_relation_size(to_regclass(t)), 0)"
            " FROM unnest(%s::text[]) AS t",
            (names,),
        ).fetchall()
    size = {str(t): int(n) for t, n in rows}
    return {g: sum(size.get(s, 0) for s in ss) for g, ss in sources.items()}


def _keyed_sql_pass(
    ctx: _Ctx, group: list[str], report: Report, touched: Mapping[str, set[SourceKey]]
) -> tuple[dict[str, Pending], dict[str, str]]:
    """The touched keys of each component that compiles compared in both databases; returns
    their candidates, and the tables left to the Python path with the reason."""
    out: dict[str, Pending] = {}
    left: dict[str, str] = {}
    for comp in components(ctx.direction, group):
        plan = group_plan(ctx, comp)
        if not isinstance(plan, GroupPlan):
            left.update(dict.fromkeys(comp, plan))
            continue
        with pg.translated(f"{ctx.s.source.masked()} / {ctx.s.target.masked()}"):
            got = check_keys(
                plan,
                ctx.direction,
                ctx.legacy,
                ctx.target,
                touched,
                lambda shape, keys: read_target(ctx.target, shape, keys),
                lambda: _snapshot(ctx.legacy, ctx.s.source.masked()),
            )
        report.rejected.extend(got.rejected)
        for t in comp:
            o = got.tables[t]
            ctx.provenance[t] = o.provenance
            res = TableResult(t, "keys", path="sql")
            res.expected_rows, res.target_rows = o.expected_rows, o.target_rows
            res.rows_checked = o.rows_checked
            res.chunks, res.chunks_mismatched = o.compared, o.mismatched
            report.tables.append(res)
            out[t] = o.pending
    return out, left


def _first_pass(
    ctx: _Ctx, group: list[str], report: Report, touched: Mapping[str, set[SourceKey]] | None
) -> dict[str, Pending]:
    if touched is None:
        return _full_passes(ctx, [group], report)
    done, left = _keyed_sql_pass(ctx, group, report, touched)
    if not left:
        return done
    # The rest as one group, as before: one legacy snapshot for all of it.
    return {**done, **_first_pass_python(ctx, list(left), report, touched, left)}


def _first_pass_python(
    ctx: _Ctx,
    group: list[str],
    report: Report,
    touched: Mapping[str, set[SourceKey]] | None,
    reasons: Mapping[str, str],
) -> dict[str, Pending]:
    shapes = {t: ctx.shapes[t] for t in group}
    out: dict[str, Pending] = {}
    # Target first, then legacy: a row changed in between then shows as missing or different
    # (its source is known, so a re-check reads it by key) rather than as an unexplained extra.
    with _snapshot(ctx.target, ctx.s.target.masked()):
        actual = {t: read_target(ctx.target, shapes[t]) for t in group} if touched is None else {}
    writers = {w.source: w for t in group for w in ctx.writers(t)}
    with _snapshot(ctx.legacy, ctx.s.source.masked()):
        if touched is None:
            exp = fold_all(ctx.legacy, writers.values(), shapes)
        else:
            mine = {s: k for s, k in touched.items() if s in writers}
            exp = fold_keys(ctx.legacy, ctx.direction, mine, shapes, partial=True)
    report.rejected.extend(exp.rejected)
    for t in group:
        ctx.provenance[t] = exp.sources[t]
        rows = exp.rows[t]
        res = TableResult(t, "full" if touched is None else "keys", path_reason=reasons.get(t))
        if touched is not None:
            actual[t] = read_target(ctx.target, shapes[t], list(rows))
        res.expected_rows = sum(1 for e in rows.values() if e.state == "present")
        res.target_rows = len(actual[t])
        keys = set(actual[t]) | set(rows)
        res.rows_checked = len(keys)
        out[t] = _compare(shapes[t], actual[t], rows, res, keys)
        report.tables.append(res)
    return out


def _expect_keys(ctx: _Ctx, table: str, keys: set[Key]) -> dict[Key, Exp | None]:
    """Fresh expectations for ``keys``: by source key where that is exact, else a full read."""
    prov = ctx.provenance.get(table, {})
    writers = ctx.writers(table)
    partial = table in ctx.partial
    shapes = {table: ctx.shapes[table]}
    with _snapshot(ctx.legacy, ctx.s.source.masked()):
        # By key only when no other source row can contribute: one writer (no merge) and
        # every key's source known (an extra row's source is not).
        if partial or (len(writers) == 1 and all(k in prov for k in keys)):
            src: dict[str, set[SourceKey]] = {}
            for k in keys:
                for source, sk in prov.get(k, ()):
                    src.setdefault(source, set()).add(sk)
            exp = fold_keys(ctx.legacy, ctx.direction, src, shapes, partial=partial)
        else:
            exp = fold_all(ctx.legacy, writers, shapes)
    return {k: exp.rows[table].get(k) for k in keys}


def _settle(
    ctx: _Ctx, pending: dict[str, Pending], report: Report, rounds: int
) -> dict[str, Pending]:
    """Re-check candidates until each is converged (in flight) or confirmed; returns confirmed.
    What is left in ``pending`` afterwards is unsettled."""
    confirmed: dict[str, Pending] = {t: {} for t in pending}
    prev: dict[str, dict[Key, Exp | None]] | None = None
    results = {r.table: r for r in report.tables}
    for r in range(1, rounds + 2):
        if not any(pending.values()):
            break
        cur = {t: _expect_keys(ctx, t, set(p)) for t, p in pending.items() if p}
        if prev is not None:
            for t, p in pending.items():
                for k in list(p):
                    if verdict(p[k][0], cur[t][k]) is None:
                        # The target read already showed the newer legacy state: in flight.
                        del p[k]
                        results[t].in_flight += 1
                    elif cur[t][k] == prev[t][k]:
                        confirmed[t][k] = p.pop(k)  # legacy did not move across the target read
        if r == rounds + 1 or not any(pending.values()) or not ctx.sync():
            break
        report.rounds = r
        for t, p in pending.items():
            if not p:
                continue
            actual = read_target(ctx.target, ctx.shapes[t], list(p))
            for k in list(p):
                a, e = actual.get(k), cur[t][k]
                if verdict(a, e) is None:
                    del p[k]
                    results[t].in_flight += 1
                else:
                    p[k] = (a, e)
        prev = cur
    return confirmed


def _difference(
    shape: TableShape, key: Key, actual: CanonRow | None, exp: Exp | None, kind: str | None = None
) -> Difference:
    kind = kind or verdict(actual, exp) or "differs"
    d = Difference(shape.name, kind, shape.key_dict(key))
    if actual is not None and exp is not None and exp.row is not None:
        a = masked(actual, exp.row)
        d.columns = differing_columns(shape, a, exp.row)
        idx = {c: i for i, c in enumerate(shape.columns)}
        d.expected = {c: shown(exp.row[idx[c]]) for c in d.columns}
        d.actual = {c: shown(a[idx[c]]) for c in d.columns}
    return d


def validate(
    settings: Settings,
    mapping: MappingSet,
    *,
    table: str | None = None,
    fast: bool = False,
    rounds: int = 3,
    marker_timeout_s: float = 30.0,
    save: bool = True,
    keys: Mapping[str, set[SourceKey]] | None = None,
    full_sources: Iterable[str] = (),
    read_ahead: Touched | None = None,
    python_path: bool = False,
) -> Report:
    """Validate the target against the legacy data; the report is stored unless ``save=False``.

    ``keys`` (legacy table -> keys) narrows the run to those legacy rows, plus the legacy tables
    in ``full_sources`` in full: what a rollback re-checks (replicator.validate.reverse).
    ``read_ahead`` (``fast`` only): the changes topic as the caller already read it from the
    baseline; only its tail is read now (a cutover's verify, in the write pause)."""
    selected = select_tables(mapping.forward, table)
    require_keys(mapping.forward, "validation")
    scope = "keys" if keys is not None else "fast" if fast else "full"
    report = Report(scope, sorted(selected) if table else None, datetime.now(UTC))
    legacy = pg.connect(settings.source.conninfo(), autocommit=True)
    target = pg.connect(settings.target.conninfo(), autocommit=True)
    try:
        with pg.translated(settings.target.masked()):
            ensure_schema(target)
            ensure_runs_table(target)
            shapes = shapes_of(target, selected)
        with pg.translated(settings.source.masked()):
            live = (
                legacy.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                    (settings.slot("fwd"),),
                ).fetchone()
                is not None
            )
            writers = {
                w.source: w
                for tt in selected
                for w in mapping.forward.tables.values()
                if any(x.name == tt for x in w.writes)
            }
            report.mapping_errors = mapping_errors(legacy, writers.values())
        ctx = _Ctx(settings, mapping.forward, legacy, target, shapes, live, marker_timeout_s)
        ctx.force_python = python_path
        for conn in (legacy, target):
            # Canonical text alike on both servers (checksums in SQL; instants in UTC).
            conn.execute(SESSION_SQL)
        ctx.hashing = choose_hashing(legacy, target)
        report.live = live
        topic = settings.topic("fwd", "changes")
        touched: dict[str, set[SourceKey]] | None = None
        full_tables = list(selected)
        if keys is not None:
            touched = {source: set(k) for source, k in keys.items()}
            full_tables = sorted(
                {
                    w.name
                    for src in full_sources
                    if src in mapping.forward.tables
                    for w in mapping.forward.tables[src].writes
                }
                & set(selected)
            )
        elif fast:
            base = fast_baseline(target, table and sorted(selected)[0])
            if base is None:
                raise PreconditionError(
                    "no clean full validation to compare against",
                    hint="run `replicator validate` without --fast first",
                )
            report.since_run_id = base[0]
            got = touched_since(
                settings.kafka.bootstrap_servers,
                topic,
                mapping.forward,
                base[1],
                prior=read_ahead,
                **settings.kafka.client_options(),
            )
            touched = got.keys
            # A truncate cannot be narrowed to keys: its tables are checked in full.
            full_tables = sorted(
                {w.name for s in got.truncated for w in mapping.forward.tables[s].writes}
                & set(selected)
            )
        else:
            try:
                report.log_offsets = end_offsets(
                    settings.kafka.bootstrap_servers, topic, **settings.kafka.client_options()
                )
            except ReplicatorError:
                report.log_offsets = None  # no Kafka: the run stands, --fast cannot build on it
        ctx.sync()
        pending: dict[str, Pending] = {}
        pending.update(_full_passes(ctx, components(mapping.forward, full_tables), report))
        if touched is not None:
            keyed = [t for t in selected if t not in full_tables]
            ctx.partial.update(keyed)
            if keyed:
                pending.update(_first_pass(ctx, keyed, report, touched))
        confirmed = _settle(ctx, pending, report, rounds) if live else pending
        if not live:
            pending = {}
        results = {r.table: r for r in report.tables}
        for t, p in confirmed.items():
            for k, (a, e) in p.items():
                d = _difference(shapes[t], k, a, e)
                setattr(results[t], d.kind, getattr(results[t], d.kind) + 1)
                report.differences.append(d)
        for t, p in pending.items():
            for k, (a, e) in p.items():
                results[t].unsettled += 1
                report.differences.append(_difference(shapes[t], k, a, e, "unsettled"))
        report.orphans, report.orphan_count = find_orphans(
            ctx.target, mapping.forward, selected, ctx.sync if live else None
        )
        report.rejected_count = len(report.rejected)
        report.lagging = ctx.lagging
        report.finished_at = datetime.now(UTC)
        if save:
            with pg.translated(settings.target.masked()):
                report.run_id = store(target, report)
        return report
    finally:
        legacy.close()
        target.close()
