"""The dead-letter queue: poison events with their reason, on ``<prefix>.<dir>.dlq``.

- ``letters``  writing letters (before the offsets that skip them), reading, marking done
- ``replay``   re-applying letters from the source row's current state once fixed
"""

from replicator.dlq.letters import DeadLetter, DeadLetterWriter, Letter

__all__ = ["DeadLetter", "DeadLetterWriter", "Letter"]
