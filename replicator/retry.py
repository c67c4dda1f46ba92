"""One retry policy for the long-running stages (capture, apply), on tenacity.

A stage body runs until it is stopped or fails. A retriable :class:`ReplicatorError` (a server
gone, a deadlock, Kafka not answering) is retried after an exponentially growing wait with
jitter, capped, each retry logged on one line (class, message, next wait). Anything else is
raised at once: a non-retriable error is the operator's to fix, a foreign exception is a bug.

Failures are counted in *streaks*: an attempt that ran ``healthy_after_s`` before failing was a
working session, so the next failure starts a new streak (first wait again, clock reset). A
streak that lasts ``give_up_after_s`` raises its last error to the operator, hint included;
0 means retry for as long as the stage runs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from replicator.config import RetrySettings
from replicator.errors import ReplicatorError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, ReplicatorError) and exc.retriable


@dataclass
class _Streak:
    """Consecutive failures of a stage; the stop and wait of the policy read it."""

    failures: int = 0
    started: float = 0.0  # when the streak's first failure happened
    attempt_started: float = 0.0


class _Wait(wait_base):
    """Exponential from ``first`` (doubling per failure of the streak), capped at ``cap``, with
    jitter: a uniform draw in the upper half, so stages that failed together (a restarted
    server) do not come back in step, and no wait collapses to nothing."""

    def __init__(self, streak: _Streak, first: float, cap: float, rng: random.Random) -> None:
        self.streak, self.first, self.cap, self.rng = streak, first, cap, rng

    def __call__(self, retry_state: RetryCallState) -> float:
        base = min(self.cap, self.first * 2.0 ** min(self.streak.failures - 1, 60))
        return self.rng.uniform(base / 2, base)


class _Stop(stop_base):
    def __init__(
        self, streak: _Streak, limit: float, stop: threading.Event | None, clock: Clock
    ) -> None:
        self.streak, self.limit, self.stop, self.clock = streak, limit, stop, clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.stop is not None and self.stop.is_set():
            return True
        return self.limit > 0 and self.clock() - self.streak.started >= self.limit


class RetryPolicy:
    """Runs a stage body under the policy; see the module's docstring."""

    def __init__(
        self,
        settings: RetrySettings,
        what: str,
        *,
        stop: threading.Event | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        on_failure: Callable[[ReplicatorError], None] | None = None,
    ) -> None:
        self.settings = settings
        self.what = what
        self.stop = stop
        self.clock = clock
        # Waiting on the stop event lets a stopping stage leave its wait at once.
        self._sleeper = sleep or (stop.wait if stop is not None else time.sleep)
        self.rng = rng or random.Random()
        self.on_failure = on_failure
        self.streak = _Streak()

    def run(self, body: Callable[[], None]) -> None:
        """Call ``body`` until it returns, retrying retriable errors; returns quietly when the
        stop event is set while retrying; raises anything else, or the last error once the
        streak outlasts ``give_up_after_s``."""
        s = self.settings
        retrying = Retrying(
            retry=retry_if_exception(_retriable),
            wait=_Wait(self.streak, s.first_wait_s, s.max_wait_s, self.rng),
            stop=_Stop(self.streak, s.give_up_after_s, self.stop, self.clock),
            sleep=self._sleep,
            before=self._before,
            after=self._after,
            before_sleep=self._log,
            retry_error_callback=self._give_up,
        )
        retrying(body)

    # -- tenacity's hooks ------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        self._sleeper(seconds)

    def _before(self, rs: RetryCallState) -> None:
        self.streak.attempt_started = self.clock()

    def _after(self, rs: RetryCallState) -> None:
        now = self.clock()
        if (
            self.streak.failures == 0
            or now - self.streak.attempt_started >= self.settings.healthy_after_s
        ):
            self.streak.failures = 0
            self.streak.started = now
        self.streak.failures += 1
        if self.on_failure is not None:
            self.on_failure(_error(rs))

    def _log(self, rs: RetryCallState) -> None:
        exc = _error(rs)
        log.warning(
            "%s: %s: %s; retrying in %.1fs",
            self.what,
            type(exc).__name__,
            exc.message,
            rs.upcoming_sleep,
        )

    def _give_up(self, rs: RetryCallState) -> None:
        exc = _error(rs)
        if self.stop is not None and self.stop.is_set():
            return  # the stage is stopping: the error does not matter any more
        log.error(
            "%s: still failing after %.0fs (%d attempts); giving up",
            self.what,
            self.clock() - self.streak.started,
            self.streak.failures,
        )
        raise exc


def _error(rs: RetryCallState) -> ReplicatorError:
    assert rs.outcome is not None
    exc = rs.outcome.exception()
    assert isinstance(exc, ReplicatorError)  # only those are retried
    return exc
