"""The replicator's orchestration layer: it drives the edges (``connectors``) and the mapping
(``transforms``) and holds no wire code.

Rooms, one folder each (every ``__init__`` says what it holds and exports):

- ``cli/``       the ``replicator`` command, one module per verb group
- ``runtime/``   long-running processes: the pipeline's stages, apply worker processes
- ``capture``    the legacy slot → Kafka, never confirming what Kafka lacks (one module)
- ``apply/``     Kafka → transforms → target, exactly once: worker, row path, session, positions
- ``backfill/``  chunked, resumable reads of the legacy tables into the snapshot topic
- ``validate/``  proving the target equals the transformed legacy data
- ``cutover/``   cutover and rollback: fence, drain, verify, switch
- ``dlq/``       dead letters: writing, reading, replaying, purging
- ``status/``    lag, health and the readiness verdict; Prometheus metrics
- ``local/``     local PostgreSQL and Kafka without Docker, and the demo
- ``config``, ``state``, ``errors``, ``check``, ``teardown``: settings, the ``replicator``
  schema, the exception tree (a leaf every layer may import), preflight checks, clean-up
"""
