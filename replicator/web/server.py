"""The web page's HTTP server: static assets, the sampled state, history and dead letters.

Standard library only (``ThreadingHTTPServer``): a handful of GET routes, nothing that changes
state, so nothing to authenticate beyond binding to 127.0.0.1 by default. Every response says
``Content-Security-Policy: script-src 'self'``, so even a value that slipped past the page's
``textContent`` could not run as a script.

    /                     the page (index.html, app.js, app.css, vendor/uPlot)
    /api/state            the latest sample: ``status --json`` plus details and rates
    /api/history?span=S&points=N   the chart's series, folded to at most N points
    /api/dlq              dead letters not replayed or purged, newest first, with reasons
    /metrics              Prometheus, when served on the metrics port (``metrics.web``)
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from replicator.config import Settings
from replicator.errors import ConfigError, ReplicatorError
from replicator.web.history import History
from replicator.web.sampler import Sampler

log = logging.getLogger(__name__)

MAX_POINTS = 2000  # the most points a chart asks for: a screen's width
DLQ_SHOWN = 100
DLQ_CACHE_S = 5.0  # a refresh storm reads the DLQ topic once

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_ASSETS = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/app.css": "app.css",
    "/vendor/uPlot.iife.min.js": "vendor/uPlot.iife.min.js",
    "/vendor/uPlot.min.css": "vendor/uPlot.min.css",
}
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]", ""}
_SECURITY = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    root = resources.files("replicator.web") / "static"
    out = {}
    for route, name in _ASSETS.items():
        data = (root / name).read_bytes()
        out[route] = (data, _TYPES["." + name.rsplit(".", 1)[1]])
    return out


class WebApp:
    """The page's data: a sampler thread and the routes that read what it keeps."""

    def __init__(self, settings: Settings, *, metrics: bool = False) -> None:
        w = settings.web
        self.s = settings
        self.history = History(max(1, int(w.history_h * 3600 / w.interval_s)))
        self.sampler = Sampler(settings, self.history, w.interval_s)
        self.assets = _load_assets()
        self.metrics = metrics
        self._dlq: tuple[float, tuple[str, Any], bytes] | None = None
        self._dlq_lock = threading.Lock()
        self._stop = threading.Event()
        if metrics:
            from prometheus_client.core import REGISTRY

            from replicator.status.metrics import StatusCollector

            REGISTRY.register(StatusCollector(settings))

    def start_sampling(self) -> None:
        threading.Thread(
            target=self.sampler.run, args=(self._stop,), name="web-sampler", daemon=True
        ).start()

    def stop(self) -> None:
        self._stop.set()

    def history_json(self, query: dict[str, list[str]]) -> bytes:
        span = _number(query, "span", 3600.0, 10.0, self.history.capacity * self.s.web.interval_s)
        points = int(_number(query, "points", 600, 10, MAX_POINTS))
        return orjson.dumps(self.history.series(span, points, time.time()))

    def dlq_json(self) -> bytes:
        """Read again when the sampled count changed, else at most every ``DLQ_CACHE_S``."""
        state = orjson.loads(self.sampler.state_json).get("status") or {}
        direction = state.get("direction") or "fwd"
        seen = (direction, (state.get("kafka") or {}).get("dlq_messages"))
        with self._dlq_lock:
            if self._dlq is not None:
                at, key, body = self._dlq
                if key == seen and time.monotonic() - at < DLQ_CACHE_S:
                    return body
            body = orjson.dumps(self._read_dlq(direction), default=str)
            self._dlq = (time.monotonic(), seen, body)
            return body

    def _read_dlq(self, direction: str) -> dict[str, Any]:
        from connectors import pg
        from replicator.dlq.letters import done_positions, read_letters
        from replicator.status.overview import sides

        topic = self.s.topic(direction, "dlq")
        try:
            db = sides(self.s, direction)[1]
            with pg.connect(db.conninfo(), autocommit=True) as conn, pg.translated(db.masked()):
                done = done_positions(conn, topic)
            letters = read_letters(self.s.kafka.bootstrap_servers, topic, done)
        except ReplicatorError as exc:
            return {"error": exc.message, "hint": exc.hint or "", "letters": []}
        shown = letters[::-1][:DLQ_SHOWN]
        return {
            "topic": topic,
            "total": len(letters),
            "letters": [
                {
                    "position": x.position,
                    "at": x.letter.at,
                    "table": x.letter.table,
                    "key": x.letter.key,
                    "column": x.letter.column,
                    "error": x.letter.error,
                    "reason": x.letter.reason,
                }
                for x in shown
            ],
        }


def _number(q: dict[str, list[str]], name: str, default: float, lo: float, hi: float) -> float:
    try:
        v = float(q[name][0]) if name in q else default
    except ValueError:
        v = default
    return min(hi, max(lo, v))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "replicator-web"

    def do_GET(self) -> None:
        app = self.server.app
        if not self._host_allowed():
            return self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain")
        url = urlsplit(self.path)
        path = url.path
        if path in app.assets:
            body, ctype = app.assets[path]
            return self._send(HTTPStatus.OK, body, ctype, cache="max-age=300")
        if path == "/api/state":
            return self._json(app.sampler.state_json)
        if path == "/api/history":
            return self._json(app.history_json(parse_qs(url.query)))
        if path == "/api/dlq":
            return self._json(app.dlq_json())
        if path == "/healthz":
            return self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/metrics" and app.metrics:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return self._send(HTTPStatus.OK, generate_latest(), CONTENT_TYPE_LATEST)
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _host_allowed(self) -> bool:
        """Bound to loopback, answer only requests addressed to it: a web page elsewhere whose
        name was pointed at 127.0.0.1 (DNS rebinding) must not read the pipeline's data."""
        if not self.server.loopback:
            return True
        host = self.headers.get("Host") or ""
        if not host.endswith("]"):  # [::1] alone has no port to cut
            host = host.rsplit(":", 1)[0]
        return host in _LOOPBACK_NAMES

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain", allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _json(self, body: bytes) -> None:
        self._send(HTTPStatus.OK, body, "application/json")

    def _send(
        self,
        code: HTTPStatus,
        body: bytes,
        ctype: str,
        cache: str = "no-store",
        allow: str | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for k, v in _SECURITY.items():
            self.send_header(k, v)
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: WebApp

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closed its connection mid-request is no error worth a stack trace.
        log.debug("web: request from %s failed", client_address, exc_info=True)

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(str(self.server_address[0])).is_loopback

    def close(self) -> None:
        self.app.stop()
        self.shutdown()
        self.server_close()


def serve(settings: Settings, host: str, port: int, *, metrics: bool = False) -> _Server:
    """Start the page (and its sampler) in background threads; returns the server, whose
    ``shutdown()`` stops it. ``ConfigError`` when the address cannot be bound."""
    app = WebApp(settings, metrics=metrics)
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve the web page on {host}:{port}: {exc.strerror or exc}",
            hint="choose another port (--port, web.port) or stop what uses it",
        ) from None
    server.app = app
    app.start_sampling()
    threading.Thread(target=server.serve_forever, name="web-server", daemon=True).start()
    log.info("web page on http://%s:%d/", host, server.server_address[1])
    return server


def serve_metrics_port(settings: Settings) -> None:
    """What long-running commands serve on ``metrics.port``: /metrics alone, or with
    ``metrics.web`` the page as well (one port to open for both)."""
    m = settings.metrics
    if not m.port:
        return
    if m.web:
        serve(settings, m.host, m.port, metrics=True)
    else:
        from replicator.status.metrics import serve_metrics

        serve_metrics(settings)
