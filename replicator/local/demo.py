"""The README's main job on local services: backfill → live sync → lag → validation → cutover.

It builds an MCP Manager legacy database (SQLModel tables, generated data), a target built by
``drizzle-kit migrate`` from the Drizzle schema, and runs the real pipeline between them through a
real Kafka broker. Every step prints what it does; the configuration it used is written to
``.state/demo.toml`` so that ``replicator status -c .state/demo.toml`` works afterwards.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from rich.console import Console
from rich.live import Live
from rich.table import Table

from replicator.config import Settings, render_template
from replicator.local import services as ls
from replicator.runtime.pipeline import Pipeline
from replicator.runtime.worker_process import LogSetup
from transforms.loader import load_mapping

if TYPE_CHECKING:
    from replicator.parity import ParityReport

NAME = "demo"
LEGACY_DB, TARGET_DB = "demo_legacy", "demo_target"
COUNTS = {
    "user": ('public."user"', 'public."user"'),
    "organization": ("public.organization", "public.organization"),
    "member": ("public.organization_member", "public.member"),
    "mcp_server": ("public.mcp_server", "public.mcp_server"),
    "api key": ("public.api_key", "public.apikey"),
    "audit_log": ("public.audit_log", "public.audit_log"),
}


def _reset(legacy: ls.PgCluster, target: ls.PgCluster, bootstrap: str) -> None:
    """A clean slate: the demo's databases, slots and topics from an earlier run go first."""
    from connectors.kafka_io import delete_topics

    for cluster, db in ((legacy, LEGACY_DB), (target, TARGET_DB)):
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            for (slot,) in c.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (db,)
            ).fetchall():
                with contextlib.suppress(psycopg.Error):
                    c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{db}"')
    delete_topics(
        bootstrap,
        [f"{NAME}.{d}.{k}" for d in ("fwd", "rev") for k in ("changes", "snapshot", "dlq")],
    )
    time.sleep(1.0)  # topic deletion is asynchronous in Kafka


def _counts(settings: Settings) -> dict[str, tuple[int, int]]:
    out = {}
    with (
        psycopg.connect(settings.source.conninfo()) as lc,
        psycopg.connect(settings.target.conninfo()) as tc,
    ):
        for label, (lt, tt) in COUNTS.items():
            a = lc.execute(f"SELECT count(*) FROM {lt}").fetchone()
            b = tc.execute(f"SELECT count(*) FROM {tt}").fetchone()
            out[label] = (int(a[0]) if a else 0, int(b[0]) if b else 0)
    return out


def _count_table(counts: dict[str, tuple[int, int]], title: str) -> Table:
    table = Table("table", "legacy rows", "target rows", "", title=title)
    for label, (a, b) in counts.items():
        table.add_row(label, f"{a:,}", f"{b:,}", "[green]✓[/]" if a == b else "[yellow]…[/]")
    return table


class _LiveWriter:
    """What the FastAPI backend keeps doing during the migration: a few writes per second."""

    def __init__(self, settings: Settings) -> None:
        self.dsn = settings.source.conninfo()
        self.stop = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(42)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            users = [r[0] for r in c.execute('SELECT id FROM public."user" LIMIT 200').fetchall()]
            servers = [
                r[0] for r in c.execute("SELECT id FROM public.mcp_server LIMIT 200").fetchall()
            ]
            while not self.stop.is_set():
                with c.transaction():
                    uid = rnd.choice(users)
                    c.execute(
                        'UPDATE public."user" SET full_name = %s WHERE id = %s',
                        (f"Renamed {self.writes}", uid),
                    )
                    c.execute(
                        "INSERT INTO public.audit_log (user_id, action, target, metadata, created_at) "
                        "VALUES (%s, 'demo.write', 'user', '{}', now())",
                        (uid,),
                    )
                    if servers:
                        c.execute(
                            "UPDATE public.mcp_server SET enabled = NOT enabled, updated_at = now() WHERE id = %s",
                            (rnd.choice(servers),),
                        )
                    new_id = uuid.uuid4()
                    c.execute(
                        'INSERT INTO public."user" (id, email, full_name, hashed_password, is_active, is_superuser, created_at) '
                        "VALUES (%s, %s, 'New User', '$2b$12$abcdefghijklmnopqrstuuJ1x0bO1m0a3d5C1o7l4bU8qA9sG1F2e', true, false, now())",
                        (new_id, f"new-{new_id.hex[:10]}@example.com"),
                    )
                self.writes += 4
                self.stop.wait(0.05)

    def __enter__(self) -> _LiveWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def run_demo(
    *, scale: int, keep_running: bool, console: Console, log_setup: LogSetup | None = None
) -> None:
    from transforms.mcp_manager.generate import generate
    from transforms.mcp_manager.legacy import create_legacy_schema
    from transforms.mcp_manager.target_schema import apply_target_schema

    step = _Steps(console)
    with step("start local PostgreSQL (legacy, target) and Kafka"):
        legacy, target, kafka = (
            ls.start_postgres("legacy"),
            ls.start_postgres("target"),
            ls.start_kafka(),
        )
    with step("create fresh demo databases"):
        _reset(legacy, target, kafka.bootstrap)
    with step(f"legacy schema (SQLModel) and generated data at scale {scale}"):
        create_legacy_schema(legacy.url(LEGACY_DB))
        rows = generate(legacy.url(LEGACY_DB), scale=scale, seed=1)
        console.print("   " + ", ".join(f"{t}: {n:,}" for t, n in rows.items()))
    with step("target schema with drizzle-kit migrate"):
        apply_target_schema(target.url(TARGET_DB))

    config_path = ls.state_dir() / "demo.toml"
    config_path.write_text(
        render_template(
            name=NAME,
            source_port=legacy.port,
            source_password=legacy.password,
            source_dbname=LEGACY_DB,
            target_port=target.port,
            target_password=target.password,
            target_dbname=TARGET_DB,
            kafka_bootstrap_servers=kafka.bootstrap,
        )
    )
    import os

    os.environ["REPLICATOR_CONFIG"] = str(config_path)
    settings = Settings(capture={"heartbeat_interval_s": 1.0})
    pipeline = Pipeline(settings, load_mapping(settings.mapping))

    from replicator.backfill.progress import BackfillProgress

    try:
        with (
            step("backfill: slot first, then key-ordered chunks through Kafka"),
            BackfillProgress(console) as bars,
        ):
            # As `replicator run` does: apply in its own process, beside capture and the reader.
            pipeline.start(progress=bars.update, processes=True, log_setup=log_setup)
            assert pipeline.backfill is not None
            _wait_backfill(settings, pipeline)
        console.print(_count_table(_counts(settings), "after backfill"))

        with (
            step("live sync: the legacy app keeps writing; rows arrive in the target"),
            _LiveWriter(settings) as w,
            Live(console=console, refresh_per_second=4) as live,
        ):
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                live.update(_count_table(_counts(settings), f"live — {w.writes} writes so far"))
                time.sleep(0.5)
        _wait_equal(settings, pipeline)
        console.print(_count_table(_counts(settings), "after live sync (writer stopped)"))
        _after_sync(settings, pipeline, console, step)
        console.print(
            f"\n[bold]config written to {config_path}[/] — try `replicator status -c {config_path}`"
        )
        console.print(
            "its replication slots stay for that, and keep WAL on the local servers while idle:"
            f" `replicator teardown -c {config_path} --yes` removes them (the next demo does too)"
        )
        if keep_running:
            console.print("live sync keeps running; Ctrl-C stops it")
            pipeline.wait()
    finally:
        with contextlib.suppress(Exception):
            pipeline.shutdown()


