"""What ops decide on: lag at every stage, throughput, dead letters, backfill, direction, and
the readiness verdict.

- ``overview``  :func:`collect` and :func:`verdict` (a pure function of :class:`Status`)
- ``metrics``   the Prometheus endpoint of long-running processes, from the same collector
"""

from replicator.status.overview import Status, collect, verdict

__all__ = ["Status", "collect", "verdict"]
