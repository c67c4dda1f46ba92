"""The ``replicator`` command: a thin layer over the library API.

Errors of the replicator's tree are printed as a message and a fix, with a non-zero exit code;
a stack trace appears only for a bug, and only with ``--debug``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from replicator import config as cfg
from replicator.errors import ReplicatorError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Change-capture replicator: legacy PostgreSQL → Kafka → transforms → target PostgreSQL.",
    pretty_exceptions_enable=False,
)
services_app = typer.Typer(no_args_is_help=True, help="Local PostgreSQL and Kafka (no Docker).")
app.add_typer(services_app, name="services")

console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Configuration file (default: replicator.toml)."),
]


class _State:
    debug = False
    verbose = False


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    # kafka-python logs every broker hiccup at ERROR with a stack trace; the replicator says
    # what it means ("Kafka unreachable, retrying") itself. --verbose shows the library's view.
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose else logging.CRITICAL)


def _child_logging() -> Callable[[], None]:
    """The logging set-up a worker process repeats (a spawned child starts without it)."""
    return functools.partial(_setup_logging, _State.verbose)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option(help="Show stack traces of internal errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _State.debug = debug
    _State.verbose = verbose
    _setup_logging(verbose)


def _settings(config: Path | None) -> cfg.Settings:
    if (
        config is None
        and not Path(cfg.DEFAULT_CONFIG_FILE).exists()
        and "REPLICATOR_CONFIG" not in os.environ
    ):
        return cfg.load_settings()
    return cfg.load_settings(config)


def _mapping(s: cfg.Settings) -> Any:
    from transforms.loader import load_mapping

    return load_mapping(s.mapping)


@app.command()
def init(
    path: Annotated[Path, typer.Option(help="Where to write the template.")] = Path(
        cfg.DEFAULT_CONFIG_FILE
    ),
    local: Annotated[
        bool, typer.Option(help="Fill in the local services' addresses (starts them).")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented configuration template."""
    if path.exists() and not force:
        raise ReplicatorError(f"{path} exists", hint="pass --force to overwrite it")
    values: dict[str, Any] = {}
    if local:
        from replicator import local_services as ls

        legacy, target, kafka = (
            ls.start_postgres("legacy"),
            ls.start_postgres("target"),
            ls.start_kafka(),
        )
        values = {
            "source_port": legacy.port,
            "source_password": legacy.password,
            "target_port": target.port,
            "target_password": target.password,
            "bootstrap": kafka.bootstrap,
        }
    path.write_text(cfg.render_template(**values))
    out.print(f"wrote {path}")


@app.command()
def check(config: ConfigOpt = None) -> None:
    """Check source, target, Kafka and the mapping; report every problem at once."""
    from replicator.check import run_checks

    s = _settings(config)
    findings = run_checks(s, _mapping(s))
    table = Table("check", "", "finding", "fix", show_lines=False)
    for f in findings:
        table.add_row(f.check, "[green]ok[/]" if f.ok else "[red]FAIL[/]", f.message, f.hint or "")
    out.print(table)
    failed = [f for f in findings if not f.ok]
    if failed:
        console.print(f"[red]{len(failed)} problem(s) found[/]")
        raise typer.Exit(1)


def _serve(run_capture: bool, run_apply: bool, config: Path | None, workers: int) -> None:
    from replicator.runtime import Pipeline, tune_gc

    s = _settings(config)
    pipeline = Pipeline(s, _mapping(s))
    tune_gc()

    def _stop(signum: int, frame: Any) -> None:
        console.print("[yellow]stopping…[/]")
        pipeline.stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # Apply workers get processes of their own when they would share the interpreter with
    # capture or with each other: each stage then has a core (see replicator.worker_process).
    pipeline.start(
        run_capture=run_capture,
        run_apply=run_apply,
        workers=workers,
        processes=run_capture or workers > 1,
        log_setup=_child_logging(),
    )
    from replicator.web import serve_metrics_port

    serve_metrics_port(s)  # /metrics, and with metrics.web the page too
    console.print(
        f"[green]running[/] pipeline {s.name}: "
        + ", ".join(x for x, on in (("capture", run_capture), ("apply", run_apply)) if on)
        + f" — source {s.source.masked()}, target {s.target.masked()}, kafka {s.kafka.bootstrap_servers}"
    )
    pipeline.wait()


WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=1, help="Apply workers.")]


@app.command()
def run(config: ConfigOpt = None, workers: WorkersOpt = 1) -> None:
    """Run capture and apply together (live sync) until interrupted."""
    _serve(True, True, config, workers)


@app.command()
def capture(config: ConfigOpt = None) -> None:
    """Run the capture alone: legacy slot → Kafka."""
    _serve(True, False, config, 1)


@app.command("apply")
def apply_cmd(config: ConfigOpt = None, workers: WorkersOpt = 1) -> None:
    """Run apply workers alone: Kafka → transforms → target."""
    _serve(False, True, config, workers)


@app.command()
def backfill(
    config: ConfigOpt = None,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table", "-t", help="Re-sync only this table (repeatable) while live sync runs."
        ),
    ] = None,
    chunk_rows: Annotated[
        int | None, typer.Option(min=1, help="Rows per chunk (backfill.chunk_rows).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until apply has loaded the snapshot.")] = True,
) -> None:
    """Read the mapped legacy tables into the snapshot topic, resumably; apply loads them."""
    from replicator.backfill import Backfill
    from replicator.progress import BackfillProgress
    from replicator.runtime import tune_gc

    s = _settings(config)
    mapping = _mapping(s)
    tune_gc()
    tables = [t if "." in t else f"public.{t}" for t in table] if table else None
    bf = Backfill(s, mapping.forward, tables=tables, chunk_rows=chunk_rows)
    with BackfillProgress(out) as bars:
        backfill_id = bf.run(progress=bars.update)
        out.print(f"backfill {backfill_id}: every chunk is in Kafka")
        if wait:
            bars.wait_applied(s, backfill_id)


