"""Backfill: a resumable, chunked read of the mapped legacy tables into the snapshot topic.

- ``reader``    :class:`Backfill` (and one-table re-sync with watermarks), progress per chunk
- ``progress``  :class:`BackfillProgress`: live progress bars per table
"""

from replicator.backfill.progress import BackfillProgress
from replicator.backfill.reader import Backfill

__all__ = ["Backfill", "BackfillProgress"]
