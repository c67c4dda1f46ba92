"""/healthz and /readyz: the decision from what the stages report, and the WSGI answers."""

from __future__ import annotations

import multiprocessing
from typing import Any

from replicator.health import (
    LIVENESS_PATH,
    READINESS_PATH,
    ProcessView,
    StageHealth,
    StageView,
    liveness,
    readiness,
)
from replicator.status.endpoints import health_app

NOW = 1_000.0
STALL = 60.0


def _stage(name: str = "apply-0", *, beat: float = NOW - 1, ready: bool = True, **kw: Any) -> Any:
    return StageView(name, kw.get("running", True), beat, ready, kw.get("reason", ""))


def _view(*stages: StageView, **kw: Any) -> ProcessView:
    return ProcessView(
        stages=stages,
        stages_since=kw.pop("since", NOW - 5),
        stall_after_s=STALL,
        **kw,
    )


def test_all_stages_coming_round_and_doing_their_job_is_live_and_ready() -> None:
    p = _view(_stage("capture"), _stage("apply-0"), _stage("apply-1"))
    assert liveness(p, NOW).ok
    r = readiness(p, NOW)
    assert r.ok and r.text() == "ok\n"


def test_waiting_for_a_part_is_live_but_not_ready_and_says_why() -> None:
    why = "target postgresql://u:***@db:5432/t unreachable: connection refused (retrying)"
    p = _view(_stage("capture"), _stage("apply-0", ready=False, reason=why))
    assert liveness(p, NOW).ok  # an outage is no reason to restart the process
    r = readiness(p, NOW)
    assert not r.ok
    assert r.reasons == (f"apply-0: {why}",)
    assert r.text() == f"apply-0: {why}\n"


def test_a_loop_that_stopped_coming_round_is_not_live() -> None:
    p = _view(_stage("capture"), _stage("apply-0", beat=NOW - STALL - 1))
    v = liveness(p, NOW)
    assert not v.ok and v.reasons == ("apply-0: no progress for 61s",)
    assert readiness(p, NOW).reasons == v.reasons
    # Just inside the window: still live (a slow merge is not a wedge).
    assert liveness(_view(_stage(beat=NOW - STALL + 1)), NOW).ok


def test_a_dead_stage_is_not_ready_at_once_and_not_live_once_its_beat_is_old() -> None:
    fresh = _view(_stage("capture", running=False, beat=NOW - 2))
    assert liveness(fresh, NOW).ok  # a direction change stops and restarts stages
    assert readiness(fresh, NOW).reasons == ("capture: not running",)
    old = _view(_stage("capture", running=False, beat=NOW - STALL - 5))
    assert liveness(old, NOW).reasons == ("capture: no progress for 65s (not running)",)


def test_starting_is_live_however_long_it_takes_and_never_ready() -> None:
    # Creating a slot waits for the source's running transactions: a restart would not help.
    p = _view(since=NOW - STALL - 30)
    assert liveness(p, NOW).ok
    r = readiness(p, NOW)
    assert not r.ok and r.reasons[0].startswith("starting: preparing the slot")
    assert "(90s;" in r.reasons[0]


def test_a_failed_or_stopping_process_is_not_ready() -> None:
    failed = _view(_stage(), failed="slot mcp_fwd is missing")
    assert liveness(failed, NOW).reasons == ("stopped by an error: slot mcp_fwd is missing",)
    stopping = _view(_stage(), stopping=True)
    assert liveness(stopping, NOW).ok
    assert readiness(stopping, NOW).reasons == ("stopping",)


def test_stage_health_reports_the_last_state() -> None:
    h = StageHealth()
    beat, ready, why = h.snapshot()
    assert not ready and why == "starting" and beat > 0
    h.ready()
    assert h.snapshot()[1]
    h.waiting("x" * 1000 + "é")  # bounded, never an error
    _, ready, why = h.snapshot()
    assert not ready and 200 < len(why) < 240


def _child_reports(h: StageHealth) -> None:
    h.waiting("from the child")


def test_stage_health_crosses_into_a_spawned_child() -> None:
    h = StageHealth(shared=True)
    proc = multiprocessing.get_context("spawn").Process(target=_child_reports, args=(h,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert h.snapshot()[2] == "from the child"


def _get(app: Any, path: str) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return seen["status"], seen["headers"], body


def test_the_app_answers_200_or_503_with_reasons_and_passes_metrics_on() -> None:
    state = {"view": _view(_stage("capture"), _stage("apply-0"))}

    def metrics(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"replicator_ready 1\n"]

    app = health_app(lambda: state["view"], metrics, clock=lambda: NOW)
    assert _get(app, LIVENESS_PATH)[0] == "200 OK"
    status, headers, body = _get(app, READINESS_PATH)
    assert (status, body) == ("200 OK", b"ok\n")
    assert headers["Cache-Control"] == "no-store"

    state["view"] = _view(_stage("capture"), _stage("apply-0", ready=False, reason="no partition"))
    status, _, body = _get(app, READINESS_PATH)
    assert status.startswith("503") and body == b"apply-0: no partition\n"
    assert _get(app, LIVENESS_PATH)[0] == "200 OK"

    assert _get(app, "/metrics")[2] == b"replicator_ready 1\n"
    assert _get(app, "/other")[0].startswith("404")


def test_the_view_of_a_pipeline_reads_its_stages_and_skips_the_backfill() -> None:
    import threading
    from types import SimpleNamespace

    from replicator.errors import ConnectionFailed
    from replicator.health import process_view

    alive, dead = threading.Thread(target=lambda: None), threading.Thread(target=lambda: None)
    alive.is_alive = lambda: True  # type: ignore[method-assign]
    dead.is_alive = lambda: False  # type: ignore[method-assign]
    capture, apply = StageHealth(), StageHealth()
    capture.ready()
    apply.waiting("no partition")
    pipeline = SimpleNamespace(
        stages=[("capture", alive, capture), ("backfill", dead, None), ("apply-0", alive, apply)],
        stages_since=5.0,
        error=ConnectionFailed("target down"),
        stop=threading.Event(),
    )
    p = process_view(pipeline, 30.0)  # type: ignore[arg-type]
    assert [(s.name, s.running, s.ready, s.reason) for s in p.stages] == [
        ("capture", True, True, ""),
        ("apply-0", True, False, "no partition"),
    ]
    assert (p.stages_since, p.stall_after_s, p.failed, p.stopping) == (
        5.0,
        30.0,
        "target down",
        False,
    )


def test_a_consumer_without_its_group_coordinator_is_not_coordinated() -> None:
    from types import SimpleNamespace

    from connectors.kafka_io import Consumer

    consumer = Consumer.__new__(Consumer)  # no broker: only the state the property reads
    consumer._consumer = SimpleNamespace(_coordinator=SimpleNamespace(coordinator_id=1))
    assert consumer.coordinated
    consumer._consumer._coordinator.coordinator_id = None  # kafka-python: connection lost
    assert not consumer.coordinated


def test_a_retry_wait_keeps_the_beat_and_ends_when_the_stage_stops() -> None:
    import threading
    import time

    from replicator.health import waiting_sleep

    h, stop = StageHealth(), threading.Event()
    h.waiting("target down (retrying)")
    before = h.snapshot()[0]
    waiting_sleep(h, stop)(1.2)  # beats about once a second while it waits
    beat, ready, why = h.snapshot()
    assert beat > before and not ready and why == "target down (retrying)"
    stop.set()
    started = time.monotonic()
    waiting_sleep(h, stop)(60)
    assert time.monotonic() - started < 1
