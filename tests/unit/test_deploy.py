"""docker-compose.yml cannot run here (no Docker engine): keep it parse-checked instead."""

from __future__ import annotations

from pathlib import Path

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
