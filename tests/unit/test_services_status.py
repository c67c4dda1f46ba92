"""``replicator services status`` lists every local service the registry names: the two
PostgreSQL clusters, the plain Kafka broker, and the SASL_SSL and multi-broker clusters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from replicator.cli import app


def _node(root: Path, i: int, port: int) -> dict[str, Any]:
    return {
        "node_id": i,
        "port": port,
        "internal_port": port + 1,
        "controller_port": port + 2,
        "mtls_port": port + 3,
        "root": str(root / f"node{i}"),
        "pid": 0,  # not running
    }


def test_status_lists_the_kafka_clusters(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("REPLICATOR_STATE_DIR", str(tmp_path))
    registry = {
        "kafka_clusters": {
            "tls": {
                "name": "tls",
                "cluster_id": "x",
                "sasl_ssl": True,
                "nodes": [_node(tmp_path / "kafka-tls", 1, 40001)],
            },
            "trio": {
                "name": "trio",
                "cluster_id": "y",
                "sasl_ssl": False,
                "nodes": [_node(tmp_path / "kafka-trio", i, 40100 + 10 * i) for i in (1, 2, 3)],
            },
        }
    }
    (tmp_path / "services.json").write_text(json.dumps(registry))
    r = CliRunner().invoke(app, ["services", "status"], env={"COLUMNS": "240"})
    assert r.exit_code == 0, r.output
    assert "kafka:tls (SASL_SSL)" in r.output and "127.0.0.1:40001" in r.output
    assert "kafka:trio (3 brokers)" in r.output
    assert "127.0.0.1:40110,127.0.0.1:40120,127.0.0.1:40130" in r.output
