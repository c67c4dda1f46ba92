"""Live progress bars for long work (backfill): rows done, rows per second, ETA per table."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from connectors import pg
from replicator.backfill.reader import TableProgress
from replicator.config import Settings


class _RowsPerSecond(TransferSpeedColumn):
    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "", style="progress.data.speed")


class BackfillProgress:
    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RowsPerSecond(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> BackfillProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, p: TableProgress) -> None:
        name = f"read {p.table}"
        if name not in self._tasks:
            # Which path the table takes, once: bulk SQL, or the Python transform and why.
            how = "COPY chunks + compiled SQL" if p.path == "sql" else p.path
            self.progress.console.print(f"{p.table}: {how}")
            self._tasks[name] = self.progress.add_task(name, total=p.rows_total)
        self.progress.update(
            self._tasks[name], completed=p.rows_read, total=max(p.rows_total, p.rows_read)
        )

    def wait_applied(self, s: Settings, backfill_id: str, timeout: float = 24 * 3600) -> None:
        """Follow apply's progress until the snapshot is loaded (needs `replicator run`/`apply`)."""
        deadline = time.monotonic() + timeout
        with (
            pg.connect(s.target.conninfo(), autocommit=True) as conn,
            pg.translated(s.target.masked()),
        ):
            while time.monotonic() < deadline:
                rows = conn.execute(
                    "SELECT table_name, rows_total, rows_read, rows_applied FROM replicator.backfill_progress "
                    "WHERE backfill_id = %s ORDER BY table_name",
                    (backfill_id,),
                ).fetchall()
                for table, total, read, applied in rows:
                    name = f"apply {table}"
                    if name not in self._tasks:
                        self._tasks[name] = self.progress.add_task(name, total=max(total, read))
                    self.progress.update(
                        self._tasks[name], completed=applied, total=max(total, read, applied)
                    )
                status = conn.execute(
                    "SELECT status FROM replicator.backfill WHERE id = %s", (backfill_id,)
                ).fetchone()
                if status and status[0] == "applied":
                    return
                time.sleep(0.5)
