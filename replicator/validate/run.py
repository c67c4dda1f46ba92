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

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg

from connectors import pg
from replicator.config import Settings
from replicator.derived import prove_direction
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
from replicator.validate.context import Ctx, snapshot
from replicator.validate.expect import SourceKey, fold_all, fold_keys
from replicator.validate.fast import Touched, end_offsets, touched_since
from replicator.validate.insql.catalog import TableInfo, catalog
from replicator.validate.insql.passes import (
    OnRange,
    Pair,
    Passed,
    full_sql_passes,
    keyed_sql_pass,
    spare_sessions,
    sql_pass,
)
from replicator.validate.insql.plan import SESSION_SQL, choose_hashing
from replicator.validate.insql.ranges import FULL_RANGE_ROWS, RangeAsk
from replicator.validate.orphans import find_orphans
from replicator.validate.report import (
    Difference,
    Orphan,
    Report,
    TableResult,
    clear_flags,
    ensure_runs_table,
    fast_baseline,
    key_text,
    last_validation,
    store,
)
from replicator.validate.resume import Checkpoints, find_interrupted
from replicator.validate.scope import (
    components,
    mapping_errors,
    read_target,
    require_keys,
    select_tables,
    shapes_from,
)
from transforms.api import MappingSet

__all__ = ["Report", "last_validation", "select_tables", "validate"]

log = logging.getLogger(__name__)

CHUNK_KEYS = 1_000
Pending = dict[Key, tuple[CanonRow | None, Exp | None]]


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


def _full_passes(
    ctx: Ctx,
    groups: list[list[str]],
    report: Report,
    spare: Callable[[], Pair | None] = lambda: None,
    also: Callable[[Ctx], None] | None = None,
    on_clean: Callable[[tuple[str, ...], list[TableResult]], None] | None = None,
    on_range: OnRange | None = None,
) -> dict[str, Pending]:
    """Every group in full: in SQL where it compiles, else read the Python way. ``on_clean``
    is told of each group found without a candidate difference (validate/resume.py)."""

    def record(group: tuple[str, ...], got: Passed | str) -> None:
        clean = not isinstance(got, str) and not any(got.pending.values()) and not got.rejected
        if on_clean and clean and not isinstance(got, str):
            on_clean(group, got.tables)

    done = full_sql_passes(ctx, groups, spare, also, record, on_range)
    pending: dict[str, Pending] = {}
    for g in groups:
        got = done.get(tuple(g)) or sql_pass(ctx, g)
        if isinstance(got, str):
            rejected = len(report.rejected)
            found = _first_pass_python(ctx, g, report, None, dict.fromkeys(g, got))
            pending.update(found)
            if on_clean and not any(found.values()) and len(report.rejected) == rejected:
                on_clean(tuple(g), [r for r in report.tables if r.table in g])
            continue
        report.tables.extend(got.tables)
        report.rejected.extend(got.rejected)
        pending.update(got.pending)
    return pending


def _first_pass(
    ctx: Ctx, group: list[str], report: Report, touched: Mapping[str, set[SourceKey]] | None
) -> dict[str, Pending]:
    if touched is None:
        return _full_passes(ctx, [group], report)
    done, left = keyed_sql_pass(ctx, group, report, touched)
    if not left:
        return done
    # The rest as one group, as before: one legacy snapshot for all of it.
    return {**done, **_first_pass_python(ctx, list(left), report, touched, left)}


def _first_pass_python(
    ctx: Ctx,
    group: list[str],
    report: Report,
    touched: Mapping[str, set[SourceKey]] | None,
    reasons: Mapping[str, str],
) -> dict[str, Pending]:
    shapes = {t: ctx.shapes[t] for t in group}
    out: dict[str, Pending] = {}
    # Target first, then legacy: a row changed in between then shows as missing or different
    # (its source is known, so a re-check reads it by key) rather than as an unexplained extra.
    with snapshot(ctx.target, ctx.s.target.masked()):
        actual = {t: read_target(ctx.target, shapes[t]) for t in group} if touched is None else {}
    writers = {w.source: w for t in group for w in ctx.writers(t)}
    with snapshot(ctx.legacy, ctx.s.source.masked()):
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


