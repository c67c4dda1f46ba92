"""Local services and the demo, for a machine without Docker (what CI and newcomers run).

- ``services``  PostgreSQL 15 clusters and a KRaft Kafka broker under ``.state/``
- ``demo``      the README's main job: backfill → live sync → validation → cutover
"""
