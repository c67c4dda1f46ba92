"""Query parity (shadow reads): the application's own reads, written for each schema, sent to
both databases at nearly the same point, their answers compared and their latency measured
against goals, with the target's plan in words when it is slow (docs/parity.md).

``spec`` parses the parity file, ``compare`` and ``explain`` are the pure judgements, ``run``
asks the databases, ``report`` keeps the result where ``status`` and the cutover read it."""

from __future__ import annotations

from replicator.parity.report import ParityReport, last_parity
from replicator.parity.run import run_parity
from replicator.parity.spec import ParityFile, load, parse

__all__ = ["ParityFile", "ParityReport", "last_parity", "load", "parse", "run_parity"]
