"""The HTTP endpoints of a long-running process, on ``metrics.host``:``metrics.port``:

- ``/metrics`` — Prometheus series (:mod:`replicator.status.metrics`), collected at scrape time;
- ``/healthz`` — liveness, ``/readyz`` — readiness (:mod:`replicator.health`): 200 ``ok``, or
  503 with one reason a line. They touch no database or broker, so a probe every few seconds
  costs nothing and answers even while a part is down;
- with ``metrics.web``, every other path: the web page (:mod:`replicator.web`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)

from replicator.config import Settings
from replicator.errors import ConfigError
from replicator.health import (
    LIVENESS_PATH,
    READINESS_PATH,
    ProcessView,
    Verdict,
    liveness,
    readiness,
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def health_app(
    view: Callable[[], ProcessView],
    metrics: WsgiApp | None = None,
    clock: Callable[[], float] = time.monotonic,
    *,
    page: WsgiApp | None = None,
) -> WsgiApp:
    """A WSGI application: the two probes from ``view()``, ``/metrics`` to ``metrics``, and
    every other path to ``page`` when given (the web page, ``metrics.web``)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        decide = {LIVENESS_PATH: liveness, READINESS_PATH: readiness}.get(path)
        if decide is not None:
            verdict: Verdict = decide(view(), clock())
            body = verdict.text().encode()
            status = "200 OK" if verdict.ok else "503 Service Unavailable"
            start_response(
                status,
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]
        if metrics is not None and path == "/metrics":
            return metrics(environ, start_response)
        if page is not None:
            return page(environ, start_response)
        body = b"not found: /metrics, /healthz and /readyz are served here\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds would bury the log


class Endpoints:
    """The server thread; :meth:`close` stops it (tests; a process just exits)."""

    def __init__(self, server: WSGIServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="endpoints", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def serve(
    settings: Settings, view: Callable[[], ProcessView], *, page: WsgiApp | None = None
) -> Endpoints | None:
    """Serve the three endpoints on ``metrics.port`` (0: none), and ``page`` beside them."""
    m = settings.metrics
    if not m.port:
        return None
    from replicator.status.metrics import StatusCollector

    # A registry of its own: the global one would run the status collector once at
    # registration (asking every part, before the endpoints answer) and refuse a second one.
    registry = CollectorRegistry()
    registry.register(StatusCollector(settings))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    app = health_app(view, make_wsgi_app(registry), page=page)
    server_class = _Server6 if ":" in m.host else _Server
    try:
        server = make_server(m.host, m.port, app, server_class, _QuietHandler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics and health on {m.host}:{m.port}: {exc.strerror or exc}",
            hint="choose a free metrics.port (and a metrics.host of this machine)",
        ) from None
    return Endpoints(server)