def _expect_keys(ctx: Ctx, table: str, keys: set[Key]) -> dict[Key, Exp | None]:
    """Fresh expectations for ``keys``: by source key where that is exact, else a full read."""
    prov = ctx.provenance.get(table, {})
    writers = ctx.writers(table)
    partial = table in ctx.partial
    shapes = {table: ctx.shapes[table]}
    with snapshot(ctx.legacy, ctx.s.source.masked()):
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
    ctx: Ctx, pending: dict[str, Pending], report: Report, rounds: int
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
    if exp is not None and exp.collides:
        # Which of the rows the target holds says nothing: each of the others is lost.
        d.sources = [{"table": src, "key": dict(sk)} for src, sk in exp.collides]
    elif actual is not None and exp is not None and exp.row is not None:
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
    resume: bool = False,
    key_range: RangeAsk | None = None,
) -> Report:
    """Validate the target against the legacy data; the report is stored unless ``save=False``.
    ``resume``: a full run continues an interrupted one, re-using the groups it found clean.
    ``key_range``: one key range of each group only (continuous validation; ``report.ranges``
    says which, or why a group was checked whole).

    ``keys`` (legacy table -> keys) narrows the run to those legacy rows, plus the legacy tables
    in ``full_sources`` in full: what a rollback re-checks (replicator.validate.reverse).
    ``read_ahead`` (``fast`` only): the changes topic as the caller already read it from the
    baseline; only its tail is read now (a cutover's verify, in the write pause)."""
    selected = select_tables(mapping.forward, table)
    require_keys(mapping.forward, "validation")
    scope = "keys" if keys is not None else "fast" if fast else "full"
    report = Report(scope, sorted(selected) if table else None, datetime.now(UTC))
    with contextlib.ExitStack() as stack:
        # The first pair of sessions is opened side by side; then a second pair for a full
        # run, and Kafka's end offsets (noted for a later --fast), meanwhile (not at once with
        # the first pair: opening a session costs CPU, and the first pair is waited for).
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        opening = pool.submit(pg.connect, settings.target.conninfo(), autocommit=True)
        try:
            legacy = stack.enter_context(pg.connect(settings.source.conninfo(), autocommit=True))
        except BaseException:
            with contextlib.suppress(Exception):
                stack.enter_context(opening.result())  # closed with the rest
            raise
        target = stack.enter_context(opening.result())
        spare = stack.enter_context(spare_sessions(settings, scope == "full" and not python_path))
        # Only a stored full run is a --fast baseline: no other run reads Kafka here.
        offsets = pool.submit(_log_offsets, settings, scope == "full" and save)
        return _validate(
            settings, mapping, legacy, target, spare, offsets.result, report, selected,
            table=table, keys=keys, fast=fast, rounds=rounds, marker_timeout_s=marker_timeout_s,
            save=save, full_sources=full_sources, read_ahead=read_ahead, python_path=python_path,
            resume=resume, key_range=key_range,
        )  # fmt: skip


def _last_range(ctx: Ctx) -> bool:
    """Not a check by range, or one whose ranges (or whole groups) reach every table's end."""
    return all(isinstance(r, str) or r.hi is None for r, _ in ctx.ranges.values())


def _log_offsets(s: Settings, wanted: bool) -> dict[int, int] | None:
    if not wanted:
        return None
    try:
        return end_offsets(
            s.kafka.bootstrap_servers, s.topic("fwd", "changes"), **s.kafka.client_options()
        )
    except ReplicatorError:
        return None  # no Kafka: the run stands, --fast cannot build on it


def _legacy_setup(
    settings: Settings, mapping: MappingSet, legacy: psycopg.Connection[Any]
) -> tuple[bool, dict[str, TableInfo]]:
    """Whether live sync runs (the forward slot exists), and legacy's catalog."""
    with pg.translated(settings.source.masked()):
        legacy.execute(SESSION_SQL)
        live = (
            legacy.execute(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                (settings.slot("fwd"),),
            ).fetchone()
            is not None
        )
        # Converters' derived SQL forms are used only once proved here (replicator.derived).
        prove_direction(mapping.forward, legacy)
        return live, catalog(legacy, mapping.forward.tables)


def _validate(
    settings: Settings,
    mapping: MappingSet,
    legacy: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    spare: Callable[[], Pair | None],
    log_offsets: Callable[[], dict[int, int] | None],
    report: Report,
    selected: Mapping[str, Any],
    *,
    table: str | None,
    fast: bool,
    rounds: int,
    marker_timeout_s: float,
    save: bool,
    keys: Mapping[str, set[SourceKey]] | None,
    full_sources: Iterable[str],
    read_ahead: Touched | None,
    python_path: bool,
    resume: bool = False,
    key_range: RangeAsk | None = None,
) -> Report:
    # Each server's share of the set-up at once: legacy's in a thread of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        legacy_side = pool.submit(_legacy_setup, settings, mapping, legacy)
        with pg.translated(settings.target.masked()):
            target.execute(SESSION_SQL)  # canonical text alike on both servers (instants in UTC)
            target_catalog = catalog(target, mapping.forward.target_tables)
            shapes = shapes_from(target_catalog, selected)
        live, legacy_catalog = legacy_side.result()
    with pg.translated(settings.target.masked()):
        if save or fast or live:
            # What storing the report, a --fast baseline and live sync's markers need; a run
            # that reads none of them creates nothing.
            ensure_schema(target)
            ensure_runs_table(target)
    writers = [
        w for w in mapping.forward.tables.values() if any(x.name in selected for x in w.writes)
    ]
    report.mapping_errors = mapping_errors(legacy_catalog, writers)
    ctx = Ctx(settings, mapping.forward, legacy, target, shapes, live, marker_timeout_s)
    ctx.force_python = python_path
    ctx.range_ask = key_range
    ctx.legacy_catalog, ctx.target_catalog = legacy_catalog, target_catalog
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
    # Noted before any snapshot is taken: a later --fast re-checks every change from there.
    report.log_offsets = log_offsets()
    groups = components(mapping.forward, full_tables)
    checkpoints = None
    if keys is None and not fast and save:
        groups, checkpoints = _resumable(settings, target, report, groups, resume, ctx)
    elif resume:
        raise PreconditionError(
            "--resume continues a full validation only", hint="leave out --fast"
        )
    try:
        return _compare_all(
            settings, mapping, ctx, report, selected, groups, full_tables, touched, spare,
            rounds=rounds, live=live, save=save, target=target, checkpoints=checkpoints,
        )  # fmt: skip
    finally:
        if checkpoints is not None:
            checkpoints.close()


