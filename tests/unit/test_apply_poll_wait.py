"""How long apply's poll may wait before the open batch commits (no services, no clocks read
by the test: the last commit's end is placed far from now, so only the rule decides)."""

from __future__ import annotations

import time

from replicator.apply.pacing import HOLD_PER_COMMIT, IDLE_POLL_MS, IN_TXN_POLL_MS, CommitPacer


def _timeout(pacer: CommitPacer, started: float, max_wait: float, **kw: bool) -> int:
    args = {"pending": True, "at_boundary": True, **kw}
    return pacer.poll_timeout_ms(started=started, max_wait=max_wait, **args)


def test_an_idle_worker_waits_for_work() -> None:
    assert _timeout(CommitPacer(), time.monotonic(), 0.05, pending=False) == IDLE_POLL_MS


def test_inside_a_source_transaction_it_waits_for_the_next_slice() -> None:
    assert _timeout(CommitPacer(), time.monotonic(), 0.05, at_boundary=False) == IN_TXN_POLL_MS


def test_after_cheap_commits_a_batch_commits_as_soon_as_nothing_more_is_at_hand() -> None:
    """Not at the batch deadline (a minute away here): at once."""
    assert _timeout(CommitPacer(), time.monotonic(), 60.0) == 0


def test_after_a_dear_commit_it_waits_about_as_long_but_never_past_the_deadline() -> None:
    pacer = CommitPacer()
    pacer.end = time.monotonic() + 3600  # a commit that "ends" an hour from now
    pacer.cost = 1.0
    started = time.monotonic()
    # Until the last commit's end plus HOLD_PER_COMMIT times its cost ...
    hold_ms = 3_600_000 + int(HOLD_PER_COMMIT * 1000)
    assert hold_ms - 1000 < _timeout(pacer, started, 7200.0) <= hold_ms
    # ... bounded by the batch's deadline (a minute after it started) ...
    assert 0 < _timeout(pacer, started, 60.0) <= 60_000
    # ... which a batch past its deadline does not wait for at all.
    assert _timeout(pacer, started - 61, 60.0) == 0


def test_a_commit_records_its_end_and_cost() -> None:
    pacer = CommitPacer()
    begun = time.monotonic()
    pacer.committed(begun)
    assert pacer.end >= begun and pacer.cost == pacer.end - begun
