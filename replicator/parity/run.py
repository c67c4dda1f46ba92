"""``replicator parity``: each pair of the parity file on both sides at nearly the same point,
compared, and timed (docs/parity.md).

Per pair: draw the parameter sets on legacy; read every set on legacy; emit a marker and wait
until apply has recorded it (live sync: the target then holds every legacy change the legacy
reads saw); read every set on the target. A set whose answers differ is read on legacy again:
if the target's answer matches that one, the difference was a write in flight; if legacy's
answer did not change across the target read, the difference is confirmed; otherwise the round
is repeated, and a set still moving after every round is ``unsettled``. Then ``runs`` timed
reads per side, interleaved (a busy moment slows both alike), warm (the compare's reads went
first), and for a target that misses its goal the plan of its slowest-looking read, in words.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from connectors import pg
from replicator.config import Settings
from replicator.errors import ConfigError
from replicator.parity.compare import Row, differs, goal_misses, latency, missing_columns, shape
from replicator.parity.explain import summarise
from replicator.parity.report import PairResult, ParityReport, store
from replicator.parity.spec import Pair, ParityFile, check_arity
from replicator.state import ensure_schema
from replicator.validate.context import wait_marker_applied

Conn = psycopg.Connection[Any]
Params = dict[str, Any]

# SQLSTATE classes of a query's own mistakes (22 data, 42 syntax/unknown name/privilege),
# and the client's own refusal of its arguments: the parity file must change.
_QUERY_ERRORS = (psycopg.errors.DataError, psycopg.errors.SyntaxErrorOrAccessRuleViolation)


class _Sides:
    def __init__(self, s: Settings, legacy: Conn, target: Conn, live: bool, timeout_s: float):
        self.s, self.legacy, self.target = s, legacy, target
        self.live, self.timeout_s = live, timeout_s
        self.lagging = False

    def conn(self, side: str) -> Conn:
        return self.legacy if side == "legacy" else self.target

    def where(self, side: str) -> str:
        return (self.s.source if side == "legacy" else self.s.target).masked()

    def read(self, pair: Pair, side: str, sql: str, args: Any) -> list[Row]:
        with pg.translated(self.where(side)):  # a lost connection stays what it is
            try:
                with self.conn(side).cursor(row_factory=dict_row) as cur:
                    cur.execute(sql, args)
                    return cur.fetchall() if cur.description else []
            except (*_QUERY_ERRORS, psycopg.ProgrammingError) as exc:
                raise _query_error(pair, side, sql, exc) from exc

    def query(self, pair: Pair, side: str, values: Params) -> list[Row]:
        return self.read(pair, side, pair.legacy if side == "legacy" else pair.target,
                         pair.args(side, values))  # fmt: skip

    def sync(self) -> bool:
        """True when the target now holds what legacy held (or nothing moves: no live sync)."""
        if not self.live:
            return True
        if self.lagging:  # one marker not applied in time: the next pairs do not wait again
            return False
        with pg.translated(self.where("target")):
            ok = wait_marker_applied(self.s, self.legacy, self.target, self.timeout_s)
        self.lagging = not ok
        return ok


def _query_error(pair: Pair, side: str, sql: str, exc: Exception) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(
        f"parity pair {pair.name!r}: the {side} query fails: {first}",
        hint=f"fix the pair's `{'params' if sql == pair.params else side}` query in the parity"
        " file (table and column names, placeholders), then run `replicator parity` again",
    )


def _param_sets(sides: _Sides, pair: Pair) -> list[Params]:
    if pair.params is None:
        sets: list[Params] = [{}]
    else:
        rows = sides.read(pair, "legacy", pair.params, None)
        if not rows:
            raise ConfigError(
                f"parity pair {pair.name!r}: the params query found no rows on legacy",
                hint="draw parameters from rows that exist (a LIMIT rather than a small"
                " TABLESAMPLE on a small table)",
            )
        sets = rows[: pair.samples]
    columns = list(sets[0])
    for side in ("legacy", "target"):
        problem = check_arity(pair, side, columns)
        if problem:
            raise ConfigError(
                f"parity pair {pair.name!r}: {problem}",
                hint="make the params query's columns and the placeholders agree (docs/parity.md)",
            )
    try:
        pair.args("target", sets[0])
    except Exception as exc:  # a converter refusing a sampled key: say which
        raise ConfigError(
            f"parity pair {pair.name!r}: target_params cannot convert {sets[0]}: {exc}",
            hint="name the mapping's key converter for each parameter the target query takes",
        ) from exc
    return sets


def _compare(sides: _Sides, pair: Pair, sets: list[Params], res: PairResult, rounds: int) -> None:
    pending = list(range(len(sets)))
    for _ in range(rounds):
        legacy = {i: sides.query(pair, "legacy", sets[i]) for i in pending}
        if not sides.sync():
            res.unsettled = "apply did not record a marker in time: the target lags"
            return
        target = {i: sides.query(pair, "target", sets[i]) for i in pending}
        if res.rows_legacy == 0 and res.rows_target == 0:
            res.rows_legacy = sum(len(r) for r in legacy.values())
            res.rows_target = sum(len(r) for r in target.values())
        for side, rows in (("legacy", legacy), ("target", target)):
            for got in rows.values():
                missing = missing_columns(pair, got)
                if missing:
                    raise ConfigError(
                        f"parity pair {pair.name!r}: the {side} query returns no column"
                        f" {', '.join(missing)} (it returns {', '.join(got[0])})",
                        hint="name the compared columns alike on both sides (AS …)",
                    )
        moving = []
        for i in pending:
            found = differs(pair, legacy[i], target[i])
            if found is None:
                continue
            again = sides.query(pair, "legacy", sets[i])
            if differs(pair, again, target[i]) is None:
                continue  # the target read saw a write the first legacy read had not
            if shape(pair, again, "legacy") == shape(pair, legacy[i], "legacy"):
                res.difference = f"parameters {_show(sets[i])}: {found}"
                return
            moving.append(i)
        if not moving:
            return
        pending = moving
    res.unsettled = f"{len(pending)} parameter set(s) kept changing during {rounds} rounds"


def _show(values: Params) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "none"


def _timed(sides: _Sides, pair: Pair, side: str, values: Params) -> float:
    start = time.perf_counter()
    sides.query(pair, side, values)
    return (time.perf_counter() - start) * 1000


def _check_pair(sides: _Sides, pair: Pair, runs: int, rounds: int) -> PairResult:
    res = PairResult(pair.name, pair.compare)
    res.goal = f"≤ {pair.max_ratio:g}x legacy (p50), ≤ {pair.max_ms:g} ms (p95)"
    sets = _param_sets(sides, pair)
    res.param_sets = len(sets)
    _compare(sides, pair, sets, res, rounds)
    times: dict[str, list[float]] = {"legacy": [], "target": []}
    for i in range(runs):
        for side in ("legacy", "target") if i % 2 == 0 else ("target", "legacy"):
            times[side].append(_timed(sides, pair, side, sets[i % len(sets)]))
    res.legacy_ms, res.target_ms = latency(times["legacy"]), latency(times["target"])
    res.misses = goal_misses(pair, res.legacy_ms, res.target_ms)
    if res.misses:
        slowest = max(range(runs), key=lambda i: times["target"][i]) % len(sets)
        rows = sides.read(
            pair,
            "target",
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + pair.target,
            pair.args("target", sets[slowest]),
        )
        res.plan = summarise(next(iter(rows[0].values())))
    return res


def _live(s: Settings, legacy: Conn) -> bool:
    """Live sync runs forward: the forward slot exists and no cutover has happened."""
    with pg.translated(s.source.masked()):
        row = legacy.execute(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (s.slot("fwd"),)
        ).fetchone()
    return row is not None


def run_parity(
    s: Settings,
    parity: ParityFile,
    *,
    runs: int | None = None,
    save: bool = True,
    rounds: int = 3,
    marker_timeout_s: float = 30.0,
) -> ParityReport:
    """Check every pair of ``parity``; the report is stored on the target unless ``save=False``."""
    report = ParityReport(datetime.now(UTC), runs or parity.runs)
    with contextlib.ExitStack() as stack:
        legacy = stack.enter_context(pg.connect(s.source.conninfo(), autocommit=True))
        target = stack.enter_context(pg.connect(s.target.conninfo(), autocommit=True))
        for conn, side in ((legacy, s.source), (target, s.target)):
            with pg.translated(side.masked()):
                conn.execute("SET TimeZone = 'UTC'")
        report.live = _live(s, legacy)
        if report.live:
            with pg.translated(s.target.masked()):
                ensure_schema(target)  # the markers' table
        sides = _Sides(s, legacy, target, report.live, marker_timeout_s)
        for pair in parity.pairs:
            report.pairs.append(_check_pair(sides, pair, report.runs, rounds))
        report.finished_at = datetime.now(UTC)
        if save:
            with pg.translated(s.target.masked()):
                ensure_schema(target)
                report.run_id = store(target, report)
    return report
