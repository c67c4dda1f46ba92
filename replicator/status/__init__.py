"""What ops decide on: lag at every stage, throughput, dead letters, backfill, direction, and
the readiness verdict.

- ``overview``  :func:`collect` and :func:`verdict` (a pure function of :class:`Status`)
- ``lag``       end-to-end lag from the data: what waits where, since which source time
- ``metrics``   the Prometheus series of long-running processes, from the same collector
- ``endpoints`` their HTTP server: ``/metrics``, and ``/healthz``, ``/readyz`` from
                :mod:`replicator.health`
"""

from replicator.status.overview import Status, collect, verdict

__all__ = ["Status", "collect", "verdict"]
