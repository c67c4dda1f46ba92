"""``cutover`` and ``rollback``: the switch between writers, printed step by step."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from replicator.cli.app import ConfigOpt, app, mapping_of, out, settings_from
from replicator.errors import ReplicatorError


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
    from replicator.cutover.plan import StepResult, outcome_json
    from replicator.cutover.switch import Cutover

    s = settings_from(config)
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
        mapping_of(s),
        action=action,
        max_lag_s=max_lag,
        lock_timeout_ms=lock_timeout,
        switch_hook=switch_hook,
        report=show,
    ).run(dry_run=dry_run)
    if json_out:
        # Plain stdout, never rich's console: it wraps long lines at 80 columns off a terminal.
        sys.stdout.write(outcome_json(result) + "\n")
        return
    pause = f"{(result.pause_s or 0) * 1000:.0f} ms"
    if dry_run:
        out.print(
            f"[green]dry run complete[/]: writes were paused for {pause}; nothing was switched"
        )
    else:
        out.print(f"[green]{action} complete[/]: write pause {pause}")


@app.command()
def recover(
    config: ConfigOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """After a cutover or rollback stopped (killed, a database unreachable): make the writer the
    stored direction names writable again from the records on both databases, fence the other
    side as it was, drop the armed slot. A switch past its decision is finished by running it
    again instead."""
    from replicator.cutover import recover as rec

    s = settings_from(config)
    before = rec.read_state(s)
    if not yes and before.problems:
        if not sys.stdin.isatty():
            raise ReplicatorError("recover needs confirmation", hint="pass --yes")
        typer.confirm(f"recover: {'; '.join(before.problems)} — put it right?", abort=True)
    lock = rec.SwitchLock.take(s)
    try:
        done = rec.restore(s, lock, legacy_tables=mapping_of(s).forward.source_tables)
    finally:
        lock.release()
    after = rec.read_state(s)
    if json_out:
        sys.stdout.write(json.dumps({"done": done, "state": after.to_json()}) + "\n")
    else:
        for line in done or ["nothing to recover"]:
            out.print(f"- {line}")
        out.print(f"writer: [bold]{after.writer or 'NONE'}[/]")
        for problem in after.problems:
            out.print(f"[red]still wrong:[/] {problem}")
    if after.writer is None or after.problems:
        raise typer.Exit(2)
