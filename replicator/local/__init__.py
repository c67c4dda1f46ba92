"""Local services and the demo, for a machine without Docker (what CI and newcomers run).

- ``services``  PostgreSQL 15 clusters and a KRaft Kafka broker under ``.state/``
- ``tls``       a local CA and certificates (openssl, keytool); ``ssl=on`` for the clusters
- ``cluster``   Kafka clusters of one or three KRaft brokers, plaintext or SASL_SSL
- ``demo``      the README's main job: backfill → live sync → validation → cutover
"""
