"""Operations commands: ``status`` (lag, health, readiness), ``dlq`` (dead letters) and
``teardown`` (what a finished pipeline leaves behind)."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live
from rich.table import Table

from connectors import pg
from replicator.cli.app import ConfigOpt, app, mapping_of, out, settings_from
from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.status.overview import Status, collect, sides

if TYPE_CHECKING:
    from replicator.dlq.letters import Letter
    from replicator.dlq.replay import ReplayResult

dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, replay, purge.")
app.add_typer(dlq_app, name="dlq")

_SPARK = "▁▂▃▄▅▆▇█"


def _spark(values: deque[float]) -> str:
    if not values:
        return ""
    top = max(max(values), 1e-9)
    return "".join(_SPARK[min(7, int(v / top * 7))] for v in values)


def _fmt(v: float | int | None, unit: str = "") -> str:
    if v is None:
        return "?"
    return f"{v:.2f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"


def render(st: Status, history: deque[float] | None = None) -> Table:
    t = Table(
        "stage", "measure", "value", title=f"pipeline {st.pipeline} — direction {st.direction}"
    )
    if st.source is not None:
        src = st.source
        t.add_row("source", f"slot {src.slot}", "active" if src.slot_active else "NOT ACTIVE")
        t.add_row("", "WAL behind the slot", _fmt(src.lag_bytes, " B"))
        t.add_row("", "retained WAL", f"{_fmt(src.retained_wal_bytes, ' B')} ({src.wal_status})")
        if src.invalidation_reason:
            t.add_row("", "INVALIDATED", src.invalidation_reason)
    if st.kafka is not None:
        for pl in st.kafka.partitions:
            t.add_row("kafka", f"{st.kafka.topic}[{pl.partition}] behind", _fmt(pl.behind))
        t.add_row("kafka", "dead letters", _fmt(st.kafka.dlq_messages))
    if st.target is not None:
        tgt = st.target
        lag = _fmt(tgt.end_to_end_lag_s, " s")
        if history:
            lag += "  " + _spark(history)
        t.add_row("end to end", "lag (from commit times)", lag)
        t.add_row("apply", "since last commit", _fmt(tgt.seconds_since_last_apply, " s"))
        for table, n in tgt.rows_applied.items():
            t.add_row("apply", f"rows applied {table}", _fmt(n))
        if tgt.backfill:
            bf = tgt.backfill
            t.add_row(
                "backfill",
                bf["id"],
                f"{bf['status']} ({bf['rows_applied']:,}/{bf['rows_total']:,} rows)",
            )
            for o in bf.get("set_aside", []):
                t.add_row("backfill", f"set aside on {o['table']}", f"{o['kind']} {o['name']}")
        if tgt.validation:
            v = tgt.validation
            t.add_row("validation", "last run", f"{v['outcome']} ({v['age_s'] or 0:.0f} s ago)")
            paths = v.get("paths") or {}
            if paths:
                in_sql = sum(1 for p in paths.values() if p == "sql")
                t.add_row("validation", "checked in SQL", f"{in_sql}/{len(paths)} tables")
        if tgt.parity:
            q = tgt.parity
            t.add_row(
                "parity",
                "last run",
                f"{q['outcome']} ({q['pairs']} pairs, {q['differing']} differ, {q['slow']} slow;"
                f" {q['age_s'] or 0:.0f} s ago)",
            )
        for c in (tgt.schema_changes or {}).get("changes", []):
            if (c["resolved_at"] is None and c["verdict"] != "safe") or c["blocks_cutover"]:
                colour = "red" if c["blocks_cutover"] else "yellow"
                t.add_row(
                    "drift",
                    f"{c['id']} {c['tag']} {c['table'] or ''} at {c['lsn']}",
                    f"[{colour}]{c['verdict']}[/]: {c['reason']}"
                    + (f" — fix: {c['fix']}" if c["fix"] else ""),
                )
    if st.writer is not None:
        w = st.writer.get("writer")
        t.add_row(
            "writer",
            "takes the application's writes",
            f"[green]{w}[/]" if w and not st.writer.get("problems") else f"[red]{w or 'NONE'}[/]",
        )
    for u in st.unreachable:
        t.add_row(u["part"], "[red]unreachable[/]", f"{u['message']} — fix: {u['hint']}")
    verdict = "[green]READY[/] for cutover" if st.ready else "[red]NOT READY[/]"
    t.add_row("verdict", verdict, "\n".join(st.reasons))
    return t


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Documented JSON (docs/status.md).")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh in place.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Lag at every stage, throughput, DLQ, backfill, direction, and the cutover verdict.

    Exit code 0 when ready for cutover, 1 when not (so scripts can wait on it)."""
    s = settings_from(config)
    if as_json:
        st = collect(s)
        typer.echo(json.dumps(st.to_json(), default=str))
        raise typer.Exit(0 if st.ready else 1)
    if not watch:
        st = collect(s)
        out.print(render(st))
        raise typer.Exit(0 if st.ready else 1)
    history: deque[float] = deque(maxlen=60)
    with Live(console=out, auto_refresh=False) as live:
        try:
            while True:
                st = collect(s)
                if st.target is not None and st.target.end_to_end_lag_s is not None:
                    history.append(st.target.end_to_end_lag_s)
                live.update(render(st, history), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


# -- dlq -----------------------------------------------------------------------------------------

DirOpt = Annotated[str, typer.Option("--direction", "-d", help="fwd or rev.")]


def _letters(config: Path | None, direction: str, table: str | None = None) -> tuple:  # type: ignore[type-arg]
    from replicator.dlq.letters import done_positions, read_letters
    from replicator.state import ensure_schema

    s = settings_from(config)
    _, target = sides(s, direction)
    topic = s.topic(direction, "dlq")
    with pg.connect(target.conninfo()) as conn, pg.translated(target.masked()):
        ensure_schema(conn)
        done = done_positions(conn, topic)
    letters = read_letters(s.kafka.bootstrap_servers, topic, done, **s.kafka.client_options())
    if table:
        # "user" or "public.user" names public.user, never public.api_user.
        letters = [
            x
            for x in letters
            if x.letter.table and table in (x.letter.table, x.letter.table.partition(".")[2])
        ]
    return s, topic, letters


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    direction: DirOpt = "fwd",
    table: Annotated[str | None, typer.Option(help="Only letters of this table.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dead letters not replayed or purged yet, oldest first."""
    _, topic, letters = _letters(config, direction, table)
    if as_json:
        typer.echo(
            json.dumps(
                [{"position": x.position, **x.letter.__dict__} for x in letters], default=str
            )
        )
        return
    t = Table(
        "position", "at", "table", "key", "column", "reason", title=f"{topic}: {len(letters)}"
    )
    for x in letters:
        lt = x.letter
        t.add_row(
            x.position, lt.at[:19], lt.table or "?", json.dumps(lt.key), lt.column or "", lt.reason
        )
    out.print(t)


def _pick(letters: list, positions: list[str], every: bool) -> list:  # type: ignore[type-arg]
    if every:
        return letters
    if not positions:
        raise typer.BadParameter("name letters by position (see `dlq list`) or pass --all")
    chosen = [x for x in letters if x.position in positions]
    missing = set(positions) - {x.position for x in chosen}
    if missing:
        raise typer.BadParameter(f"no pending letter at {', '.join(sorted(missing))}")
    return chosen


PositionsArg = Annotated[list[str] | None, typer.Argument(help="Positions partition:offset.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every pending letter.")]


@dlq_app.command("show")
def dlq_show(position: str, config: ConfigOpt = None, direction: DirOpt = "fwd") -> None:
    """One letter in full: reason, table, key, column, commit LSN, the change."""
    _, _, letters = _letters(config, direction)
    (item,) = _pick(letters, [position], False)
    typer.echo(
        json.dumps({"position": item.position, **item.letter.__dict__}, indent=2, default=str)
    )


@dlq_app.command("replay")
def dlq_replay(
    positions: PositionsArg = None,
    every: AllOpt = False,
    config: ConfigOpt = None,
    direction: DirOpt = "fwd",
) -> None:
    """Apply letters again from the source row's current state (see docs/dlq.md)."""
    s, topic, letters = _letters(config, direction)
    results = replay_letters(s, topic, direction, _pick(letters, positions or [], every))
    ok = [r for r in results if r.error is None]
    for r in results:
        status_ = "[green]applied[/]" if r.error is None else f"[red]failed again:[/] {r.error}"
        out.print(f"{r.letter.position} {r.letter.letter.table}: {status_}")
    failed = len(results) - len(ok)
    out.print(f"{len(ok)} replayed, {failed} still failing")
    if failed:
        raise typer.Exit(1)


def replay_letters(
    s: Settings, topic: str, direction: str, chosen: list[Letter]
) -> list[ReplayResult]:
    """Replay ``chosen`` letters (each re-read from its source row as it is now) and mark the
    ones applied done; every result, applied or failed again (`dlq replay`, `drift resolve`)."""
    from replicator.dlq.letters import mark_done
    from replicator.dlq.replay import replay

    mapping = mapping_of(s)
    source, target = sides(s, direction)
    d = mapping.forward if direction == "fwd" else mapping.reverse
    results = replay(s, d, source, target, chosen) if chosen else []
    ok = [r.letter for r in results if r.error is None]
    with pg.connect(target.conninfo(), autocommit=True) as conn, pg.translated(target.masked()):
        mark_done(conn, topic, ok, "replayed")
    return results


@dlq_app.command("purge")
def dlq_purge(
    positions: PositionsArg = None,
    every: AllOpt = False,
    config: ConfigOpt = None,
    direction: DirOpt = "fwd",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Drop letters for good (they stay in Kafka until retention, marked done)."""
    from replicator.dlq.letters import mark_done

    s, topic, letters = _letters(config, direction)
    chosen = _pick(letters, positions or [], every)
    if not yes and not typer.confirm(f"purge {len(chosen)} letter(s) from {topic}?"):
        raise typer.Exit(1)
    _, target = sides(s, direction)
    with pg.connect(target.conninfo(), autocommit=True) as conn, pg.translated(target.masked()):
        mark_done(conn, topic, chosen, "purged")
    out.print(f"{len(chosen)} purged")


@app.command()
def teardown(
    config: ConfigOpt = None,
    drop_state: Annotated[
        bool,
        typer.Option(help="Also drop the `replicator` schema (journal, offsets) on both sides."),
    ] = False,
    drop_topics: Annotated[
        bool, typer.Option(help="Also delete the pipeline's Kafka topics.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove the pipeline's replication slots, publications and replication origins once the
    migration is over (after this, neither live sync nor rollback can resume)."""
    from replicator.teardown import plan
    from replicator.teardown import teardown as remove

    s = settings_from(config)
    items = plan(s, drop_state=drop_state, drop_topics=drop_topics)
    if not items:
        out.print(f"pipeline {s.name}: nothing to remove")
        return
    table = Table("kind", "name", "where", title=f"pipeline {s.name}: to remove")
    for item in items:
        table.add_row(item.kind, item.name, item.where)
    out.print(table)
    if dry_run:
        out.print("dry run: nothing was removed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ReplicatorError(
                "teardown needs confirmation", hint="pass --yes (or list what goes with --dry-run)"
            )
        typer.confirm("remove these? live sync and rollback cannot resume afterwards", abort=True)
    remove(s, items)
    out.print(f"[green]removed[/] {len(items)} item(s) of pipeline {s.name}")
