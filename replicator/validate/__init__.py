"""Validation: prove that the target equals the transformed legacy data (docs/validation.md).

- ``run``       :func:`validate`, the whole method: settle in-flight rows, compare, report
- ``scope``     which tables, and their components (tables that must be read together);
                columns the mapping reads that legacy lacks (a run with one is never clean)
- ``expect``    the expected target: legacy rows through the forward transforms, folded
- ``canon``     canonical text per value, whichever side it came from
- ``fast``      ``--fast``: keys changed since the last clean full validation (from the log)
- ``reverse``   what a rollback re-checks on legacy
- ``sql``       checksums of key buckets computed by both servers through compiled transforms;
                ``sql_plan`` the SQL of each side; ``sql_keys`` the same by source key
                (``--fast``, the cutover's verify)
- ``orphans``   target rows whose foreign key points at a missing parent
- ``report``    the report, its JSON, and the stored results; ``print`` renders it
"""

from replicator.validate.report import Report
from replicator.validate.run import validate as run_validation

__all__ = ["Report", "run_validation"]
