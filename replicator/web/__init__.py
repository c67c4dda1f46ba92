"""The web page of a pipeline (``replicator web``, or ``metrics.web`` on the metrics port)."""

from replicator.web.history import History, Sample
from replicator.web.server import WebApp, serve, serve_metrics_port

__all__ = ["History", "Sample", "WebApp", "serve", "serve_metrics_port"]