def _after_sync(settings: Settings, pipeline: Pipeline, console: Console, step: _Steps) -> None:
    """Lag, validation and cutover, each shown when its module is present."""
    from replicator.validate.print import print_report
    from replicator.validate.run import validate

    with step("validate: target equals the transformed legacy data (counts, checksums, rows)"):
        report = validate(settings, pipeline.mapping)
        print_report(report, console)
    with step("parity: the app's own reads on both schemas, compared and timed (docs/parity.md)"):
        parity_for_demo(settings, console)
    with step("cutover: fence legacy, drain, verify, switch"):
        cutover_for_demo(settings, pipeline, console)


def parity_for_demo(settings: Settings, console: Console, runs: int = 20) -> ParityReport:
    """The MCP Manager's pairs (transforms/mcp_manager/parity.toml) while live sync runs."""
    from pathlib import Path

    import transforms.mcp_manager
    from replicator.parity import load, run_parity
    from replicator.parity.print import print_report

    path = Path(transforms.mcp_manager.__file__).parent / "parity.toml"
    report = run_parity(settings, load(path), runs=runs)
    print_report(report, console)
    return report


def _wait_backfill(settings: Settings, pipeline: Pipeline, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.target.conninfo(), autocommit=True) as c:
        while time.monotonic() < deadline:
            if pipeline.stop.is_set():
                pipeline.join()
            with contextlib.suppress(psycopg.Error):
                row = c.execute(
                    "SELECT status FROM replicator.backfill ORDER BY started_at DESC LIMIT 1"
                ).fetchone()
                if row and row[0] == "applied":
                    return
            time.sleep(0.3)
    raise TimeoutError("the backfill did not finish in time")


def _wait_equal(settings: Settings, pipeline: Pipeline, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipeline.stop.is_set():
            pipeline.join()
        if all(a == b for a, b in _counts(settings).values()):
            return
        time.sleep(0.3)


class _Steps:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.n = 0

    @contextlib.contextmanager
    def __call__(self, title: str) -> Any:
        self.n += 1
        self.console.print(f"\n[bold cyan]{self.n}. {title}[/]")
        t = time.monotonic()
        yield
        self.console.print(f"   [dim]done in {time.monotonic() - t:.1f}s[/]")


__all__ = ["run_demo"]


def cutover_for_demo(settings: Settings, pipeline: Any, console: Any) -> None:
    """The demo's last act: a cutover with the live writer running, then a write on the target."""
    from rich.table import Table

    from replicator.cutover.plan import StepResult
    from replicator.cutover.switch import Cutover

    def show(r: StepResult) -> None:
        mark = "[green]ok[/]" if r.ok else "[red]FAILED[/]"
        console.print(f"   {r.name:<14} {mark} {r.seconds * 1000:8.1f} ms {r.detail}")

    out = Cutover(settings, pipeline.mapping, report=show).run()
    table = Table("write pause", "switched")
    table.add_row(f"{(out.pause_s or 0) * 1000:.0f} ms", str(out.switched))
    console.print(table)
