"""Backfill: a resumable, chunked read of the mapped legacy tables into the snapshot topic.

- ``reader``    :class:`Backfill` (and one-table re-sync with watermarks), progress per chunk
- ``progress``  :class:`BackfillProgress`: live progress bars per table
- ``needed``    whether a start needs a backfill (interrupted, never recorded, a lost slot)
- ``ranges``    a large table's key ranges read side by side, under a rows-per-second cap
- ``copy_read`` a chunk read as PostgreSQL's COPY output (tables whose transform compiles)
"""

from replicator.backfill.progress import BackfillProgress
from replicator.backfill.reader import Backfill

__all__ = ["Backfill", "BackfillProgress"]
