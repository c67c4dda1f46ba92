"""Validation: prove that the target equals the transformed legacy data (docs/validation.md).

- ``run``       :func:`validate`, the whole method: settle in-flight rows, compare, report
- ``scope``     which tables, and their components (tables that must be read together);
                columns the mapping reads that legacy lacks (a run with one is never clean)
- ``expect``    the expected target: legacy rows through the forward transforms, folded
- ``canon``     canonical text per value, whichever side it came from
- ``fast``      ``--fast``: keys changed since the last clean full validation (from the log)
- ``reverse``   what a rollback re-checks on legacy
- ``context``   one run's sessions and what it learns on the way (shared by its passes)
- ``insql``     the comparison in both databases through compiled transforms: ``plan`` the
                SQL of each side, ``groups`` checksums of key buckets, ``keys`` the same by
                source key (``--fast``, the cutover's verify), ``passes`` groups spread over
                two session pairs, ``catalog`` each server's catalog, read once
- ``orphans``   target rows whose foreign key points at a missing parent
- ``report``    the report, its JSON, and the stored results; ``print`` renders it
- ``repair``    ``--repair``: each difference fixed through the snapshot path, then checked
- ``resume``    ``--resume``: the clean groups of an interrupted full run, re-used
"""

from replicator.validate.report import Report
from replicator.validate.run import validate as run_validation

__all__ = ["Report", "run_validation"]
