"""The ``replicator`` command: a thin layer over the library API.

One module per verb group — ``pipeline`` (init, check, run, capture, apply, backfill, validate,
demo, services), ``cutover`` (cutover, rollback), ``ops`` (status, dlq, teardown), ``web`` (the
page) — each registering its commands on the Typer app of ``app``. Errors of the replicator's tree are printed
as a message and a fix, with a non-zero exit code; a stack trace appears only for a bug, and only
with ``--debug``. Exports :func:`main`, the console entry point.
"""

from __future__ import annotations

import sys

from rich.markup import escape

# Importing the verb modules registers their commands on `app`.
from replicator.cli import cutover as _cutover
from replicator.cli import drift as _drift
from replicator.cli import ops as _ops
from replicator.cli import pipeline as _pipeline
from replicator.cli import web as _web
from replicator.cli.app import _State, app, console
from replicator.errors import ReplicatorError

__all__ = ["app", "main"]
_REGISTERED = (_cutover, _drift, _ops, _pipeline, _web)


def main() -> None:
    try:
        app()
    except ReplicatorError as exc:
        if _State.debug:  # the trace, down to the foreign exception it was translated from
            console.print_exception()
        # Escaped: a message quotes servers ("[Error 29] ...") and SQL, not rich markup.
        console.print(f"[red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.hint:
            console.print(f"[yellow]fix:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: say so plainly, trace only on request
        if _State.debug:
            raise
        console.print(
            f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
            "(rerun with --debug for a trace)"
        )
        sys.exit(70)