def _resumable(
    settings: Settings,
    target: psycopg.Connection[Any],
    report: Report,
    groups: list[list[str]],
    resume: bool,
    ctx: Ctx,
) -> tuple[list[list[str]], Checkpoints]:
    """The groups left to check (a group the interrupted run had checked part of from after the
    last key it found clean), and where this run records the clean ones."""
    ctx.full_range_rows = settings.validation.range_rows or FULL_RANGE_ROWS
    found = None
    if resume:
        with pg.translated(settings.target.masked()):
            found = find_interrupted(target, report.tables_requested)
        if found is None:
            raise PreconditionError(
                "no interrupted full validation to resume",
                hint="run `replicator validate` without --resume",
            )
        # The interrupted run's start and offsets: its groups were read from then on.
        report.started_at, report.log_offsets = found.started_at, found.log_offsets
        reused = [g for g in groups if tuple(g) in found.done]
        for g in reused:
            report.tables.extend(found.done[tuple(g)])
        ctx.range_start = {g: v for g, v in found.partial.items() if g not in found.done}
        report.resumed = {
            "groups_reused": len(reused),
            "groups_checked": len(groups) - len(reused),
            "tables_reused": sorted(t for g in reused for t in g),
            "rows_reused": sum(r.rows_checked for g in reused for r in found.done[tuple(g)])
            + sum(r.rows_checked for _, rs, _ in ctx.range_start.values() for r in rs),
            "ranges_reused": sum(n for _, _, n in ctx.range_start.values()),
            "tables_resumed_in_range": sorted(t for g in ctx.range_start for t in g),
        }
        groups = [g for g in groups if tuple(g) not in found.done]
    return groups, Checkpoints(
        settings.target,
        token=found.token if found else None,
        tables=report.tables_requested,
        started_at=report.started_at,
        log_offsets=report.log_offsets,
    )


def _compare_all(
    settings: Settings,
    mapping: MappingSet,
    ctx: Ctx,
    report: Report,
    selected: Mapping[str, Any],
    groups: list[list[str]],
    full_tables: list[str],
    touched: dict[str, set[SourceKey]] | None,
    spare: Callable[[], Pair | None],
    *,
    rounds: int,
    live: bool,
    save: bool,
    target: psycopg.Connection[Any],
    checkpoints: Checkpoints | None,
) -> Report:
    shapes = ctx.shapes
    ctx.sync()
    # Without live sync nothing moves: the orphan check runs beside the last groups.
    orphans: list[tuple[list[Orphan], int]] = []

    def find(c: Ctx) -> None:
        orphans.append(find_orphans(c.target, mapping.forward, selected, None))

    pending: dict[str, Pending] = {}
    on_clean = checkpoints.clean if checkpoints is not None else None
    on_range = checkpoints.range_clean if checkpoints is not None else None
    beside = None if live or ctx.range_ask is not None else find
    pending.update(_full_passes(ctx, groups, report, spare, beside, on_clean, on_range))
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
            # The legacy rows behind it: what `--repair` re-sends (validate/repair.py).
            report.provenance[d.table, key_text(d.key)] = set(ctx.provenance.get(t, {}).get(k, ()))
    for t, p in pending.items():
        for k, (a, e) in p.items():
            results[t].unsettled += 1
            report.differences.append(_difference(shapes[t], k, a, e, "unsettled"))
    report.orphans, report.orphan_count = (
        orphans[0]
        if orphans
        else ([], 0)
        if not _last_range(ctx)  # a table's orphans are looked for with its last range
        else find_orphans(ctx.target, mapping.forward, selected, ctx.sync if live else None)
    )
    report.rejected_count = len(report.rejected)
    report.ranges = dict(ctx.ranges)
    report.lagging = ctx.lagging
    report.finished_at = datetime.now(UTC)
    if save:
        with pg.translated(settings.target.masked()):
            report.run_id = store(target, report)
            report.cleared_flags = clear_flags(target, report)
        if checkpoints is not None:
            checkpoints.finish()
    return report
