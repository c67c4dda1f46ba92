"""How long apply's poll may wait before the open batch commits (no services, no clocks read
by the test: the last commit's end is placed far from now, so only the rule decides)."""

from __future__ import annotations

import time

from connectors.pgsink import Batch
from replicator.apply import ApplyWorker
from replicator.apply.positions import Partition


def _worker(*, dirty: bool = True, open_lsn: int | None = None) -> ApplyWorker:
    w = ApplyWorker.__new__(ApplyWorker)  # the rule reads only positions and commit times
    w._parts = {0: Partition(next_offset=1, last_lsn=0, dirty=dirty, open_lsn=open_lsn)}
    w._commit_end = 0.0
    w._commit_cost = 0.0
    return w


def test_an_idle_worker_waits_for_work() -> None:
    assert _worker(dirty=False)._poll_timeout_ms(Batch(), time.monotonic(), 0.05) == 500


def test_inside_a_source_transaction_it_waits_for_the_next_slice() -> None:
    assert _worker(open_lsn=7)._poll_timeout_ms(Batch(), time.monotonic(), 0.05) == 100


def test_after_cheap_commits_a_batch_commits_as_soon_as_nothing_more_is_at_hand() -> None:
    """Not at the batch deadline (a minute away here): at once."""
    assert _worker()._poll_timeout_ms(Batch(), time.monotonic(), 60.0) == 0


def test_after_a_dear_commit_it_waits_about_as_long_but_never_past_the_deadline() -> None:
    w = _worker()
    w._commit_end = time.monotonic() + 3600  # a commit that "ends" an hour from now
    w._commit_cost = 1.0
    started = time.monotonic()
    # Until the last commit's end plus twice its cost (an hour and two seconds away) ...
    assert 3_601_000 < w._poll_timeout_ms(Batch(), started, 7200.0) <= 3_602_000
    # ... bounded by the batch's deadline (a minute after it started) ...
    assert 0 < w._poll_timeout_ms(Batch(), started, 60.0) <= 60_000
    # ... which a batch past its deadline does not wait for at all.
    assert w._poll_timeout_ms(Batch(), started - 61, 60.0) == 0
