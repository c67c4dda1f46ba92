"""``replicator drift list|resolve``: schema changes seen on the source (docs/drift.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from connectors import pg
from replicator.cli.app import ConfigOpt, app, mapping_of, out, settings_from
from replicator.errors import PreconditionError
from replicator.status.overview import sides

drift_app = typer.Typer(no_args_is_help=True, help="Schema changes: list, resolve (docs/drift.md).")
app.add_typer(drift_app, name="drift")

DirOpt = Annotated[str, typer.Option("--direction", "-d", help="fwd or rev.")]


@drift_app.command("list")
def drift_list(
    config: ConfigOpt = None,
    direction: DirOpt = "fwd",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """Every schema change seen, its verdict, fix and resolution."""
    from replicator.drift.store import listed

    s = settings_from(config)
    _, target = sides(s, direction)
    with pg.connect(target.conninfo(), autocommit=True) as conn, pg.translated(target.masked()):
        changes = listed(conn)
    if as_json:
        out.print_json(json.dumps(changes))
        return
    for c in changes:
        state = (
            f"resolved: {c['resolution']}"
            if c["resolved_at"]
            else ("BLOCKS CUTOVER" if c["blocks_cutover"] else "open")
        )
        out.print(
            f"{c['id']} {c['lsn']} {c['seen_at']} {c['tag']} {c['table'] or ''} — {c['verdict']}"
            f" ({state}): {c['reason']}" + (f" — fix: {c['fix']}" if c["fix"] else ""),
            highlight=False,
        )


@drift_app.command("resolve")
def drift_resolve(
    ids: Annotated[
        list[int] | None, typer.Argument(help="Change ids (default: every open one).")
    ] = None,
    config: ConfigOpt = None,
    direction: DirOpt = "fwd",
    replay_letters: Annotated[
        bool,
        typer.Option(
            "--replay/--no-replay",
            help="Replay the dead letters of the resolved changes' tables (on by default).",
        ),
    ] = True,
) -> None:
    """After the mapping (or the target) is fixed: judge each open change again with the
    mapping and target as they are now; resolve those that no longer need a change, and replay
    the rows they refused (dead letters of their tables, re-read from the source as it is)."""
    from replicator.check_mapping import live_catalog
    from replicator.drift.judge import NEEDS_CHANGE, judge
    from replicator.drift.store import resolve

    s = settings_from(config)
    mapping = mapping_of(s)
    d = mapping.forward if direction == "fwd" else mapping.reverse
    source, target = sides(s, direction)
    # Judged again as the source is now: a column renamed back counts as fixed too.
    with pg.connect(source.conninfo(), autocommit=True) as conn, pg.translated(source.masked()):
        now_source = live_catalog(conn)
    still: list[str] = []
    done: list[tuple[int, str, str | None]] = []
    with pg.connect(target.conninfo(), autocommit=True) as conn, pg.translated(target.masked()):
        rows: list[Any] = conn.execute(
            "SELECT id, ddl, table_name FROM replicator.schema_changes WHERE resolved_at IS NULL"
            " AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[])) ORDER BY id",
            (ids or None, ids or None),
        ).fetchall()
        catalog = live_catalog(conn)
        for cid, ddl, table in rows:
            if ddl.get("side") != "target" and table in now_source and not ddl.get("dropped"):
                ddl = {**ddl, "columns": {c: v.type for c, v in now_source[table].items()}}
            now = judge(d, ddl, catalog)
            if now.verdict == NEEDS_CHANGE:
                still.append(f"{cid}: {'; '.join(now.reasons)} — fix: {'; '.join(now.fixes)}")
                continue
            resolve(conn, [cid], f"mapping and target now judge it {now.verdict}")
            done.append((cid, now.verdict, table))
    for cid, verdict, _ in done:
        out.print(f"resolved {cid}: now {verdict}", highlight=False)
    tables = sorted({t for _, _, t in done if t})
    if tables and replay_letters:
        _replay_refused(config, direction, tables, [cid for cid, _, _ in done])
    elif tables:
        out.print(
            "rows the change refused are in the DLQ (`replicator dlq list --table T`): replay them, or"
            " re-read them with `replicator backfill --table T`, for " + ", ".join(tables),
            highlight=False,
        )
    if still:
        raise PreconditionError(
            "still needing a mapping change:\n  " + "\n  ".join(still),
            hint="fix the mapping (or the target) as each says, then run `drift resolve` again",
        )


def _replay_refused(config: Any, direction: str, tables: list[str], ids: list[int]) -> None:
    """The dead letters of ``tables`` replayed as `dlq replay` does (each re-read from the
    source row as it is now); what resolved each change recorded with it. A letter that fails
    again stays pending and is named: the change stays resolved (its judgement holds), the row
    is the DLQ's to settle."""
    from replicator.cli.ops import _letters, replay_letters

    s, topic, letters = _letters(config, direction)
    chosen = [x for x in letters if x.letter.table in tables]
    results = replay_letters(s, topic, direction, chosen)
    ok = [r for r in results if r.error is None]
    had = ", ".join(sorted({str(x.letter.table) for x in chosen})) or "their tables"
    _, target = sides(s, direction)
    with pg.connect(target.conninfo(), autocommit=True) as conn, pg.translated(target.masked()):
        conn.execute(
            "UPDATE replicator.schema_changes SET resolution = resolution || %s"
            " WHERE id = ANY(%s::bigint[])",
            (f"; {len(ok)} dead letter(s) of {had} replayed", ids),
        )
    for r in results:
        verdict = "replayed" if r.error is None else f"failed again: {r.error}"
        out.print(f"letter {r.letter.position} {r.letter.letter.table}: {verdict}", highlight=False)
    out.print(
        f"{len(ok)} dead letter(s) of {had} replayed,"
        f" {len(results) - len(ok)} still failing (`replicator dlq list`)",
        highlight=False,
    )
