"""``replicator web``: the read-only page of the pipeline, until interrupted."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from replicator.cli.app import ConfigOpt, app, console, settings_from


@app.command()
def web(
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(help="Port (default: web.port).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: web.host, 127.0.0.1).")
    ] = None,
) -> None:
    """A live, read-only page for cutover day: lag per stage, history, verdict, journal."""
    from replicator.web.server import serve

    s = settings_from(config)
    server = serve(s, host or s.web.host, s.web.port if port is None else port)
    bound_host, bound_port = server.server_address[:2]
    console.print(f"[green]web page[/] on http://{bound_host!s}:{bound_port}/ (read-only)")
    done = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    done.wait()
    server.close()
