"""What an apply worker keeps in memory: each assigned partition's position, and its counters."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Partition:
    next_offset: int
    last_lsn: int
    last_ts: str | None = None  # source commit time of last_lsn, if applied by this worker
    committed: int = 0  # next_offset as stored in the target: the fence for the next commit
    open_lsn: int | None = None  # a source transaction begun but not finished (slices)
    open_seq: int = 0
    dirty: bool = False
    # Stopped at a backfill's start marker until every partition has reached it.
    held: bool = False


@dataclass
class ApplyStats:
    messages: int = 0
    skipped_duplicates: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    commits: int = 0
    last_commit_lsn: int = 0


def gap_hint(direction: str) -> str:
    """What to do when retention deleted messages before apply read them (the consumer stops)."""
    keep = "keep the topics' log for good (`replicator check` prints the command); then "
    if direction == "fwd":
        return keep + (
            "re-sync every table: `replicator backfill --no-wait`, then `replicator run` (the "
            "backfill moves apply past the deleted messages and reloads the tables from legacy)"
        )
    return keep + "legacy lacks the target's writes they held: do not roll back to it"
