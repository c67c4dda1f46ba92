"""A slow target query's plan (``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``) said in words: the
sequential scans that filter a large table, with the ``CREATE INDEX CONCURRENTLY`` that would
serve them, and sorts that spill to disk. Pure: it reads the plan's JSON only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# A scan reading fewer rows than this is cheap whatever the plan: no index is suggested.
LARGE_SCAN_ROWS = 1_000

# The columns a filter compares: `(email = 'x'::text)`, `((slug)::text = $1)`, `(a.b = …)`.
_COLUMN = re.compile(
    r"\(+\s*(?:\w+\.)?\"?(\w+)\"?\)?(?:::[\w ]+\)?)?\s*(?:=|<|>|<=|>=|~~|IN\b|ANY\b)"
)


@dataclass
class PlanSummary:
    findings: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)  # CREATE INDEX CONCURRENTLY …

    def to_json(self) -> dict[str, Any]:
        return {"findings": self.findings, "suggestions": self.suggestions}


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def filter_columns(condition: str) -> list[str]:
    """The columns a filter compares with a value, in order, once each."""
    out: list[str] = []
    for name in _COLUMN.findall(condition):
        if name not in out and not name.isdigit():
            out.append(name)
    return out


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def summarise(plan_json: Any) -> PlanSummary:
    """``plan_json``: what EXPLAIN (FORMAT JSON) returns (a list of one object)."""
    top = plan_json[0] if isinstance(plan_json, list) else plan_json
    summary = PlanSummary()
    for node in _nodes(top["Plan"]):
        kind = node.get("Node Type", "")
        loops = int(node.get("Actual Loops", 1) or 1)
        if kind == "Seq Scan" and "Filter" in node:
            kept = int(node.get("Actual Rows", 0)) * loops
            removed = int(node.get("Rows Removed by Filter", 0)) * loops
            if kept + removed < LARGE_SCAN_ROWS:
                continue
            table = f"{node.get('Schema', 'public')}.{node['Relation Name']}"
            summary.findings.append(
                f"sequential scan of {table}: {kept + removed} rows read to keep {kept}"
                f" (filter {node['Filter']})"
            )
            columns = filter_columns(node["Filter"])
            if columns:
                cols = ", ".join(_quote(c) for c in columns)
                schema, _, rel = table.partition(".")
                summary.suggestions.append(
                    f"CREATE INDEX CONCURRENTLY ON {_quote(schema)}.{_quote(rel)} ({cols});"
                )
        elif kind == "Sort" and node.get("Sort Space Type") == "Disk":
            keys = ", ".join(node.get("Sort Key", []))
            summary.findings.append(
                f"sort by {keys} spilled to disk ({node.get('Sort Space Used', '?')} kB):"
                " an index in that order would avoid it, or a larger work_mem"
            )
        elif kind == "Hash" and int(node.get("Hash Batches", 1) or 1) > 1:
            summary.findings.append(
                f"hash spilled to disk in {node['Hash Batches']} batches: raise work_mem"
            )
    if not summary.findings:
        summary.findings.append(
            f"no scan or sort to blame: {top.get('Execution Time', 0):.1f} ms in the executor,"
            f" {top.get('Planning Time', 0):.1f} ms planning"
        )
    return summary
