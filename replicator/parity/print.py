"""The human form of a parity report (``replicator parity`` without ``--json``, the demo)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replicator.parity.report import PairResult, ParityReport

_STYLE = {"agrees": "green", "differs": "red", "slow": "yellow", "unsettled": "yellow"}


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f}" if p else ""


def _note(p: PairResult) -> str:
    return p.difference or p.unsettled or "; ".join(p.misses)


def print_report(report: ParityReport, out: Console) -> None:
    table = Table(
        "pair",
        "verdict",
        "rows legacy/target",
        "legacy ms p50/p95/p99",
        "target ms p50/p95/p99",
        "note",
        title=f"parity, {report.runs} timed runs per side"
        + ("" if report.live else " (no live sync: nothing waited for apply)"),
    )
    for p in report.pairs:
        table.add_row(
            escape(p.name),
            f"[{_STYLE[p.verdict]}]{p.verdict}[/]",
            f"{p.rows_legacy}/{p.rows_target}",
            _ms(p.legacy_ms),
            _ms(p.target_ms),
            escape(_note(p)),
        )
    out.print(table)
    for p in report.pairs:
        if p.plan is None:
            continue
        out.print(f"[yellow]{escape(p.name)}[/]: the target's plan")
        for finding in p.plan.findings:
            out.print(f"  - {escape(finding)}")
        for statement in p.plan.suggestions:
            out.print(f"  [bold]{escape(statement)}[/]", soft_wrap=True)
    out.print(
        f"outcome: {report.outcome}"
        + (f" (run {report.run_id} stored)" if report.run_id is not None else "")
    )
