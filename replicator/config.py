"""Configuration: one pydantic-settings model, read from ``replicator.toml`` with environment
overrides (``REPLICATOR_…``, nested with ``__``, e.g. ``REPLICATOR_SOURCE__PASSWORD``).

Unknown keys are errors (a typo must not silently fall back to a default). Passwords are
``SecretStr``: they reach libpq and nothing else; everything printed uses :meth:`masked`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from replicator.errors import ConfigError

DEFAULT_CONFIG_FILE = "replicator.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: SecretStr = SecretStr("")
    dbname: str = "postgres"
    sslmode: str = "prefer"
    connect_timeout: int = 10

    def conninfo(self, **extra: str) -> str:
        """A libpq connection string, with the password. Never print it: use :meth:`masked`."""
        from psycopg.conninfo import make_conninfo

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            "application_name": "replicator",
        }
        if self.password.get_secret_value():
            params["password"] = self.password.get_secret_value()
        params.update(extra)
        return make_conninfo("", **params)

    def masked(self) -> str:
        return f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.dbname}"


class KafkaSettings(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Topics are <topic_prefix>.fwd.changes etc.; empty means the pipeline name.
    topic_prefix: str = ""
    partitions: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)
    compression: str = "lz4"
    request_timeout_ms: int = 30_000


class CaptureSettings(_Strict):
    publication: str = ""  # empty: "<name>_pub"
    heartbeat_interval_s: float = Field(5.0, gt=0)
    proto_version: int = Field(2, ge=1, le=2)
    # Ask PostgreSQL (protocol 2) to stream large transactions while they are still running;
    # the capture then decodes and spools them on its own host and sends them at their commit.
    # Off by default: the walsender spills a large transaction to the source's pg_replslot in
    # C and sends it at commit, where the capture decodes it once, alongside apply — a
    # million-row transaction becomes visible on the target about a quarter sooner (bench.live).
    # On: the source spills nothing, the capture host does. Either way slices bound memory.
    streaming: bool = False
    slice_max_changes: int = Field(5_000, ge=1)
    slice_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    status_interval_s: float = Field(1.0, gt=0)


class ApplySettings(_Strict):
    batch_max_changes: int = Field(5_000, ge=1)
    batch_max_wait_ms: int = Field(50, ge=0)
    workers: int = Field(1, ge=1)
    # Column used to partition changes in scale-out mode (empty: the row's key).
    partition_key: str = ""


class BackfillSettings(_Strict):
    chunk_rows: int = Field(5_000, ge=1)
    parallel: int = Field(2, ge=1)  # tables read at once (within a foreign-key level)


class CutoverSettings(_Strict):
    max_lag_s: float = 2.0
    lock_timeout_ms: int = 200
    lock_attempts: int = 5
    app_roles: list[str] = Field(default_factory=list)
    switch_hook: str = ""
    drain_timeout_s: float = 30.0


class MetricsSettings(_Strict):
    port: int = Field(0, ge=0, le=65535)  # 0: no metrics endpoint
    host: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus on another host scrape
    web: bool = False  # also serve the web page (`replicator web`) on this port


class WebSettings(_Strict):
    """`replicator web`: a read-only page of the pipeline (and `metrics.web`'s sampling)."""

    port: int = Field(9180, ge=0, le=65535)
    host: str = "127.0.0.1"  # read-only, yet it shows table names, keys and errors: keep it local
    interval_s: float = Field(1.0, ge=0.2, le=60)  # one status collection per interval
    history_h: float = Field(24.0, gt=0, le=168)  # kept in memory for the chart


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPLICATOR_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=DEFAULT_CONFIG_FILE,
    )

    name: str = Field("replicator", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    mapping: str = "transforms.mcp_manager:MAPPING"
    source: DatabaseSettings = Field(default_factory=DatabaseSettings)
    target: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    apply: ApplySettings = Field(default_factory=ApplySettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    cutover: CutoverSettings = Field(default_factory=CutoverSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    web: WebSettings = Field(default_factory=WebSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("REPLICATOR_CONFIG", DEFAULT_CONFIG_FILE)
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    # -- derived names -------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.kafka.topic_prefix or self.name

    def topic(self, direction: str, kind: str) -> str:
        return f"{self.prefix}.{direction}.{kind}"

    def topics(self, direction: str) -> dict[str, int]:
        """A direction's topics and their partition counts (whoever starts first creates them)."""
        return {
            self.topic(direction, "changes"): self.kafka.partitions,
            # One partition: chunks are loaded in the order they were read.
            self.topic(direction, "snapshot"): 1,
            self.topic(direction, "dlq"): 1,
        }

    @property
    def publication(self) -> str:
        return self.capture.publication or f"{self.name}_pub"

    def publication_for(self, direction: str) -> str:
        """The forward publication on legacy; the reverse one on the target."""
        return self.publication if direction == "fwd" else f"{self.publication}_{direction}"

    def slot(self, direction: str) -> str:
        return f"{self.name}_{direction}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings; every problem is reported at once as a :class:`ConfigError`."""
    if config_file is not None:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(
                f"configuration file {path} not found",
                hint="write one with `replicator init`, or point --config at yours",
            )
        os.environ["REPLICATOR_CONFIG"] = str(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(problems),
            hint="compare with the template written by `replicator init`",
        ) from None


TEMPLATE = """\
# replicator.toml — written by `replicator init`. Every key may be overridden from the
# environment: REPLICATOR_<SECTION>__<KEY>, e.g. REPLICATOR_SOURCE__PASSWORD.
# Unknown keys are errors. Keep passwords out of this file in production: use the environment.

# Pipeline name: slots are <name>_fwd / <name>_rev, topics <name>.fwd.changes, ...
name = "{name}"
# The mapping: "module:ATTRIBUTE" (a transforms.api.MappingSet), or "identity:schema.table,..."
mapping = "{mapping}"

[source]            # the legacy database (read through logical replication)
host = "{source_host}"
port = {source_port}
user = "{source_user}"
password = "{source_password}"
dbname = "{source_dbname}"

[target]            # the Drizzle schema's database
host = "{target_host}"
port = {target_port}
user = "{target_user}"
password = "{target_password}"
dbname = "{target_dbname}"

[kafka]
bootstrap_servers = "{bootstrap}"
partitions = 1          # > 1 is scale-out mode (see apply.partition_key)
replication_factor = 1
compression = "lz4"

[capture]
heartbeat_interval_s = 5.0
proto_version = 2
streaming = false       # true: large transactions spill on the capture host, not the source

[apply]
batch_max_changes = 5000
batch_max_wait_ms = 50

[backfill]
chunk_rows = 5000
parallel = 2            # tables read at once

[cutover]
max_lag_s = 2.0
lock_timeout_ms = 200
app_roles = []          # roles whose writes are revoked on the fenced side
switch_hook = ""        # shell command run at the switch, e.g. a deployment flip

[metrics]
port = 0                # Prometheus endpoint of long-running processes; 0 disables it
host = "127.0.0.1"      # 0.0.0.0 lets a Prometheus on another host scrape
web = false             # true: the web page (`replicator web`) on this port too

[web]                   # `replicator web`: a read-only page of the pipeline
port = 9180
host = "127.0.0.1"
interval_s = 1.0        # one status collection per interval, whoever watches
history_h = 24.0        # chart history kept in memory
"""


def render_template(**values: Any) -> str:
    defaults: dict[str, Any] = {
        "name": "mcp",
        "mapping": "transforms.mcp_manager:MAPPING",
        "source_host": "127.0.0.1",
        "source_port": 5432,
        "source_user": "postgres",
        "source_password": "",
        "source_dbname": "legacy",
        "target_host": "127.0.0.1",
        "target_port": 5432,
        "target_user": "postgres",
        "target_password": "",
        "target_dbname": "target",
        "bootstrap": "127.0.0.1:9092",
    }
    defaults.update(values)
    return TEMPLATE.format(**defaults)
