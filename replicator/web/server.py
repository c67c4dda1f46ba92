"""The web page's HTTP server: static assets, the sampled state, history and dead letters.

Standard library only (``ThreadingHTTPServer``): a handful of GET routes, nothing that changes
state, so nothing to authenticate beyond binding to 127.0.0.1 by default. Every response says
``Content-Security-Policy: script-src 'self'``, so even a value that slipped past the page's
``textContent`` could not run as a script.

    /                     the page (index.html, app.js, app.css, vendor/uPlot)
    /api/state            the latest sample: ``status --json`` plus details and rates
    /api/history?span=S&points=N   the chart's series, folded to at most N points
    /api/dlq              dead letters not replayed or purged, newest first, with reasons

With ``metrics.web`` the same routes are served on the metrics port, beside ``/metrics`` and
the health probes (:func:`page_for_metrics_port`, a WSGI application).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
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
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

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

    def __init__(self, settings: Settings) -> None:
        w = settings.web
        self.s = settings
        self.history = History(max(1, int(w.history_h * 3600 / w.interval_s)))
        self.sampler = Sampler(settings, self.history, w.interval_s)
        self.assets = _load_assets()
        self._dlq: tuple[float, tuple[str, Any], bytes] | None = None
        self._dlq_lock = threading.Lock()
        self._stop = threading.Event()

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
            letters = read_letters(
                self.s.kafka.bootstrap_servers, topic, done, **self.s.kafka.client_options()
            )
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


Response = tuple[HTTPStatus, bytes, str, str]  # code, body, content type, cache-control


def _respond(app: WebApp, method: str, target: str, host: str, loopback: bool) -> Response:
    """One request, whichever server carries it (this module's, or the metrics port's WSGI)."""
    if method not in ("GET", "HEAD"):
        return HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain", "no-store"
    if loopback and not _host_allowed(host):
        return HTTPStatus.MISDIRECTED_REQUEST, b"unknown host\n", "text/plain", "no-store"
    url = urlsplit(target)
    path = url.path
    if path in app.assets:
        body, ctype = app.assets[path]
        return HTTPStatus.OK, body, ctype, "max-age=300"
    if path == "/api/state":
        return HTTPStatus.OK, app.sampler.state_json, "application/json", "no-store"
    if path == "/api/history":
        return HTTPStatus.OK, app.history_json(parse_qs(url.query)), "application/json", "no-store"
    if path == "/api/dlq":
        return HTTPStatus.OK, app.dlq_json(), "application/json", "no-store"
    if path == "/healthz":
        return HTTPStatus.OK, b"ok\n", "text/plain", "no-store"
    return HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", "no-store"


def _host_allowed(host: str) -> bool:
    """Bound to loopback, answer only requests addressed to it: a web page elsewhere whose name
    was pointed at 127.0.0.1 (DNS rebinding) must not read the pipeline's data."""
    if not host.endswith("]"):  # [::1] alone has no port to cut
        host = host.rsplit(":", 1)[0]
    return host in _LOOPBACK_NAMES


def _headers(code: HTTPStatus, body: bytes, ctype: str, cache: str) -> list[tuple[str, str]]:
    out = [
        ("Content-Type", ctype),
        ("Content-Length", str(len(body))),
        ("Cache-Control", cache),
        *_SECURITY.items(),
    ]
    if code == HTTPStatus.METHOD_NOT_ALLOWED:
        out.append(("Allow", "GET, HEAD"))
    return out


def wsgi_app(app: WebApp, loopback: bool) -> WsgiApp:
    """The page as a WSGI application: what the metrics port serves with ``metrics.web``."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("PATH_INFO", "/")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        method = environ.get("REQUEST_METHOD", "GET")
        code, body, ctype, cache = _respond(
            app, method, target, environ.get("HTTP_HOST", ""), loopback
        )
        start_response(f"{code.value} {code.phrase}", _headers(code, body, ctype, cache))
        return [] if method == "HEAD" else [body]

    return wsgi


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "replicator-web"

    def _any(self) -> None:
        code, body, ctype, cache = _respond(
            self.server.app,
            self.command,
            self.path,
            self.headers.get("Host") or "",
            self.server.loopback,
        )
        self.send_response(code)
        for k, v in _headers(code, body, ctype, cache):
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _any

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
        return _is_loopback(str(self.server_address[0]))

    def close(self) -> None:
        self.app.stop()
        self.shutdown()
        self.server_close()


def serve(settings: Settings, host: str, port: int) -> _Server:
    """Start the page (and its sampler) in background threads; returns the server, whose
    ``close()`` stops both. ``ConfigError`` when the address cannot be bound."""
    app = WebApp(settings)
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


def page_for_metrics_port(settings: Settings) -> WsgiApp | None:
    """With ``metrics.web``: the page (its sampler started) to serve beside ``/metrics``."""
    if not (settings.metrics.port and settings.metrics.web):
        return None
    app = WebApp(settings)
    app.start_sampling()
    return wsgi_app(app, _is_loopback(settings.metrics.host))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
