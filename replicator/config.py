"""Configuration: one pydantic-settings model, read from ``replicator.toml`` with environment
overrides (``REPLICATOR_…``, nested with ``__``, e.g. ``REPLICATOR_SOURCE__PASSWORD``).

Unknown keys are errors (a typo must not silently fall back to a default). Passwords are
``SecretStr``: they reach libpq and nothing else; everything printed uses :meth:`masked`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from replicator.errors import ConfigError
from replicator.secret_files import Masked, check_readable, read_secret_files

DEFAULT_CONFIG_FILE = "replicator.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Strict):
    """A PostgreSQL server and database."""

    host: str = Field("127.0.0.1", description="host name or address of the server")
    port: int = Field(5432, description="port of the server")
    user: str = Field("postgres", description="role to connect as")
    password: SecretStr = Field(
        SecretStr(""),
        description="its password; better set from the environment (REPLICATOR_<SIDE>__PASSWORD)"
        " or password_file",
    )
    password_file: str = Field(
        "", description="a file holding the password (a mounted Kubernetes or Docker secret)"
    )
    dbname: str = Field("postgres", description="the database")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer",
        description="libpq sslmode; verify-full checks the CA and that the certificate names host",
    )
    sslrootcert: str = Field(
        "", description="the CA that signed the server's certificate (verify-ca, verify-full)"
    )
    sslcert: str = Field("", description="client certificate, when the server asks for one")
    sslkey: str = Field("", description="the client certificate's private key")
    sslpassword: SecretStr = Field(SecretStr(""), description="passphrase of an encrypted sslkey")
    sslpassword_file: str = Field("", description="a file holding sslpassword")
    connect_timeout: int = Field(10, description="seconds to wait for a connection")

    @model_validator(mode="after")
    def _secrets_and_files(self) -> Self:
        read_secret_files(self, {"password": "password_file", "sslpassword": "sslpassword_file"})
        check_readable(self, ["sslrootcert", "sslcert", "sslkey"], skip={"system"})
        if self.sslcert and not self.sslkey:
            raise ValueError("sslcert is set without sslkey: give the client certificate's key")
        return self

    def _tls_params(self) -> dict[str, str]:
        return {
            k: v
            for k, v in (
                ("sslrootcert", self.sslrootcert),
                ("sslcert", self.sslcert),
                ("sslkey", self.sslkey),
            )
            if v
        }

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
            **self._tls_params(),
        }
        if self.password.get_secret_value():
            params["password"] = self.password.get_secret_value()
        if self.sslpassword.get_secret_value():
            params["sslpassword"] = self.sslpassword.get_secret_value()
        params.update(extra)
        return make_conninfo("", **params)

    def url(self) -> str:
        """The same connection as a URL (``DATABASE_URL`` of the Node tools: drizzle-kit,
        Better-Auth's ``pg`` pool), TLS settings as query parameters. Holds the password.

        ``prefer``/``allow`` are left out: node-postgres has no opportunistic TLS and reads
        any sslmode as "TLS required"; an operator who wants TLS says require or verify-*."""
        from urllib.parse import quote, urlencode

        query = dict(self._tls_params())
        if self.sslmode not in ("prefer", "allow"):
            query = {"sslmode": self.sslmode, **query}
        pw = self.password.get_secret_value()
        auth = quote(self.user, safe="") + (f":{quote(pw, safe='')}" if pw else "")
        tail = f"?{urlencode(query)}" if query else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.dbname, safe='')}{tail}"

    def masked(self) -> str:
        return f"postgresql://{self.user}:***@{self.host}:{self.port}/{self.dbname}"


class KafkaSettings(_Strict):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    topic_prefix: str = Field(
        "", description="topics are <prefix>.fwd.changes etc.; empty: the pipeline name"
    )
    partitions: int = Field(
        1, ge=1, description="partitions of the changes topic; > 1 is scale-out mode"
    )
    replication_factor: int = Field(
        0,
        ge=0,
        description="replication factor of new topics; 0: 3 (with min.insync.replicas=2) on a "
        "cluster of three brokers or more, else 1",
    )
    # The codecs whose libraries are installed with the replicator (kafka-python needs one for
    # zstd or snappy too, and every consumer of the topics would).
    compression: Literal["lz4", "gzip", "none"] = Field(
        "lz4", description="producer compression: lz4, gzip or none"
    )
    request_timeout_ms: int = Field(30_000, description="Kafka request timeout")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    sasl_username: str = Field("", description="with SASL_*: the user")
    sasl_password: SecretStr = Field(
        SecretStr(""), description="with SASL_*: its password (better: sasl_password_file)"
    )
    sasl_password_file: str = Field("", description="a file holding sasl_password")
    ssl_cafile: str = Field(
        "", description="CA that signed the brokers' certificates (empty: the system's)"
    )
    ssl_certfile: str = Field("", description="client certificate for mutual TLS (PEM)")
    ssl_keyfile: str = Field("", description="its private key (PEM)")
    ssl_key_password: SecretStr = Field(
        SecretStr(""), description="passphrase of an encrypted ssl_keyfile"
    )
    ssl_key_password_file: str = Field("", description="a file holding ssl_key_password")
    ssl_check_hostname: bool = Field(
        True, description="check that a broker's certificate names its host (keep on)"
    )

    @model_validator(mode="after")
    def _secrets_and_files(self) -> Self:
        read_secret_files(
            self,
            {"sasl_password": "sasl_password_file", "ssl_key_password": "ssl_key_password_file"},
        )
        check_readable(self, ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol.startswith("SASL_")
        set_tls = [f for f in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, f)]
        if set_tls and not tls:
            raise ValueError(
                f"{', '.join(set_tls)} set but security_protocol is {self.security_protocol}: "
                "use SSL or SASL_SSL for a TLS listener"
            )
        if sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_username and "
                "sasl_password (or sasl_password_file)"
            )
        if (self.sasl_username or self.sasl_password.get_secret_value()) and not sasl:
            raise ValueError(
                f"sasl_username/sasl_password set but security_protocol is "
                f"{self.security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        return self

    def client_options(self) -> dict[str, Any]:
        """kafka-python's keyword arguments for security, given to every producer, consumer and
        admin client (beside ``bootstrap_servers``). Holds the secrets: never print it (their
        ``repr`` is masked, should a library log its configuration)."""
        opts: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts.update(
                ssl_check_hostname=self.ssl_check_hostname,
                ssl_cafile=self.ssl_cafile or None,
                ssl_certfile=self.ssl_certfile or None,
                ssl_keyfile=self.ssl_keyfile or None,
                ssl_password=Masked.of(self.ssl_key_password),
            )
        if self.security_protocol.startswith("SASL_"):
            opts.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=Masked.of(self.sasl_password),
            )
        return opts


class CaptureSettings(_Strict):
    publication: str = Field("", description='publication on the source; empty: "<name>_pub"')
    heartbeat_interval_s: float = Field(
        5.0, gt=0, description="seconds between heartbeats (keep an idle slot moving, measure lag)"
    )
    proto_version: int = Field(
        2, ge=1, le=2, description="pgoutput protocol version (at most: PostgreSQL 13 gets 1)"
    )
    # Ask PostgreSQL (protocol 2) to stream large transactions while they are still running;
    # the capture then decodes and spools them on its own host and sends them at their commit.
    # Off by default: the walsender spills a large transaction to the source's pg_replslot in
    # C and sends it at commit, where the capture decodes it once, alongside apply — a
    # million-row transaction becomes visible on the target about a quarter sooner (bench.live).
    # On: the source spills nothing, the capture host does. Either way slices bound memory.
    streaming: bool = Field(
        False,
        description="true: large transactions spill on the capture's host while they run; "
        "false: on the source (pg_replslot), sent at commit",
    )
    slice_max_changes: int = Field(
        5_000, ge=1, description="changes of one transaction per Kafka message, at most"
    )
    slice_max_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="bytes of one transaction per Kafka message, at most"
    )
    status_interval_s: float = Field(
        1.0, gt=0, description="seconds between standby status updates to the source"
    )


class ApplySettings(_Strict):
    batch_max_changes: int = Field(5_000, ge=1, description="changes per target transaction")
    batch_max_wait_ms: int = Field(
        50, ge=0, description="how long a batch waits for more changes before it is written"
    )
    workers: int = Field(
        1,
        ge=1,
        description="apply workers `replicator run` and `replicator apply` start (--workers overrides)",
    )
    partition_key: str = Field(
        "",
        description="column that partitions changes in scale-out mode (part of the key of "
        "every table that has it); empty: the row's key",
    )
    patch_wait_s: float = Field(
        600.0,
        gt=0,
        description="how long a patch waits for its row (written by another table's changes) "
        "before it is dead-lettered",
    )


class BackfillSettings(_Strict):
    chunk_rows: int = Field(5_000, ge=1, description="rows per snapshot chunk (narrow: up to 4x)")
    parallel: int = Field(2, ge=1, description="tables read at once (within a foreign-key level)")
    compiled: bool = Field(
        True,
        description="load tables whose transform compiles to SQL as COPY output (bulk path)",
    )
    apply_connections: int = Field(
        2,
        ge=1,
        description="target sessions loading bulk chunks of a table at once (1: in apply's own)",
    )
    python_tables: list[str] = Field(
        default_factory=list,
        description="source tables kept on the Python path even if their transform compiles",
    )
    max_read_sessions: int = Field(
        0,
        ge=0,
        description="source sessions reading at once, over a level's tables and the key ranges"
        " a large table is split into (0: backfill.parallel)",
    )
    max_rows_per_s: float = Field(
        0, ge=0, description="rows read per second from the source, over every session (0: no cap)"
    )
    keep_indexes: list[str] = Field(
        default_factory=list,
        description="target tables (schema.table) whose secondary indexes and foreign keys stay"
        " in place during a first backfill (the others' are rebuilt after the load)",
    )


class CutoverSettings(_Strict):
    max_lag_s: float = Field(2.0, description="end-to-end lag allowed when a cutover starts")
    lock_timeout_ms: int = Field(200, description="wait for the fence's table locks, per attempt")
    lock_attempts: int = Field(5, description="attempts to take the fence's locks")
    app_roles: list[str] = Field(
        default_factory=list, description="roles whose writes are revoked on the fenced side"
    )
    switch_hook: str = Field(
        "", description="shell command run at the switch, e.g. a deployment flip"
    )
    drain_timeout_s: float = Field(
        30.0, description="how long the last changes may take to drain once writes are fenced"
    )
    hook_timeout_s: float = Field(
        120.0, gt=0, description="the switch hook is killed (with what it started) after this"
    )
    hook_env: list[str] = Field(
        default_factory=list,
        description="environment variables passed on to the switch hook (it gets PATH, HOME,"
        " locale and REPLICATOR_ACTION/RUN_ID/NEW_WRITER, never the replicator's secrets)",
    )
    require_parity: bool = Field(
        False,
        description="the preflight refuses while the last `replicator parity` run has a pair"
        " that differs or misses its goal (docs/parity.md)",
    )


class RetrySettings(_Strict):
    first_wait_s: float = Field(
        0.5, gt=0, description="first wait before a stage retries a temporary error"
    )
    max_wait_s: float = Field(
        30.0, gt=0, description="cap of the doubling wait between retries (jitter below it)"
    )
    give_up_after_s: float = Field(
        900.0,
        ge=0,
        description="a stage failing this long without a healthy session stops with its error "
        "(0: retry for as long as it runs)",
    )
    healthy_after_s: float = Field(
        60.0, gt=0, description="a session that ran this long before failing starts a new count"
    )


class MetricsSettings(_Strict):
    port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of /metrics, /healthz and /readyz of long-running processes; 0: none",
    )
    host: str = Field(
        "127.0.0.1",
        description="address they bind; 0.0.0.0 lets a Prometheus or a kubelet elsewhere ask",
    )
    # Generous: a liveness failure restarts the process, which must not happen to a slow
    # large merge (replicator.health).
    stall_after_s: float = Field(
        300.0,
        gt=0,
        description="/healthz fails when a stage's loop has not come round for this long",
    )
    web: bool = Field(
        False, description="true: the web page (`replicator web`) on this port too, beside /metrics"
    )
    stage_timings_dir: str = Field(
        "",
        description="diagnostics: a directory where capture and apply write how long each live "
        "transaction waited at each stage (replicator/stage_timings.py); empty: off",
    )


class WebSettings(_Strict):
    port: int = Field(9180, ge=0, le=65535, description="port of `replicator web`")
    host: str = Field(
        "127.0.0.1",
        description="address it binds: read-only, yet it shows table names, keys and errors",
    )
    interval_s: float = Field(
        1.0, ge=0.2, le=60, description="seconds between status samples, however many watch"
    )
    history_h: float = Field(
        24.0, gt=0, le=168, description="hours of history kept in memory for the chart"
    )


class ValidationSettings(_Strict):
    continuous: bool = Field(
        False,
        description="`replicator run` keeps validating, table by table within the budget, and"
        " records each table's verified-through point (docs/validation.md)",
    )
    rows_per_s: float = Field(
        20_000.0, gt=0, description="continuous validation's budget: rows compared per second"
    )
    range_rows: int = Field(0, ge=0, description="rows per key range (0: the budget's 5 s)")


class DriftSettings(_Strict):
    apply_ddl: bool = Field(
        False,
        description="replay a legacy ALTER TABLE of an identity: table on the target, in order"
        " (docs/drift.md)",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REPLICATOR_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=DEFAULT_CONFIG_FILE,
    )

    name: str = Field(
        "replicator",
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="pipeline name: slots are <name>_fwd / <name>_rev, topics <name>.fwd.changes",
    )
    mapping: str = Field(
        "transforms.mcp_manager:MAPPING",
        description='the mapping: "module:ATTRIBUTE" (a transforms.api.MappingSet), '
        'or "identity:schema.table,..."',
    )
    source: DatabaseSettings = Field(
        default_factory=DatabaseSettings,
        description="the legacy database (read through logical replication)",
    )
    target: DatabaseSettings = Field(
        default_factory=DatabaseSettings, description="the new schema's database"
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="the Kafka cluster")
    capture: CaptureSettings = Field(
        default_factory=CaptureSettings, description="reading the source's replication slot"
    )
    apply: ApplySettings = Field(
        default_factory=ApplySettings, description="writing changes into the target"
    )
    backfill: BackfillSettings = Field(
        default_factory=BackfillSettings, description="the initial copy of the mapped tables"
    )
    cutover: CutoverSettings = Field(
        default_factory=CutoverSettings, description="`replicator cutover` and `rollback`"
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="the Prometheus endpoint"
    )
    retry: RetrySettings = Field(
        default_factory=RetrySettings,
        description="how capture and apply retry a temporary error (a server gone, a deadlock)",
    )
    web: WebSettings = Field(
        default_factory=WebSettings, description="`replicator web`: the read-only page"
    )
    # [validation], not [validate]: a field named validate would shadow pydantic's method.
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings, description="continuous validation in `replicator run`"
    )
    drift: DriftSettings = Field(
        default_factory=DriftSettings, description="schema changes during the sync"
    )

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
    except tomllib.TOMLDecodeError as exc:
        # The user's file, not our bug: name it and where (3.11's error has the place only in
        # its text, "… (at line 3, column 8)").
        toml_path = os.environ.get("REPLICATOR_CONFIG", DEFAULT_CONFIG_FILE)
        reason = str(exc)
        place = re.search(r"\s*\(at line (\d+), column (\d+)\)$", reason)
        if place:
            reason = reason[: place.start()]
            where = f"{toml_path}, line {place[1]}, column {place[2]}"
        else:
            where = toml_path
        raise ConfigError(
            f"{where}: not valid TOML: {reason}",
            hint="fix the file there (compare with the template written by `replicator init`)",
        ) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(problems),
            hint="compare with the template written by `replicator init`",
        ) from None


TEMPLATE_HEADER = """\
# replicator.toml — written by `replicator init`. Every key may be overridden from the
# environment: REPLICATOR_<SECTION>__<KEY>, e.g. REPLICATOR_SOURCE__PASSWORD.
# Unknown keys are errors. Keep passwords out of this file in production: use the environment
# or files (password_file, sasl_password_file, ...: a mounted Kubernetes or Docker secret).
"""


def render_template(**values: Any) -> str:
    """The commented configuration template, generated from :class:`Settings`: every key with
    its description and its default, or the value given here as ``<key>`` (top level) or
    ``<section>_<key>`` (``source_port=6543``, ``kafka_bootstrap_servers="host:9092"``)."""
    unused = dict(values)
    top: list[str] = []
    sections: list[str] = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            lines = [*_comment(field.description), f"[{name}]"]
            for key, sub in type(default).model_fields.items():
                value = unused.pop(f"{name}_{key}", getattr(default, key))
                lines += [*_comment(sub.description), f"{key} = {_toml(value)}"]
            sections.append("\n".join(lines))
        else:
            value = unused.pop(name, default)
            top += [*_comment(field.description), f"{name} = {_toml(value)}"]
    if unused:
        raise ValueError(f"not settings: {', '.join(sorted(unused))}")
    return "\n\n".join([TEMPLATE_HEADER + "\n" + "\n".join(top), *sections]) + "\n"


def _comment(text: str | None) -> list[str]:
    import textwrap

    return ["# " + line for line in textwrap.wrap(text or "", 94)]


def _toml(value: Any) -> str:
    """A TOML literal (JSON's string escapes are TOML's)."""
    import json

    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
