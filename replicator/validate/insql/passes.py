"""A validation run's groups compared in the databases, spread over two pairs of sessions.

A group's plan is made once per run (catalogs read once per server). A full run compares two
groups at a time, the largest first: the second pair of sessions is opened in the background
from the run's start, and until it is ready the first pair takes groups alone. Each group is
read in snapshots of its own, as always: groups share no table.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors import pg
from replicator.config import Settings
from replicator.derived import prove_direction
from replicator.errors import ReplicatorError
from replicator.validate.canon import Key
from replicator.validate.context import Ctx, snapshot
from replicator.validate.expect import Rejected, SourceKey
from replicator.validate.insql.catalog import MISSING, catalog
from replicator.validate.insql.groups import Pending, run_group
from replicator.validate.insql.keys import check_keys
from replicator.validate.insql.plan import SESSION_SQL, GroupPlan, KeyRange, plan_group
from replicator.validate.insql.ranges import RangeAsk, probe, range_source, whole
from replicator.validate.report import Report, TableResult, add_counts
from replicator.validate.scope import components, read_target

__all__ = ["Passed", "full_sql_passes", "group_plan", "keyed_sql_pass", "spare_sessions"]

log = logging.getLogger(__name__)

Pair = tuple[psycopg.Connection[Any], psycopg.Connection[Any]]


@dataclass
class Passed:
    """One group compared in SQL: its candidates, table results and rejected rows."""

    pending: dict[str, Pending]
    tables: list[TableResult]
    rejected: list[Rejected]


def load_catalogs(ctx: Ctx) -> None:
    """Both servers' catalogs of every table the mapping reads or writes, once per run."""
    if ctx.legacy_catalog is None:
        with pg.translated(ctx.s.source.masked()):
            ctx.legacy_catalog = catalog(ctx.legacy, ctx.direction.tables)
            # Converters' derived SQL forms are used only once proved (replicator.derived).
            prove_direction(ctx.direction, ctx.legacy)
    if ctx.target_catalog is None:
        with pg.translated(ctx.s.target.masked()):
            ctx.target_catalog = catalog(ctx.target, ctx.direction.target_tables)


def group_plan(ctx: Ctx, group: list[str]) -> GroupPlan | str:
    """The SQL plan of a group of target tables, or why it keeps the Python path; in a check of
    one key range (``ctx.range_ask``), the plan of that range where the group allows one."""
    plan = _whole_plan(ctx, group)
    if ctx.range_ask is None:
        return plan
    got = ctx.ranges.get(tuple(group))
    if got is None:
        got = ctx.ranges[tuple(group)] = _range_plan(ctx, group, plan, ctx.range_ask)
    return got[1]


def _range_plan(
    ctx: Ctx, group: list[str], plan: GroupPlan | str, ask: RangeAsk
) -> tuple[KeyRange | str, GroupPlan | str]:
    quiet = ctx.full_range_rows > 0  # a full run: the whole group is what it checks anyway
    if not isinstance(plan, GroupPlan):
        whole(group, f"it is compared the Python way ({plan})", quiet=quiet)
        return plan, plan
    src = range_source(plan, group)
    if isinstance(src, str):
        whole(group, src, quiet=quiet)
        return src, plan
    with pg.translated(ctx.s.source.masked()):
        rng = probe(ctx.legacy, *src, ask)
    ranged = _plan_from_catalogs(ctx, group, rng)
    if isinstance(ranged, str):
        whole(group, ranged, quiet=quiet)
        return ranged, plan
    ranged.key_types.update(plan.key_types)
    return rng, ranged


def _plan_from_catalogs(ctx: Ctx, group: list[str], rng: KeyRange | None = None) -> GroupPlan | str:
    """plan_group over the catalogs ``ctx`` has read (load_catalogs), of ``rng`` if given."""
    legacy, target = ctx.legacy_catalog or {}, ctx.target_catalog or {}
    return plan_group(
        ctx.direction,
        group,
        ctx.shapes,
        lambda s: legacy.get(s, MISSING).categories(),
        lambda t: target.get(t, MISSING).enums(),
        ctx.hashing,
        rng,
    )


