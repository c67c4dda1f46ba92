"""The web page's sampler reads the databases on one kept session per server
(connectors.pg.Sessions), and opens a new one when a session breaks."""

from __future__ import annotations

from typing import Any

from connectors import pg
from replicator.web.history import History
from replicator.web.sampler import Sampler
from tests.support import Env


def test_samples_reuse_one_session_per_database_and_survive_a_broken_one(
    env: Env, monkeypatch: Any
) -> None:
    real = pg.connect
    opened: list[str] = []

    def connect(conninfo: str, **kw: Any) -> Any:
        opened.append(conninfo)
        return real(conninfo, **kw)

    monkeypatch.setattr(pg, "connect", connect)
    s = env.settings()
    sampler = Sampler(s, History(10), 1.0)
    try:
        for _ in range(3):
            sampler.sample_once()
        # Seven parts of a status and the page's details, three times: two sessions in all.
        assert sorted(opened) == sorted([s.source.conninfo(), s.target.conninfo()])
        with env.target_conn() as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'replicator' AND pid <> pg_backend_pid()",
                (env.target_db,),
            )
        sampler.sample_once()  # the broken session is found out, and dropped
        sampler.sample_once()
        assert opened.count(s.target.conninfo()) == 2
        assert sampler.samples == 5
    finally:
        sampler._sessions.close()
        sampler._end_offsets.close()
