"""A schema change judged through the mapping (pure: no I/O).

Verdicts, worst last (docs/drift.md):

- ``safe`` — nothing the mapping reads or writes changed: a new column it does not read, an
  index, a new table it does not map (named, so nobody forgets to map it);
- ``compatible`` — a change the transforms absorb: a column the mapping reads was retyped to a
  type whose every value still fits the target column it feeds;
- ``needs_mapping_change`` — a column the mapping reads was dropped, renamed or retyped beyond
  what its target column holds, or a mapped table was dropped: named with the mapping line,
  table, column and what to change. Until resolved (``replicator drift resolve``) it blocks the
  cutover; the rows it affects are dead-lettered by apply, never written with NULLs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transforms.api import Catalog, Direction
from transforms.schema_check import mapping_problems

SAFE, COMPATIBLE, NEEDS_CHANGE = "safe", "compatible", "needs_mapping_change"
VERDICTS = (SAFE, COMPATIBLE, NEEDS_CHANGE)
_RANK = {v: i for i, v in enumerate(VERDICTS)}


@dataclass
class Judgement:
    verdict: str
    table: str | None
    reasons: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def worse(self, verdict: str, reason: str, fix: str | None = None) -> None:
        if _RANK[verdict] > _RANK[self.verdict]:
            self.verdict = verdict
        self.reasons.append(reason)
        if fix:
            self.fixes.append(fix)


_INTS = {"smallint": 1, "integer": 2, "bigint": 3, "numeric": 4}
_TEXTS = ("text", "character varying", "character")
_LEN = re.compile(r"^(character varying|character|varchar)\((\d+)\)$")


def fits(source: str, target: str) -> bool:
    """Every value of type ``source`` converts into a column of type ``target`` unchanged
    (format_type spellings). Unknown pairs do not: a person decides."""
    if source == target or target == "text" or (target == "jsonb" and source == "json"):
        return True
    if source in _INTS and target in _INTS:
        return _INTS[source] <= _INTS[target]
    s_len, t_len = _LEN.match(source), _LEN.match(target)
    if target == "character varying":  # unbounded varchar holds any text
        return source in _TEXTS or s_len is not None
    if s_len and t_len and t_len.group(1) == "character varying":
        return int(s_len.group(2)) <= int(t_len.group(2))
    return False


def _base(typ: str) -> str:
    """A type without its length or precision: ``character varying(10)`` → ``character varying``."""
    return typ.split("(", 1)[0].strip()


def retyped(query: str, column: str) -> bool:
    """``query`` changes ``column``'s type (``ALTER [COLUMN] c [SET DATA] TYPE``)."""
    name = re.escape(column)
    pat = rf'ALTER\s+(COLUMN\s+)?("{name}"|{name})\s+(SET\s+DATA\s+)?TYPE\b'
    return re.search(pat, query, re.IGNORECASE) is not None


def judge(direction: Direction, ddl: Mapping[str, Any], target: Catalog) -> Judgement:
    """The verdict on one DDL record (:mod:`replicator.drift.trigger`'s JSON) for the
    direction whose source it changed; ``target`` is the target's catalog now."""
    if ddl.get("side") == "target":  # a target migration (replicator.drift.target_watch)
        return judge_target(direction, ddl, target)
    tag = str(ddl.get("tag") or "DDL")
    table = ddl.get("table")
    what = f"{tag} {ddl.get('identity') or ''}".strip()
    if not table:
        return Judgement(SAFE, None, [f"{what}: no table the mapping reads changed"])
    j = Judgement(SAFE, table)
    transform = direction.tables.get(table)
    if transform is None:
        if table in direction.ignored:
            j.reasons.append(f"{what}: {table} is ignored by the mapping")
        elif tag == "CREATE TABLE":
            j.worse(SAFE, f"new table {table} is not mapped", f"map {table} or list it as ignored")
        else:
            j.reasons.append(f"{what}: {table} is not mapped")
        return j
    if ddl.get("dropped"):
        j.worse(
            NEEDS_CHANGE,
            f"mapped table {table} was dropped: its changes stop, the target keeps its rows",
            f"remove {table}'s transform from the mapping (and its target rows), or recreate it",
        )
        return j
    cols: Mapping[str, str] = ddl.get("columns") or {}
    query = str(ddl.get("query") or "")
    if transform.reads is None:
        _judge_copy(j, transform.writes[0].name if transform.writes else table, cols, query, target)
    else:
        _judge_reads(j, transform.reads, table, cols, query, target)
    if not j.reasons:
        j.reasons.append(f"{what}: no column the mapping reads changed")
    return j


