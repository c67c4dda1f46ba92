"""The stages' retry policy (replicator.retry), on a fake clock: no test waits for real."""

from __future__ import annotations

import logging
import random
import threading

import pytest

from replicator.apply import ApplyWorker
from replicator.capture import Capture
from replicator.config import RetrySettings, Settings
from replicator.errors import (
    ConnectionFailed,
    KafkaUnavailable,
    PermissionDenied,
    TransientDatabaseError,
)
from replicator.retry import RetryPolicy
from transforms.loader import load_mapping


class FakeTime:
    """A clock that only moves when the policy sleeps (or a body says it ran for a while)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _policy(t: FakeTime, stop: threading.Event | None = None, **settings: float) -> RetryPolicy:
    return RetryPolicy(
        RetrySettings(**settings),
        "capture",
        stop=stop,
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(7),
    )


def _failing(times: int, exc: Exception, *, runs_for: float = 0.0, t: FakeTime | None = None):
    calls = []

    def body() -> None:
        calls.append(1)
        if t is not None:
            t.now += runs_for
        if len(calls) <= times:
            raise exc

    return body, calls


def test_retriable_errors_are_retried_with_growing_jittered_capped_waits() -> None:
    t = FakeTime()
    body, calls = _failing(8, ConnectionFailed("legacy: cannot connect"))
    _policy(t, first_wait_s=1.0, max_wait_s=10.0, give_up_after_s=0).run(body)
    assert len(calls) == 9
    bases = [1, 2, 4, 8, 10, 10, 10, 10]
    assert len(t.sleeps) == len(bases)
    for wait, base in zip(t.sleeps, bases, strict=True):
        assert base / 2 <= wait <= base
    assert len(set(t.sleeps[4:])) == 4  # jitter: capped waits differ


def test_jitter_differs_between_stages_failing_together() -> None:
    waits = []
    for seed in (1, 2):
        t = FakeTime()
        body, _ = _failing(3, ConnectionFailed("x"))
        RetryPolicy(
            RetrySettings(), "apply", clock=t.clock, sleep=t.sleep, rng=random.Random(seed)
        ).run(body)
        waits.append(t.sleeps)
    assert waits[0] != waits[1]


@pytest.mark.parametrize(
    "exc",
    [PermissionDenied("no REPLICATION privilege"), ValueError("a bug")],
    ids=["non-retriable", "foreign"],
)
def test_other_errors_are_raised_at_once(exc: Exception) -> None:
    t = FakeTime()
    body, calls = _failing(1, exc)
    with pytest.raises(type(exc)):
        _policy(t).run(body)
    assert len(calls) == 1 and t.sleeps == []


def test_after_the_limit_the_last_error_reaches_the_operator_with_its_hint() -> None:
    t = FakeTime()
    err = KafkaUnavailable("Kafka send failed", hint="check kafka.bootstrap_servers")
    body, calls = _failing(10_000, err)
    with pytest.raises(KafkaUnavailable) as info:
        _policy(t, first_wait_s=1.0, max_wait_s=30.0, give_up_after_s=300.0).run(body)
    assert info.value.hint == "check kafka.bootstrap_servers"
    assert 300 <= sum(t.sleeps) < 300 + 30
    assert 10 < len(calls) < 40


def test_a_healthy_session_starts_a_new_count() -> None:
    t = FakeTime()
    # Each attempt streams for two minutes before losing its connection: never gives up, and
    # every wait is a first wait again.
    body, calls = _failing(50, TransientDatabaseError("deadlock"), runs_for=120.0, t=t)
    _policy(t, first_wait_s=1.0, give_up_after_s=100.0, healthy_after_s=60.0).run(body)
    assert len(calls) == 51
    assert all(0.5 <= w <= 1.0 for w in t.sleeps)


def test_a_stop_while_retrying_returns_quietly() -> None:
    t = FakeTime()
    stop = threading.Event()

    def body() -> None:
        stop.set()
        raise ConnectionFailed("target: cannot connect")

    _policy(t, stop).run(body)
    assert t.sleeps == []


def test_each_retry_is_logged_on_one_line_with_class_message_and_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = FakeTime()
    body, _ = _failing(2, TransientDatabaseError("target: deadlock detected"))
    with caplog.at_level(logging.WARNING, logger="replicator.retry"):
        _policy(t, first_wait_s=2.0).run(body)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    for line, wait in zip(lines, t.sleeps, strict=True):
        assert "\n" not in line
        assert line.startswith("capture: TransientDatabaseError: target: deadlock detected")
        assert f"retrying in {wait:.1f}s" in line


# -- the stages use it -----------------------------------------------------------------------

QUICK = {"first_wait_s": 0.001, "max_wait_s": 0.002, "give_up_after_s": 0.05}


def _run_in_thread(target: object) -> BaseException | None:
    box: list[BaseException] = []

    def go() -> None:
        try:
            target(threading.Event())  # type: ignore[operator]
        except BaseException as exc:
            box.append(exc)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(10)
    assert not th.is_alive(), "the stage kept retrying past its limit"
    return box[0] if box else None


def test_the_capture_gives_up_after_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = Capture(Settings(retry=RetrySettings(**QUICK)), ["public.t"])

    def down(stop: threading.Event) -> None:
        raise ConnectionFailed("legacy: cannot connect")

    monkeypatch.setattr(cap, "_stream", down)
    assert isinstance(_run_in_thread(cap.run), ConnectionFailed)
    assert cap.stats.reconnects > 1


def test_the_apply_gives_up_after_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = ApplyWorker(
        Settings(retry=RetrySettings(**QUICK)), load_mapping("identity:public.t").forward
    )

    def down(stop: threading.Event) -> None:
        raise KafkaUnavailable("Kafka poll failed")

    monkeypatch.setattr(worker, "_run_once", down)
    assert isinstance(_run_in_thread(worker.run), KafkaUnavailable)
