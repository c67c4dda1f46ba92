"""Whether a start needs a backfill: one interrupted, one never recorded, or a lost slot's
re-sync."""

from __future__ import annotations

from connectors import pg
from replicator.config import Settings
from replicator.errors import PreconditionError
from replicator.state import ensure_schema


def wanted(settings: Settings, mapped: list[str]) -> tuple[bool, list[str] | None]:
    """Whether ``run`` must start a backfill, and of which tables (None: every mapped one).

    One interrupted before every chunk was read is resumed (a re-sync of some tables with its
    own list). A target that never recorded a backfill of every table gets one: a first run
    can create the slot and stop before its backfill began (a wrong target password), and from
    then on the slot is not new. Starting it late converges all the same: its marker goes
    through the log after every change already streamed, apply commits those first, and
    replays the changes after the marker over the snapshot (ARCHITECTURE.md section 5)."""
    with (
        pg.connect(settings.target.conninfo(), autocommit=True) as tgt,
        pg.translated(settings.target.masked()),
    ):
        ensure_schema(tgt)
        row = tgt.execute(
            # A repair (validate --repair) is no backfill: its own command finishes it.
            "SELECT tables, truncate FROM replicator.backfill WHERE reading "
            "AND id NOT LIKE 'repair-%' ORDER BY started_at LIMIT 1"
        ).fetchone()
        if row is not None:
            return True, (list(row[0]) if row[1] else None)
        full = tgt.execute(
            "SELECT 1 FROM replicator.backfill WHERE (NOT truncate OR tables @> %s)"
            " AND id NOT LIKE 'repair-%%' LIMIT 1",
            (mapped,),
        )
        return full.fetchone() is None, None


def slot_was_lost(settings: Settings) -> bool:
    """Whether a forward slot this start had to create replaces one that was lost.

    A target that recorded a finished backfill had a slot that carried every change since; a
    new slot starts at the current WAL, so whatever was written in between — deletes too — was
    never captured. Only a backfill that empties the tables first converges from there."""
    with (
        pg.connect(settings.target.conninfo(), autocommit=True) as tgt,
        pg.translated(settings.target.masked()),
    ):
        ensure_schema(tgt)
        row = tgt.execute("SELECT 1 FROM replicator.backfill WHERE NOT reading LIMIT 1").fetchone()
        return row is not None


def refuse_after_cutover(settings: Settings) -> None:
    """A backfill loads legacy into the target: never once the target is the writer (a
    cutover recorded there, or decided and not finished). After a cutover the forward slot is
    gone, so a backfill would also take itself for a lost slot's re-sync, one that empties the
    tables first."""
    with (
        pg.connect(settings.target.conninfo(), autocommit=True) as tgt,
        pg.translated(settings.target.masked()),
    ):
        ensure_schema(tgt)
        row = tgt.execute(
            "SELECT (SELECT desired_direction FROM replicator.pipeline WHERE name = %s),"
            " to_regclass('replicator.switch_decision') IS NOT NULL",
            (settings.name,),
        ).fetchone()
        assert row is not None
        pending = (
            row[1]
            and tgt.execute(
                "SELECT 1 FROM replicator.switch_decision WHERE name = %s AND to_dir = 'rev'",
                (settings.name,),
            ).fetchone()
        )
    if row[0] == "rev" or pending:
        raise PreconditionError(
            "the target is the writer (after a cutover): a backfill from legacy would load"
            " legacy's older rows over its writes",
            hint="`replicator status` shows the writer; after a rollback, backfill again",
        )