def _whole_plan(ctx: Ctx, group: list[str]) -> GroupPlan | str:
    if ctx.force_python:
        return "the Python path was asked for"
    known = ctx.plans.get(tuple(group))
    if known is not None:
        return known
    load_catalogs(ctx)
    legacy = ctx.legacy_catalog or {}
    plan = _plan_from_catalogs(ctx, group)
    if isinstance(plan, GroupPlan):
        for s, c in plan.compiled.items():  # the keys are listed as arrays of these types
            plan.key_types.setdefault(s, legacy.get(s, MISSING).types(c.source_key))
    ctx.plans[tuple(group)] = plan
    return plan


def sql_pass(ctx: Ctx, group: list[str]) -> Passed | str:
    """The group compared by checksums in both databases, or why it keeps the Python path."""
    plan = group_plan(ctx, group)
    if not isinstance(plan, GroupPlan):
        return plan
    with snapshot(ctx.target, ctx.s.target.masked()):
        ctx.target.execute("SELECT 1")  # the target's snapshot is taken first, as in Python
        with snapshot(ctx.legacy, ctx.s.source.masked()):
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
    return Passed(out, tables, got.rejected)


# A resumable run told of a group clean through a key: group, key, its tables' results so far,
# ranges checked so far.
OnRange = Callable[[tuple[str, ...], str, list[TableResult], int], None]


def ranged_pass(ctx: Ctx, group: list[str], on_range: OnRange | None) -> Passed | str:
    """A group of a resumable full run, key range by key range of ``ctx.full_range_rows``
    legacy rows (validate/insql/ranges.py), from after the key where an interrupted run had
    found it clean (``ctx.range_start``). ``on_range`` is told after each range while every
    range so far is without a candidate difference: `--resume` then starts after it. Each range
    is read in snapshots of its own, as each group is: live sync keeps a range found clean so."""
    if isinstance(group_plan(ctx, group), str):
        return sql_pass(ctx, group)  # the Python path: read whole
    after, reused, ranges = ctx.range_start.get(tuple(group), (None, [], 0))
    tables = {r.table: dataclasses.replace(r) for r in reused}
    pending: dict[str, Pending] = {t: {} for t in group}
    rejected: list[Rejected] = []
    prov: dict[str, dict[Key, set[tuple[str, SourceKey]]]] = {t: {} for t in group}
    while True:
        c = dataclasses.replace(ctx, range_ask=RangeAsk(after, ctx.full_range_rows), ranges={})
        got = sql_pass(c, group)
        if isinstance(got, str):
            return got
        rng = c.ranges[tuple(group)][0]
        ranges += 1
        for r in got.tables:
            if r.table in tables:
                add_counts(tables[r.table], r)
            else:
                tables[r.table] = r
        for t, p in got.pending.items():
            pending[t].update(p)
            prov[t].update(ctx.provenance.get(t, {}))  # each range's candidates' sources
        rejected.extend(got.rejected)
        hi = rng.hi if isinstance(rng, KeyRange) else None
        if hi is None:
            break
        if on_range is not None and not rejected and not any(pending.values()):
            on_range(tuple(group), hi, list(tables.values()), ranges)
        after = hi
    ctx.provenance.update(prov)
    return Passed(pending, [tables[t] for t in group if t in tables], rejected)


