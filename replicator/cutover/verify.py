"""The switch's verification, split so that the write pause checks only what the pause changed.

Before the fence, with writes flowing, a verification proves every key touched up to the changes
topic's offsets ``E1`` that it read first (a cutover: ``validate --fast`` with its live settling;
a rollback: the legacy keys the reverse stream wrote, compared once, the keys that differ — rows
still in flight — carried into the pause). Any change it could not have seen commits after it
read ``E1``, so it sits at or after ``E1`` in the topic. Inside the pause both sides are static
once drained: :class:`Tail` reads the topic from ``E1`` up to what apply has applied (a consumer
positioned before the fence) and :class:`KeyedCheck` compares exactly those keys, plus the
carried ones, on connections opened before the fence. The pause's verification is bounded by
the write rate times the short gap between ``E1`` and the fence, not by the time since the last
full validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition

from connectors import kafka_io, pg
from connectors.pgtypes import TextLoader
from replicator.config import Settings
from replicator.drift.recorder import ddl_in
from replicator.errors import CutoverAborted, KafkaUnavailable
from replicator.validate.context import Ctx
from replicator.validate.expect import SourceKey
from replicator.validate.fast import Touched
from replicator.validate.insql.passes import group_plan
from replicator.validate.insql.plan import SESSION_SQL, GroupPlan, choose_hashing
from replicator.validate.report import Difference, Report
from replicator.validate.run import _difference, _first_pass
from replicator.validate.scope import components, require_keys, select_tables, shapes_of
from transforms.api import MappingSet

if TYPE_CHECKING:
    from replicator.validate.reverse import ReverseKeys


@dataclass
class Mismatch:
    """Legacy keys (and whole legacy tables) whose target rows differ, with the differences."""

    keys: dict[str, set[SourceKey]] = field(default_factory=dict)
    full: set[str] = field(default_factory=set)
    differences: list[Difference] = field(default_factory=list)
    rejected: int = 0
    rows_checked: int = 0

    def __bool__(self) -> bool:
        return bool(self.differences or self.rejected)


class KeyedCheck:
    """The forward comparison of chosen legacy keys, on connections held open across the pause,
    with no marker round trip (the caller knows whether both sides are static)."""

    def __init__(self, s: Settings, mapping: MappingSet, *, python_path: bool = False) -> None:
        self.s = s
        self.python_path = python_path  # every table the Python way (tests, comparisons)
        self.fwd = mapping.forward
        self.selected = select_tables(self.fwd, None)
        require_keys(self.fwd, "verification")
        self.legacy = pg.connect(s.source.conninfo(), autocommit=True)
        self.target = pg.connect(s.target.conninfo(), autocommit=True)
        with pg.translated(s.target.masked()):
            self.shapes = shapes_of(self.target, self.selected)
        for conn, db in ((self.legacy, s.source), (self.target, s.target)):
            with pg.translated(db.masked()):
                conn.execute(SESSION_SQL)  # canonical text alike on both servers (as validate)
        self.hashing = choose_hashing(self.legacy, self.target)
        # Each group's SQL plan (or why it keeps the Python path), made now, before any fence:
        # the checks in the write pause only run them.
        self.plans: dict[tuple[str, ...], GroupPlan | str] = {}
        self._catalogs: tuple[Any, Any] = (None, None)  # read with the plans, kept for the pause
        ctx = self._ctx()
        for group in components(self.fwd, self.selected):
            group_plan(ctx, group)
        self._catalogs = ctx.legacy_catalog, ctx.target_catalog

    def _ctx(self) -> Ctx:
        ctx = Ctx(self.s, self.fwd, self.legacy, self.target, self.shapes, False, 0.0)
        ctx.hashing, ctx.plans = self.hashing, self.plans
        ctx.legacy_catalog, ctx.target_catalog = self._catalogs
        ctx.force_python = self.python_path
        return ctx

    def compare(self, keys: Mapping[str, set[SourceKey]], full_sources: set[str]) -> Mismatch:
        report = Report("keys", None, datetime.now(UTC))
        ctx = self._ctx()
        full_tables = sorted(
            {
                w.name
                for src in full_sources
                if src in self.fwd.tables
                for w in self.fwd.tables[src].writes
            }
            & set(self.selected)
        )
        pending = {}
        for group in components(self.fwd, full_tables):
            pending.update(_first_pass(ctx, group, report, None))
        keyed = [t for t in self.selected if t not in full_tables]
        wanted = {src: set(k) for src, k in keys.items() if k}
        if keyed and wanted:
            ctx.partial.update(keyed)
            pending.update(_first_pass(ctx, keyed, report, wanted))
        out = Mismatch(rejected=len(report.rejected), rows_checked=report.rows_checked)
        for t, rows in pending.items():
            prov = ctx.provenance.get(t, {})
            for k, (actual, exp) in rows.items():
                out.differences.append(_difference(self.shapes[t], k, actual, exp))
                sources = prov.get(k)
                if sources:
                    for src, sk in sources:
                        out.keys.setdefault(src, set()).add(sk)
                else:  # a target row no legacy key explains: its writers' tables in full
                    out.full.update(w.source for w in ctx.writers(t))
        return out

    def close(self) -> None:
        self.legacy.close()
        self.target.close()


class Tail:
    """A consumer of ``topic`` positioned at ``start`` before the fence; :meth:`read_to` hands
    every message up to (at least) the given offsets to ``collect``, one fetch when they are
    few. A message past them is collected too: a superset of keys is still exact."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        start: Mapping[int, int],
        collect: Callable[[bytes], Any],
        **security: Any,
    ) -> None:
        self.topic = topic
        self.collect = collect
        self.consumer = kafka_io.consumer(bootstrap, fetch_max_wait_ms=5, **security)
        with kafka_io.translated(f"reading {topic}"):
            self.tps = [TopicPartition(topic, p) for p in sorted(start)]
            self.consumer.assign(self.tps)
            for tp in self.tps:
                self.consumer.seek(tp, start[tp.partition])
        self.read = 0

    def end_offsets(self) -> dict[int, int]:
        with kafka_io.translated(f"reading {self.topic}"):
            return {tp.partition: off for tp, off in self.consumer.end_offsets(self.tps).items()}

    def read_to(self, ends: Mapping[int, int], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        with kafka_io.translated(f"reading {self.topic}"):
            while True:
                behind = [
                    tp for tp in self.tps if self.consumer.position(tp) < ends.get(tp.partition, 0)
                ]
                if not behind:
                    return
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(f"reading {self.topic} did not finish in {timeout_s}s")
                for records in self.consumer.poll(timeout_ms=50).values():
                    for r in records:
                        self.collect(r.value)
                        self.read += 1

    def close(self) -> None:
        self.consumer.close()


class PauseVerification:
    """The three phases of a switch's verification, in order: :meth:`before_fence` proves
    everything up to ``E1``; :meth:`catch_up` compares, in short rounds, what arrived while the
    last check ran (rows in flight are carried); :meth:`in_pause` compares the tail read after
    the fence plus the carried rows, on static sides, and raises on any difference."""

    def __init__(
        self,
        s: Settings,
        mapping: MappingSet,
        action: str,
        touched: Touched | None,
        reverse_keys: ReverseKeys | None,
    ) -> None:
        self.s = s
        self.mapping = mapping
        self.action = action
        self._touched = touched
        self._reverse_keys = reverse_keys
        self.check = KeyedCheck(s, mapping)
        self._tail: Tail | None = None
        self._tail_keys: Callable[[], tuple[dict[str, set[SourceKey]], set[str]]] | None = None
        self._tail_refused: list[str] = []
        self._tail_ddl: list[str] = []  # DDL records read in the window (replicator.drift)
        self.carried = Mismatch()

    def before_fence(self) -> None:
        if self.action == "cutover":
            self._cutover_proof()
        else:
            self._rollback_proof()

    def _cutover_proof(self) -> None:
        """``validate --fast`` with its live settling, up to ``E1``."""
        from replicator.validate.fast import _collect
        from replicator.validate.run import validate

        touched = self._touched or Touched()
        report = validate(self.s, self.mapping, fast=True, marker_timeout_s=5.0, read_ahead=touched)
        if report.difference_count or report.unsettled_count:
            raise CutoverAborted(
                f"verification found {report.difference_count} difference(s)"
                f" and {report.unsettled_count} row(s) still changing",
                step="pre-verify",
                hint="`replicator validate` lists them; nothing was fenced",
            )
        tail = Touched()
        loader = TextLoader()
        ddl = self._tail_ddl

        def collect(v: bytes) -> None:
            ddl.extend(
                ddl_in(v)
            )  # legacy DDL after the preflight: the mapping was judged before it
            _collect(v, self.mapping.forward, loader, tail)

        self._tail = Tail(
            self.s.kafka.bootstrap_servers,
            self.s.topic("fwd", "changes"),
            touched.end_offsets,
            collect,
            **self.s.kafka.client_options(),
        )
        self._tail_keys = lambda: (tail.keys, tail.truncated)

    def _rollback_proof(self) -> None:
        """The legacy keys the reverse stream wrote, compared once (rows in flight carried),
        and the target's orphans."""
        from replicator.validate.orphans import find_orphans
        from replicator.validate.reverse import ReverseKeys

        rk = self._reverse_keys
        if rk is None:
            raise CutoverAborted("the preflight did not read the reverse stream", step="pre-verify")
        topic = self.s.topic("rev", "changes")
        seen = len(rk.refused)  # what the preflight read: counted as dead letters there
        rk.read(self.s.kafka, topic)
        _refuse_refused(rk.refused[seen:], "pre-verify")
        found = self.check.compare(rk.keys, rk.full)
        _refuse_rejected(found, "pre-verify")
        _, orphans = find_orphans(
            self.check.target, self.mapping.forward, self.check.selected, None
        )
        if orphans:
            raise CutoverAborted(
                f"{orphans} target row(s) point at a parent that is not there",
                step="pre-verify",
                hint="`replicator validate` lists them; nothing was fenced",
            )
        self._carry(found)
        tail = ReverseKeys(self.mapping, self.s.source, offsets=dict(rk.offsets))
        tail._oids = rk._oids
        tail._conn = self.check.legacy  # for the types of a legacy table not seen yet
        ddl = self._tail_ddl

        def collect(v: bytes) -> None:
            ddl.extend(ddl_in(v))  # target DDL after the preflight (replicator.drift)
            tail._collect(v)

        self._tail = Tail(
            self.s.kafka.bootstrap_servers,
            topic,
            rk.offsets,
            collect,
            **self.s.kafka.client_options(),
        )
        self._tail_keys = lambda: (tail.keys, tail.full)
        self._tail_refused = tail.refused

    def catch_up(self, rounds: int = 6, short_s: float = 0.03) -> None:
        """Shrink the pause's share: until a round is short, compare with writes flowing what
        arrived while the last one ran; rows in flight are carried into the pause."""
        assert self._tail is not None
        for _ in range(rounds):
            start = time.monotonic()
            self._tail.read_to(self._tail.end_offsets())
            _refuse_refused(self._tail_refused, "catch-up")
            _refuse_ddl(self._tail_ddl, "catch-up", self.action)
            keys, full = self._take_tail()
            # The rows carried so far are compared again: those applied meanwhile are proven
            # now (a later change sits after this round's end), so only what is still in
            # flight is carried on, about the write rate times the lag.
            for t, k in self.carried.keys.items():
                keys.setdefault(t, set()).update(k)
            full |= self.carried.full
            if keys or full:
                found = self.check.compare(keys, full)
                _refuse_rejected(found, "catch-up")
                self.carried = Mismatch()
                self._carry(found)
            if time.monotonic() - start < short_s:
                return

    def in_pause(self, applied: Mapping[int, int]) -> None:
        """Both sides static: the tail up to what apply applied, and the carried rows."""
        assert self._tail is not None
        self._tail.read_to(applied)
        _refuse_refused(self._tail_refused, "verify")
        _refuse_ddl(self._tail_ddl, "verify", self.action)
        keys, full = self._take_tail()
        for t, k in self.carried.keys.items():
            keys.setdefault(t, set()).update(k)
        found = self.check.compare(keys, full | self.carried.full)
        if found:
            raise CutoverAborted(
                f"verification found {len(found.differences) + found.rejected} difference(s)",
                step="verify",
                hint="`replicator validate` lists them",
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
            self.carried.keys.setdefault(t, set()).update(k)
        self.carried.full |= found.full

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
        self.check.close()


def _refuse_refused(refused: list[str], step: str) -> None:
    """A target write the reverse mapping refuses, made in the switch's window: legacy would
    lack it, so the rollback must not happen (as a rejection stops a cutover)."""
    if refused:
        raise CutoverAborted(
            f"{len(refused)} target write(s) are refused by the reverse mapping and would be"
            f" missing on legacy: {'; '.join(refused[:3])}",
            step=step,
            hint="`replicator dlq list` shows them; fix the data or the mapping, then roll back",
        )


def _refuse_rejected(found: Mismatch, step: str) -> None:
    if found.rejected:
        raise CutoverAborted(
            f"{found.rejected} legacy row(s) are refused by the forward mapping",
            step=step,
            hint="`replicator validate` lists them; nothing was fenced",
        )


def _refuse_ddl(ddl: list[str], step: str, action: str) -> None:
    """Legacy DDL between the preflight and the switch: the preflight judged the mapping
    against the schema before it, so the switch stops (the old writer stays) until it is seen
    and judged (docs/drift.md)."""
    if ddl:
        raise CutoverAborted(
            f"{'legacy' if action == 'cutover' else 'target'} schema changed during the"
            f" {action}'s window: {'; '.join(ddl)}",
            step=step,
            hint=f"`replicator drift list` shows its verdict; run the {action} again (no schema"
            " change during it)",
        )