@app.command()
def validate(
    config: ConfigOpt = None,
    table: Annotated[
        str | None, typer.Option("--table", "-t", help="Only this target (or source) table.")
    ] = None,
    fast: Annotated[
        bool, typer.Option(help="Only keys changed since the last clean full validation.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare the target with the transformed legacy data; exit 1 on a difference, 3 if rows
    were still changing."""
    from replicator.validate import validate as run_validation
    from replicator.validate_print import print_report

    s = _settings(config)
    report = run_validation(s, _mapping(s), table=table, fast=fast)
    if as_json:
        import json

        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
    else:
        print_report(report, out)
    raise typer.Exit(report.exit_code)


@app.command()
def cutover(
    config: ConfigOpt = None,
    max_lag: Annotated[
        float | None, typer.Option(help="Seconds of end-to-end lag allowed (cutover.max_lag_s).")
    ] = None,
    lock_timeout: Annotated[
        int | None, typer.Option(help="Milliseconds to wait for table locks.")
    ] = None,
    switch_hook: Annotated[
        str | None, typer.Option(help="Command that switches the application.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Rehearse: fence, drain, verify, unfence; no switch.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Fence legacy writes, drain, verify, sync sequences, arm the reverse stream, switch."""
    _switch("cutover", config, max_lag, lock_timeout, switch_hook, dry_run, yes, json_out)


@app.command()
def rollback(
    config: ConfigOpt = None,
    max_lag: Annotated[
        float | None, typer.Option(help="Seconds of end-to-end lag allowed.")
    ] = None,
    lock_timeout: Annotated[
        int | None, typer.Option(help="Milliseconds to wait for table locks.")
    ] = None,
    switch_hook: Annotated[
        str | None, typer.Option(help="Command that switches the application back.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Rehearse: fence, drain, unfence; no switch.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """After a cutover: fence the target, drain the reverse stream, sync legacy sequences,
    re-arm the forward stream, switch back."""
    _switch("rollback", config, max_lag, lock_timeout, switch_hook, dry_run, yes, json_out)


def _switch(
    action: str,
    config: Path | None,
    max_lag: float | None,
    lock_timeout: int | None,
    switch_hook: str | None,
    dry_run: bool,
    yes: bool,
    json_out: bool,
) -> None:
    from replicator.cutover import Cutover, StepResult, outcome_json

    s = _settings(config)
    if not dry_run and not yes:
        if not sys.stdin.isatty():
            raise ReplicatorError(
                f"{action} needs confirmation", hint="pass --yes (or rehearse with --dry-run)"
            )
        typer.confirm(f"{action}: fence writes on the current writer and switch?", abort=True)

    def show(r: StepResult) -> None:
        if not json_out:
            mark = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
            out.print(f"{r.name:<14} {mark} {r.seconds * 1000:9.1f} ms  {r.detail}")

    result = Cutover(
        s,
        _mapping(s),
        action=action,
        max_lag_s=max_lag,
        lock_timeout_ms=lock_timeout,
        switch_hook=switch_hook,
        report=show,
    ).run(dry_run=dry_run)
    if json_out:
        out.print(outcome_json(result), highlight=False)
        return
    pause = f"{(result.pause_s or 0) * 1000:.0f} ms"
    if dry_run:
        out.print(
            f"[green]dry run complete[/]: writes were paused for {pause}; nothing was switched"
        )
    else:
        out.print(f"[green]{action} complete[/]: write pause {pause}")


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Scale of the generated legacy data.")] = 200,
    keep_running: Annotated[bool, typer.Option(help="Keep live sync running at the end.")] = False,
) -> None:
    """The main job on local services: sample data → live sync → rows arriving in the target."""
    from replicator.demo import run_demo

    run_demo(
        scale=rows,
        keep_running=keep_running,
        console=out,
        log_setup=_child_logging(),
    )


@services_app.command("start")
def services_start() -> None:
    """Start local PostgreSQL clusters (legacy, target) and Kafka; harmless when running."""
    from replicator import local_services as ls

    legacy, target = ls.start_postgres("legacy"), ls.start_postgres("target")
    kafka = ls.start_kafka()
    out.print(f"legacy PostgreSQL  127.0.0.1:{legacy.port}")
    out.print(f"target PostgreSQL  127.0.0.1:{target.port}")
    out.print(f"Kafka              {kafka.bootstrap}")


@services_app.command("stop")
def services_stop() -> None:
    """Stop every local service."""
    from replicator import local_services as ls

    ls.stop_all()
    out.print("stopped")


@services_app.command("status")
def services_status() -> None:
    """Show local services, their ports and logs."""
    from replicator import local_services as ls

    st = ls.status()
    table = Table("service", "running", "address", "log")
    for name, pg_ in st["postgres"].items():
        table.add_row(
            f"postgres:{name}", str(pg_["running"]), f"127.0.0.1:{pg_['port']}", pg_["log"]
        )
    if st["kafka"]:
        k = st["kafka"]
        table.add_row("kafka", str(k["running"]), k["bootstrap"], k["log"])
    out.print(table)


def main() -> None:
    try:
        app()
    except ReplicatorError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"[yellow]fix:[/] {exc.hint}")
        sys.exit(2 if not exc.retriable else 75)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so plainly, trace only on request
        if _State.debug:
            raise
        console.print(
            f"[red]internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug for a trace)"
        )
        sys.exit(70)


# The operations commands register themselves on `app` (kept apart to keep this module small).
from replicator import cli_ops as _cli_ops  # noqa: E402,F401
from replicator.web import command as _web_command  # noqa: E402,F401
