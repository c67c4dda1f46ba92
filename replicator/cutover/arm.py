"""The next direction's stream, armed on the new writer before the pause and dropped when a
switch is taken back."""

from __future__ import annotations

import contextlib

from psycopg import sql

from connectors import kafka_io, pg
from connectors.pgsource import create_slot, ensure_publication, slot_info
from replicator.config import Settings
from replicator.cutover.plan import Plan
from replicator.errors import ReplicatorError


def arm(s: Settings, p: Plan) -> None:
    """Publication and slot on the new writer, created before the pause while the old
    direction's apply still writes there. Its writes do not echo back through the new stream:
    they carry the apply's replication origin, and whatever precedes the decision is skipped
    anyway — the slot is advanced to the current WAL after catch-up and again in the decision's
    transaction, after the drain (switch.py), origins granted or not."""
    with pg.connect(p.new.conninfo(), autocommit=True) as conn, pg.translated(p.new.masked()):
        if p.new_dir == "rev":
            # Reverse deletes need the whole old row: the target's keys are derived ids,
            # the legacy key is in its columns (member → organization_member).
            for table in p.arm.source_tables:
                conn.execute(
                    sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                        sql.Identifier(*table.split(".", 1))
                    )
                )
        ensure_publication(conn, s.publication_for(p.new_dir), p.arm.source_tables)
        if slot_info(conn, s.slot(p.new_dir)).exists:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (s.slot(p.new_dir),))
    create_slot(p.new.conninfo(), s.slot(p.new_dir))
    kafka_io.ensure_topics(
        s.kafka.bootstrap_servers,
        {s.topic(p.new_dir, "changes"): s.kafka.partitions, s.topic(p.new_dir, "dlq"): 1},
        s.kafka.replication_factor,
        **s.kafka.client_options(),
    )


def disarm(s: Settings, p: Plan) -> None:
    """The new direction's slot dropped (it would retain WAL); an unreachable side is left to
    `replicator recover`, which drops it."""
    with (
        contextlib.suppress(ReplicatorError),
        pg.connect(p.new.conninfo(), autocommit=True) as conn,
        pg.translated(p.new.masked()),
    ):
        if slot_info(conn, s.slot(p.new_dir)).exists:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (s.slot(p.new_dir),))
