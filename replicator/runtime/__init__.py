"""Long-running processes: capture and apply as stages that follow the pipeline's direction.

- ``pipeline``        :class:`Pipeline`: starts, watches and stops the stages
- ``worker_process``  apply workers in child processes of their own (one core each)
- ``gc_tuning``       garbage-collector settings for processes that stream rows
- ``continuous``      continuous validation: tables walked within a budget, each table's
                      verified-through point
"""

from replicator.runtime.pipeline import Pipeline

__all__ = ["Pipeline"]
