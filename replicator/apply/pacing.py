"""When an apply worker commits: how long its next poll may wait before the open batch commits.

A batch commits when a poll returns nothing. With uncommitted work at a commit boundary the
poll waits no longer after the last commit's end than ``HOLD_PER_COMMIT`` times what that
commit took, and never past the batch's deadline (``batch_max_wait_ms``). Where commits are
cheap (a few ms) a trickle of small transactions is committed as it comes — before, every one
waited for the deadline while the next kept coming (bench.live: 45 ms of a 55 ms p50 lag).
Where they are dear (a flood of small transactions, a busy target, a starved CPU) apply spends
at most about a third of its time committing and batches grow, so it keeps pace instead of
queueing changes behind commits. A batch also grows while records keep coming, up to
``batch_max_changes`` or the deadline.
"""

from __future__ import annotations

import time

HOLD_PER_COMMIT = 2.0
IDLE_POLL_MS = 500  # nothing to commit: wait for work
IN_TXN_POLL_MS = 100  # inside a source transaction: its next slice is on the way


class CommitPacer:
    def __init__(self) -> None:
        self.end = 0.0  # when the last commit ended (monotonic)
        self.cost = 0.0  # how long it took

    def committed(self, begun: float) -> None:
        self.end = time.monotonic()
        self.cost = self.end - begun

    def poll_timeout_ms(
        self, *, pending: bool, at_boundary: bool, started: float, max_wait: float
    ) -> int:
        """``pending``: uncommitted work; ``started``: when the open batch began (monotonic)."""
        if not pending:
            return IDLE_POLL_MS
        if not at_boundary:
            return IN_TXN_POLL_MS
        now = time.monotonic()
        hold = self.end + HOLD_PER_COMMIT * self.cost - now
        return max(0, int(min(hold, started + max_wait - now) * 1000))
