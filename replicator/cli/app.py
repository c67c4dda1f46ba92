"""The command's shared parts: the Typer app, its consoles and global options, and how a
command finds its settings and mapping. The verbs live in the sibling modules, which register
themselves on :data:`app`."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from replicator import config as cfg

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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    # kafka-python logs every broker hiccup at ERROR with a stack trace; the replicator says
    # what it means ("Kafka unreachable, retrying") itself. --verbose shows the library's view.
    logging.getLogger("kafka").setLevel(logging.WARNING if verbose else logging.CRITICAL)


def child_logging() -> Callable[[], None]:
    """The logging set-up a worker process repeats (a spawned child starts without it)."""
    return functools.partial(setup_logging, _State.verbose)


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option(help="Show stack traces of internal errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _State.debug = debug
    _State.verbose = verbose
    setup_logging(verbose)


def settings_from(config: Path | None) -> cfg.Settings:
    if (
        config is None
        and not Path(cfg.DEFAULT_CONFIG_FILE).exists()
        and "REPLICATOR_CONFIG" not in os.environ
    ):
        return cfg.load_settings()
    return cfg.load_settings(config)


def mapping_of(s: cfg.Settings) -> Any:
    from transforms.loader import load_mapping

    return load_mapping(s.mapping)


WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-w", min=1, help="Apply workers (default: apply.workers)."),
]
