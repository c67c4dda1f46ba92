"""The human form of a validation report (``replicator validate`` without ``--json``)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from replicator.validate.report import Report, TableResult

SHOWN = 50


def _key(key: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items())


def _short(table: str) -> str:
    """``public.user`` → ``user``: the default schema says nothing; any other is kept."""
    return table.removeprefix("public.")


def _result(t: TableResult) -> str:
    """What a person needs from one table's line: ok, or what is wrong with it, in words."""
    parts = [
        f"{n} {what}"
        for n, what in (
            (t.missing, "missing"),
            (t.extra, "extra"),
            (t.differs, "differ"),
            (t.collides, "collide"),
            (t.unsettled, "unsettled"),
        )
        if n
    ]
    text = ", ".join(parts) if parts else "[green]ok[/]"
    if t.in_flight:
        text += f" ({t.in_flight} in flight)"
    return text


def print_report(report: Report, console: Console) -> None:
    # Four columns fit an 80-column terminal with table names of any usual length; the chunk
    # and per-kind counts are in --json (and in the result column when not zero).
    table = Table(
        Column("table", no_wrap=True),
        "mode",
        Column("rows: target/expected", overflow="fold"),
        Column("result", overflow="fold"),
    )
    for t in report.tables:
        table.add_row(_short(t.table), t.mode, f"{t.target_rows}/{t.expected_rows}", _result(t))
    console.print(table)
    if report.resumed:
        got = report.resumed
        console.print(
            f"resumed: {got['groups_reused']} table group(s) re-used from the interrupted run"
            f" ({got['rows_reused']} rows), {got['groups_checked']} checked now"
        )
        if got.get("ranges_reused"):
            console.print(
                f"resumed within {', '.join(map(_short, got['tables_resumed_in_range']))}:"
                f" {got['ranges_reused']} key range(s) re-used, the rest checked now"
            )
    for name in report.cleared_flags:
        console.print(
            f"{_short(name)}: clean now; continuous validation's 'different' flag cleared"
        )
    in_sql = [_short(t.table) for t in report.tables if t.path == "sql"]
    if in_sql:
        console.print(f"checked by checksums in both databases: {', '.join(in_sql)}")
    for t in report.tables:
        if t.path_reason:
            console.print(f"{_short(t.table)}: python path ({escape(t.path_reason)})")
    for d in report.differences[:SHOWN]:
        cols = ""
        if d.columns:
            cols = ": " + "; ".join(
                f"{c} expected {d.expected.get(c)!r}, target has {d.actual.get(c)!r}"
                for c in d.columns
            )
        if d.sources:
            cols = ": written by " + " and by ".join(
                f"{x['table']} ({_key(x['key'])})" for x in d.sources
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
    for m in report.mapping_errors:
        console.print(f"[red]mapping error[/] {escape(m)}")
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
