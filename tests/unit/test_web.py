"""The web page's pieces that need no servers: the history ring, its folding for the chart,
the rates between samples, and the HTTP routes over a sampler that is never started."""

from __future__ import annotations

import json
import math
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from replicator.config import Settings
from replicator.status.overview import KafkaStatus, PartitionLag, Status, TargetStatus
from replicator.web.history import History, Sample
from replicator.web.sampler import counters, rates
from replicator.web.server import WebApp, _Handler, _Server


def _sample(t: float, lag: float | None = 0.5, rows: float | None = 100.0) -> Sample:
    return Sample(t, lag, rows, 10.0, 10.0, 1000.0)


def test_the_ring_keeps_the_newest_samples_in_order() -> None:
    h = History(5)
    for i in range(8):
        h.add(_sample(float(i), lag=float(i)))
    assert len(h) == 5
    out = h.series(span_s=100, points=100, now=8.0)
    assert out["lag_s"] == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_folding_keeps_the_peak_lag_and_the_mean_rate_and_leaves_gaps() -> None:
    h = History(100)
    h.add(_sample(1.0, lag=0.2, rows=100))
    h.add(_sample(2.0, lag=5.0, rows=300))  # a spike: the bucket shows it
    h.add(_sample(3.0, lag=None, rows=None))  # unknown: not a zero
    h.add(_sample(9.0, lag=0.1, rows=50))
    out = h.series(span_s=10, points=2, now=10.0)  # buckets [0, 5) and [5, 10)
    assert out["t"] == [5.0, 10.0]
    assert out["lag_s"] == [5.0, 0.1]
    assert out["rows_per_s"] == [200.0, 50.0]
    empty = History(10).series(span_s=10, points=5, now=10.0)
    assert empty["points"] == 0 and empty["lag_s"] == []


def test_a_day_of_history_folds_to_a_small_answer() -> None:
    """86,400 one-second samples: the chart's answer stays a few kilobytes (the report quotes
    how fast; no timing is asserted here)."""
    h = History(86_400)
    for i in range(86_400):
        h.add(_sample(float(i), lag=math.sin(i / 600) + 1))
    out = h.series(span_s=86_400, points=720, now=86_400.0)
    assert out["points"] == 720
    assert len(orjson.dumps(out)) < 100_000


def test_rates_are_differences_and_never_negative() -> None:
    st = Status("p", "fwd", "now", None, KafkaStatus("t", [PartitionLag(0, 100, 90, 10)]), None)
    st.target = TargetStatus(rows_applied={"a": 1000, "b": 500})
    a = counters(st, {"slot_confirmed_lsn": 1000}, t=10.0)
    assert rates(None, a)["rows_per_s"] is None
    st.target.rows_applied = {"a": 1200, "b": 500}
    st.kafka.partitions = [PartitionLag(0, 120, 110, 10)]  # type: ignore[union-attr]
    b = counters(st, {"slot_confirmed_lsn": 3000}, t=12.0)
    r = rates(a, b)
    assert r == {
        "rows_per_s": 100.0,
        "messages_in_per_s": 10.0,
        "messages_applied_per_s": 10.0,
        "wal_bytes_per_s": 1000.0,
    }
    st.direction = "rev"  # a switch: the counters start over, no rate across it
    st.target.rows_applied = {"a": 1}
    assert rates(b, counters(st, {}, t=13.0))["rows_per_s"] is None


@pytest.fixture
def served() -> Iterator[tuple[str, WebApp]]:
    s = Settings(web={"interval_s": 1.0, "history_h": 24.0})
    app = WebApp(s)  # its sampler is not started: no database is needed
    server = _Server(("127.0.0.1", 0), _Handler)
    server.app = app
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", app
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def test_the_page_and_its_assets_are_served_with_a_strict_script_policy(
    served: tuple[str, WebApp],
) -> None:
    base, _ = served
    status, headers, body = _get(base + "/")
    assert status == 200 and b'<div id="chart"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    script = _get(base + "/app.js")[2]
    assert not re.search(rb"\.innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert _get(base + "/vendor/uPlot.iife.min.js")[2].startswith(
        b"/*! https://github.com/leeoniya/uPlot"
    )
    state = json.loads(_get(base + "/api/state")[2])
    assert state["sampled_at"] is None  # before the first sample: said, not an error
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(base + "/metrics")  # only on the metrics port
    assert e.value.code == 404


def test_the_server_is_read_only(served: tuple[str, WebApp]) -> None:
    base, _ = served
    req = urllib.request.Request(base + "/api/state", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405


def test_a_loopback_server_answers_only_requests_addressed_to_it(
    served: tuple[str, WebApp],
) -> None:
    base, _ = served
    for host in ("localhost:9180", "127.0.0.1", "[::1]:80"):
        req = urllib.request.Request(base + "/api/state", headers={"Host": host})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    rebound = urllib.request.Request(base + "/api/state", headers={"Host": "evil.example:9180"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(rebound, timeout=5)
    assert e.value.code == 421


def test_history_endpoint_with_a_full_day(served: tuple[str, WebApp]) -> None:
    base, app = served
    assert app.history.capacity == 86_400
    import time

    now = time.time()
    for i in range(86_400):
        app.history.add(_sample(now - 86_400 + i, lag=0.3))
    _, _, body = _get(base + "/api/history?span=86400&points=720")
    out: dict[str, Any] = json.loads(body)
    assert 700 <= out["points"] <= 720 and len(body) < 100_000
    _, _, hour = _get(base + "/api/history?span=3600&points=720")
    assert json.loads(hour)["points"] == 720
    _, _, bad = _get(base + "/api/history?span=nonsense&points=-5")
    assert json.loads(bad)["span_s"] == 3600.0


def test_bind_address_is_local_by_default() -> None:
    s = Settings()
    assert s.web.host == "127.0.0.1" and s.metrics.host == "127.0.0.1"
    assert not s.metrics.web


def test_the_page_as_a_wsgi_application_for_the_metrics_port() -> None:
    from replicator.web.server import wsgi_app

    page = wsgi_app(WebApp(Settings()), loopback=True)

    def call(path: str, method: str = "GET", host: str = "127.0.0.1:9108") -> tuple[str, bytes]:
        seen: list[str] = []
        path, _, query = path.partition("?")
        environ = {
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": method,
            "HTTP_HOST": host,
        }
        body = b"".join(page(environ, lambda status, headers: seen.append(status)))
        return seen[0], body

    status, body = call("/")
    assert status == "200 OK" and b'<div id="chart"' in body
    assert call("/api/history?span=600&points=10")[0] == "200 OK"
    assert call("/api/state", method="POST")[0] == "405 Method Not Allowed"
    assert call("/api/state", host="evil.example")[0] == "421 Misdirected Request"
