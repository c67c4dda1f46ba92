"""The read-only web page of a pipeline (``replicator web``, or ``metrics.web`` beside
``/metrics``).

- ``sampler``  one ``status`` collection per interval for every viewer, with rates
- ``history``  the chart's ring of samples in memory, folded to a screen's worth of points
- ``details``  what the page shows beyond ``status``: backfill per table, validation, journal
- ``server``   the HTTP routes (GET only) and the static assets in ``static/`` (uPlot vendored)
"""

from replicator.web.history import History, Sample
from replicator.web.server import WebApp, page_for_metrics_port, serve

__all__ = ["History", "Sample", "WebApp", "page_for_metrics_port", "serve"]
