"""tests.support.wait_progressing: waits as long as things move, fails fast when they stop."""

from __future__ import annotations

import pytest

from tests.support import wait_progressing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_slow_but_moving_wait_runs_past_any_fixed_deadline() -> None:
    clock = Clock()
    values = iter(range(10_000))
    got = wait_progressing(
        lambda: next(values),
        lambda v: v >= 2_000,  # 2,000 polls of 1 s: far over the stall of 30 s
        stall=30,
        what="rows",
        interval=1.0,
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == 2_000 and clock.now == 2_000


def test_no_progress_fails_after_the_stall_with_what_was_last_seen() -> None:
    clock = Clock()
    seen = iter([("pending", 10), ("pending", 20)])

    def observe() -> tuple[str, int]:
        return next(seen, ("snapshot", 20))

    with pytest.raises(AssertionError) as info:
        wait_progressing(
            observe,
            lambda v: v[0] == "applied",
            stall=60,
            what="the backfill to be applied",
            interval=5.0,
            clock=clock,
            sleep=clock.sleep,
        )
    text = str(info.value)
    assert "no progress for 60s waiting for the backfill to be applied" in text
    assert "('snapshot', 20)" in text
    assert clock.now == 70  # the last change at 10 s, then a stall of 60 s


def test_an_error_while_observing_fails_the_wait_at_once() -> None:
    clock = Clock()

    def observe() -> None:
        raise AssertionError("the pipeline stopped: apply failed")

    with pytest.raises(AssertionError, match="the pipeline stopped"):
        wait_progressing(observe, bool, stall=60, what="x", clock=clock, sleep=clock.sleep)
    assert clock.now == 0
