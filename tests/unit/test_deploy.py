"""docker-compose.yml cannot run here (no Docker engine): keep it parse-checked instead."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from replicator.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _settings_path_exists(var: str) -> bool:
    parts = var.removeprefix("REPLICATOR_").lower().split("__")
    model: type = Settings
    for part in parts:
        fields = model.model_fields  # type: ignore[attr-defined]
        if part not in fields:
            return False
        model = fields[part].annotation
    return True


def test_compose_parses_and_uses_the_settings_names() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"legacy-db", "target-db", "kafka", "replicator"} <= set(services)
    assert "wal_level=logical" in services["legacy-db"]["command"]
    env = services["replicator"]["environment"]
    for var in env:
        assert var.startswith("REPLICATOR_"), var
        assert _settings_path_exists(var), f"{var} is not a setting"
    assert (ROOT / services["replicator"]["build"]["dockerfile"]).exists()


def test_kafka_pom_names_a_kafka_4_broker() -> None:
    pom = (ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<kafka.version>4." in pom


# -- Prometheus and Grafana ------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        host, container = v.split(":")[:2]
        out[container] = ROOT / host
    return out


def test_compose_starts_prometheus_scraping_the_replicator() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    env = services["replicator"]["environment"]
    assert env["REPLICATOR_METRICS__HOST"] == "0.0.0.0"  # reachable from the other container
    port = env["REPLICATOR_METRICS__PORT"]
    for spec in services["replicator"]["ports"]:
        assert spec.startswith("127.0.0.1:"), spec  # published on the host's loopback only
    mounts = _mounts(services["prometheus"])
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"replicator:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_compose_starts_grafana_with_the_dashboard_provisioned() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"][0]
    (provider,) = yaml.safe_load((provisioning / "dashboards/replicator.yml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    dashboards = {c: h for c, h in mounts.items() if c.startswith(folder + "/")}
    assert dashboards == {f"{folder}/replicator.json": ROOT / "deploy/grafana/replicator.json"}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards
    json.loads(dashboards[home].read_text())


def _exported() -> dict[str, str]:
    """Every series the collector exports (name -> type), from a status with every part."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from replicator.status import metrics
    from replicator.status.overview import (
        KafkaStatus,
        PartitionLag,
        SourceStatus,
        Status,
        TargetStatus,
    )

    st = Status(
        "p",
        "fwd",
        "now",
        SourceStatus("s", True, True, "reserved", 1, 2),
        KafkaStatus("t", [PartitionLag(0, 10, 9, 1)], 1, 0),
        TargetStatus(
            end_to_end_lag_s=0.1,
            seconds_since_last_apply=0.2,
            rows_applied={"a": 1},
            backfill={"id": "b", "status": "applied", "rows_total": 1, "rows_applied": 1},
        ),
    )
    registry = CollectorRegistry()
    collector = metrics.StatusCollector(Settings())
    original = metrics.collect
    metrics.collect = lambda s: st  # type: ignore[assignment]
    try:
        registry.register(collector)
        text = generate_latest(registry).decode()
    finally:
        metrics.collect = original
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = family.type
    return out


def test_exported_metric_names_follow_prometheus_conventions() -> None:
    exported = _exported()
    assert len(exported) >= 10
    for name, kind in exported.items():
        assert name.startswith("replicator_"), name
        assert (kind == "counter") == name.endswith("_total"), (name, kind)
        for unit in ("seconds", "bytes"):
            if unit in name:
                assert name.endswith("_" + unit), f"{name}: the unit goes last"
        assert "milli" not in name and "_ms" not in name, f"{name}: base units"


def test_every_series_the_dashboard_queries_is_exported() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/replicator.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {m for q in queries for m in re.findall(r"\breplicator_[a-z_]+\b", q)}
    assert len(used) >= 9
    exported = _exported()
    assert used <= set(exported), f"not exported: {sorted(used - set(exported))}"