def full_sql_passes(
    ctx: Ctx,
    groups: list[list[str]],
    spare: Callable[[], Pair | None],
    also: Callable[[Ctx], None] | None = None,
    on_done: Callable[[tuple[str, ...], Passed | str], None] | None = None,
    on_range: OnRange | None = None,
) -> dict[tuple[str, ...], Passed | str]:
    """Every group compared in SQL (or why it keeps the Python path), the largest first, on
    this context's sessions and on the ``spare`` pair once it is open. ``also`` (a check of
    its own) is run by whichever pair runs out of groups first."""
    cost = {tuple(g): _cost(ctx, g) for g in groups}
    largest_first = sorted(groups, key=lambda g: -cost[tuple(g)])
    queue: collections.deque[list[str] | Callable[[Ctx], None]] = collections.deque(largest_first)
    if also is not None:
        queue.append(also)
    done: dict[tuple[str, ...], Passed | str] = {}

    def work(c: Ctx) -> None:
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                return
            if isinstance(item, list):
                done[tuple(item)] = (
                    ranged_pass(c, item, on_range) if c.full_range_rows else sql_pass(c, item)
                )
                if on_done is not None:  # a resumable run records it (validate/resume.py)
                    on_done(tuple(item), done[tuple(item)])
            else:
                item(c)

    if ctx.force_python or len(queue) < 2:
        work(ctx)
        return done

    def on_spare() -> None:
        pair = spare()
        if pair is not None and queue:
            work(dataclasses.replace(ctx, legacy=pair[0], target=pair[1]))

    with ThreadPoolExecutor(max_workers=1) as pool:
        second = pool.submit(on_spare)
        try:
            work(ctx)
        except BaseException:
            queue.clear()  # the other pair stops after its current group
            raise
        second.result()
    return done


def _cost(ctx: Ctx, group: list[str]) -> float:
    """What comparing a group costs, roughly, so that the largest go first and the two pairs
    finish together: rows times the length of the SQL computed for each (per-row subqueries
    count four times; a key computed in Python per row as 2,000 characters)."""
    plan = group_plan(ctx, group)
    legacy = ctx.legacy_catalog or {}

    def rows(source: str) -> float:
        return legacy.get(source, MISSING).rows_guess

    if not isinstance(plan, GroupPlan):  # read the Python way: costlier still, per row
        return sum(rows(w.source) * 10_000 for t in group for w in ctx.writers(t))
    cost = 0.0
    for p in plan.tables.values():
        n = sum(rows(source) for source, _, _ in p.sources)
        cost += n * (len(p.legacy_sql) + len(p.target_sql)) * (4 if p.subqueries else 1)
    for source, c in plan.compiled.items():
        cost += rows(source) * 2_000 * len(c.derived)
    return cost


@contextlib.contextmanager
def spare_sessions(s: Settings, wanted: bool) -> Iterator[Callable[[], Pair | None]]:
    """A second pair of sessions (set up as the first), opened in the background from now on.
    Yields a function that waits for them: None where they are not wanted, or where a server
    refuses more sessions (the first pair then does all the work, as before; the warning is
    given then, not when the run fails for the same reason on its first pair)."""
    if not wanted:
        yield lambda: None
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(_open_pair, s)
        warned: list[bool] = []

        def wait() -> Pair | None:
            got = opening.result()
            if isinstance(got, ReplicatorError):
                if not warned:
                    warned.append(True)
                    log.warning("validating one group at a time: %s", got)
                return None
            return got

        try:
            yield wait
        finally:
            got = opening.result()
            for conn in () if isinstance(got, ReplicatorError) else got:
                conn.close()


def _open_pair(s: Settings) -> Pair | ReplicatorError:
    with contextlib.ExitStack() as stack:
        conns: list[psycopg.Connection[Any]] = []
        for db in (s.source, s.target):
            try:
                with pg.translated(db.masked()):
                    conn = stack.enter_context(pg.connect(db.conninfo(), autocommit=True))
                    conn.execute(SESSION_SQL)
            except ReplicatorError as exc:
                return exc
            conns.append(conn)
        stack.pop_all()  # the caller closes them
        return conns[0], conns[1]
    raise AssertionError("unreachable")  # pragma: no cover (mypy: a stack may swallow errors)


def keyed_sql_pass(
    ctx: Ctx, group: list[str], report: Report, touched: Mapping[str, set[SourceKey]]
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
                lambda: snapshot(ctx.legacy, ctx.s.source.masked()),
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