def _judge_reads(
    j: Judgement, reads: Any, table: str, cols: Mapping[str, str], query: str, target: Catalog
) -> None:
    read_names = {r.column for r in reads}
    for r in reads:
        where = f"{r.line} reads {table}.{r.column}"
        if r.column not in cols:
            new = sorted(c for c in cols if c not in read_names)
            j.worse(
                NEEDS_CHANGE,
                f"{where}, which is gone (dropped or renamed)",
                f"change {r.line} in the mapping to read "
                + (f"one of {', '.join(new)}" if new else "an existing column")
                + f", or restore {table}.{r.column}; then `replicator drift resolve`",
            )
            continue
        if not retyped(query, r.column):
            continue
        new_type = cols[r.column]
        tcol = target.get(r.table, {}).get(r.target_column or "")
        if tcol is not None and fits(new_type, tcol.type):
            j.worse(
                COMPATIBLE,
                f"{table}.{r.column} is now {new_type}; {r.line} ({tcol.type}) still holds every value",
            )
        else:
            held = f"{r.line} is {tcol.type}" if tcol is not None else f"{r.line} converts it"
            j.worse(
                NEEDS_CHANGE,
                f"{where}, retyped to {new_type}; {held}, which may not take every value",
                f"widen {r.line} on the target or convert {table}.{r.column} in the mapping;"
                " then `replicator drift resolve`",
            )
    unread = [c for c in cols if c not in read_names and re.search(rf"\b{re.escape(c)}\b", query)]
    if unread:
        j.reasons.append(
            f"{table}: column(s) {', '.join(unread)} changed, which the mapping does not read"
        )


def _judge_copy(
    j: Judgement, name: str, cols: Mapping[str, str], query: str, target: Catalog
) -> None:
    """The identity: every source column goes to the target column of the same name."""
    tcols = target.get(name, {})
    for col, typ in cols.items():
        spec = tcols.get(col)
        if spec is not None and _base(typ) == _base(spec.type) and not retyped(query, col):
            # Untouched by this change; a relation's types carry no length or precision.
            continue
        if spec is None:
            j.worse(
                NEEDS_CHANGE,
                f"{name}.{col} ({typ}) is on the source but not on the target",
                f"ALTER TABLE {name} ADD COLUMN {col} {typ} on the target (or drift.apply_ddl ="
                " true); then `replicator drift resolve`",
            )
        elif typ != spec.type and not fits(typ, spec.type):
            j.worse(
                NEEDS_CHANGE,
                f"{name}.{col} is now {typ}; the target's is {spec.type}",
                f"ALTER TABLE {name} ALTER COLUMN {col} TYPE {typ} on the target;"
                " then `replicator drift resolve`",
            )
        elif typ != spec.type:
            j.worse(COMPATIBLE, f"{name}.{col} is now {typ}; the target's {spec.type} holds it")
    for col, spec in tcols.items():
        if col not in cols and spec.not_null and not spec.has_default:
            j.worse(
                NEEDS_CHANGE,
                f"{name}.{col} is gone from the source; the target's is NOT NULL without a default",
                f"drop {name}.{col} on the target or give it a default;"
                " then `replicator drift resolve`",
            )


def judge_target(direction: Direction, ddl: Mapping[str, Any], target: Catalog) -> Judgement:
    """A change of a target table the mapping writes (``ddl["table"]``), judged by what
    ``replicator check`` asks of the target: every column written exists, and no NOT NULL
    column without a default is left unwritten."""
    table = str(ddl.get("table") or "")
    what = str(ddl.get("query") or "the target's catalog changed")
    j = Judgement(SAFE, table)
    for p in mapping_problems(direction, target):
        if p.message.startswith((f"{table}.", f"target table {table} ")):
            j.worse(NEEDS_CHANGE, p.message, p.hint + "; then `replicator drift resolve`")
    if j.verdict == SAFE and "ADD COLUMN" in what:
        j.worse(COMPATIBLE, f"{what}: a new target column nothing writes, which takes its default")
    elif j.verdict == SAFE:
        j.reasons.append(f"{what}: nothing the mapping writes is affected")
    return j
