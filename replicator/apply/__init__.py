"""Apply: the Kafka change log → typed rows → transforms → the target, exactly once.

- ``worker``     :class:`ApplyWorker`: batches at commit boundaries, offsets in the same txn
- ``rows``       :class:`RowMapper`: one change of an envelope → target operations (no I/O)
- ``session``    the target session: FK triggers off, writes tagged with a replication origin
- ``positions``  what a worker keeps in memory: partition positions and counters
- ``pacing``     when a batch commits: as the stream pauses, or later when commits are dear
- ``controls``   control messages (heartbeats, markers, DDL records) checked, then acted on
"""

from replicator.apply.worker import ApplyWorker

__all__ = ["ApplyWorker"]
