"""The human form of a validation report (``replicator validate`` without ``--json``)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replicator.validate_report import Report

SHOWN = 50


def _key(key: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def print_report(report: Report, console: Console) -> None:
    table = Table(
        "table", "mode", "expected", "target", "checked", "chunks ≠", "missing", "extra",
        "differs", "in flight", "unsettled",
    )  # fmt: skip
    for t in report.tables:
        table.add_row(
            t.table, f"{t.mode}/{t.path}", str(t.expected_rows), str(t.target_rows), str(t.rows_checked),
            f"{t.chunks_mismatched}/{t.chunks}", str(t.missing), str(t.extra), str(t.differs),
            str(t.in_flight), str(t.unsettled),
        )  # fmt: skip
    console.print(table)
    for t in report.tables:
        if t.path_reason:
            console.print(f"{t.table}: python path ({escape(t.path_reason)})")
    for d in report.differences[:SHOWN]:
        cols = ""
        if d.columns:
            cols = ": " + "; ".join(
                f"{c} expected {d.expected.get(c)!r}, target has {d.actual.get(c)!r}"
                for c in d.columns
            )
        console.print(f"[red]{d.kind}[/] {d.table} ({escape(_key(d.key))}){escape(cols)}")
    for o in report.orphans[:SHOWN]:
        console.print(
            f"[red]orphan[/] {o.table} ({escape(_key(o.key))}): {o.constraint} → {o.parent} "
            f"{escape(str(o.columns))} is missing"
        )
    for r in report.rejected[:SHOWN]:
        console.print(
            f"[red]rejected[/] {r.source} ({escape(_key(r.key))}): {escape(r.reason)} "
            "(dead-lettered, not in the target)"
        )
    listed = len(report.differences) + len(report.orphans) + len(report.rejected)
    if listed > 3 * SHOWN or any(
        len(x) > SHOWN for x in (report.differences, report.orphans, report.rejected)
    ):
        console.print("… more: run with --json for the full list")
    mode = "live" if report.live else "static"
    if report.lagging:
        mode += ", apply did not reach the marker (lagging)"
    colour = {"clean": "green", "different": "red", "unsettled": "yellow"}[report.outcome]
    console.print(
        f"[{colour}]{report.outcome}[/]: {report.rows_checked} rows checked, "
        f"{report.difference_count} difference(s), {report.unsettled_count} unsettled "
        f"({report.scope}, {mode}, run {report.run_id})"
    )
