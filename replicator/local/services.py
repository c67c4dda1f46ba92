"""Local PostgreSQL clusters (15 by default, 13 to 18 on request) and a Kafka 4 broker.

The same code serves the README's demo, the test fixtures and the benchmarks, so what a newcomer
runs is what CI runs. State (data, logs, ports, pids) lives under a state directory inside the
checkout (``.state/``, git-ignored). Starting what already runs is harmless and returns its
address; ports are picked free on first start and kept.

PostgreSQL 15 comes from Debian's packages (``postgresql-15``), other majors from the builds
:mod:`replicator.local.pgversions` fetches; initdb and pg_ctl refuse to run as
root, so as root they run through ``runuser -u postgres``. Kafka runs in KRaft mode from the
Maven Central jars resolved by ``deploy/kafka/pom.xml``, with Java 17.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from replicator.errors import PreconditionError
from replicator.local.lock import exclusive
from replicator.local.paths import REPO_ROOT as REPO_ROOT
from replicator.local.paths import pg_root as _pg_root
from replicator.local.paths import state_dir as state_dir
from replicator.local.pgversions import DEFAULT_VERSION, bin_dir, require

PG_PASSWORD = "local-dev-secret"  # local development clusters only; bound to 127.0.0.1
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _registry_path() -> Path:
    return state_dir() / "services.json"


def _load_registry() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(_registry_path().read_text())
        return data
    except (FileNotFoundError, ValueError):
        return {}


def _save_registry(reg: dict[str, Any]) -> None:
    _registry_path().parent.mkdir(parents=True, exist_ok=True)
    tmp = _registry_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(reg, indent=2))
    tmp.replace(_registry_path())


# -- PostgreSQL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgCluster:
    name: str
    port: int
    data_dir: str
    log_file: str
    wal_level: str
    user: str = "postgres"
    password: str = PG_PASSWORD
    host: str = "127.0.0.1"
    version: int = DEFAULT_VERSION  # the server's major

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={dbname}"
        )

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PreconditionError("running as root needs `runuser` to start PostgreSQL")
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _pg_ctl(
    data: Path, *args: str, check: bool = True, version: int = DEFAULT_VERSION
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_postgres([str(bin_dir(version) / "pg_ctl"), "-D", str(data), *args]),
        capture_output=True,
        text=True,
        check=check,
    )


def pg_running(cluster: PgCluster) -> bool:
    data = Path(cluster.data_dir)
    if not data.exists():
        return False
    return _pg_ctl(data, "status", check=False, version=cluster.version).returncode == 0


@exclusive(state_dir)
def start_postgres(
    name: str = "legacy", *, wal_level: str = "logical", version: int = DEFAULT_VERSION
) -> PgCluster:
    """Create (first time) and start the named cluster of a major; return its address."""
    pg_bin = require(version)
    reg = _load_registry()
    entry = reg.get("postgres", {}).get(name)
    same = entry is not None and entry.get("version", DEFAULT_VERSION) == version
    if entry is not None and not same:
        raise PreconditionError(
            f"local cluster {name!r} is PostgreSQL {entry.get('version', DEFAULT_VERSION)}, "
            f"not {version}",
            hint=f"replicator services destroy {name} first, or give this one another name",
        )
    if entry is not None and entry.get("wal_level") == wal_level:
        cluster = PgCluster(**entry)
        if pg_running(cluster):
            return cluster
    root = _pg_root(name)
    data = root / "data"
    port = entry["port"] if entry and not _port_open(entry["port"]) else _free_port()
    cluster = PgCluster(
        name=name,
        port=port,
        data_dir=str(data),
        log_file=str(root / "postgres.log"),
        wal_level=wal_level,
        version=version,
    )
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        pwfile = root / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            capture_output=True,
            text=True,
            check=True,
        )
        pwfile.unlink()
        with open(data / "pg_hba.conf", "a") as hba:
            # Logical replication connections match the "replication" keyword, not a dbname.
            hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    options = " ".join(
        [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={root}",
            f"-c wal_level={wal_level}",
            "-c max_wal_senders=40",
            "-c max_replication_slots=40",
            "-c max_connections=300",
            "-c shared_buffers=256MB",
            # Local clusters only: a crash of the postgres process keeps data in the OS cache.
            "-c fsync=off",
            "-c full_page_writes=off",
            "-c wal_sender_timeout=60s",
        ]
    )
    result = _pg_ctl(
        data,
        "-l",
        cluster.log_file,
        "-o",
        options,
        "-w",
        "-t",
        "60",
        "start",
        check=False,
        version=version,
    )
    if result.returncode != 0:
        raise PreconditionError(
            f"PostgreSQL cluster {name!r} did not start: {result.stderr.strip() or result.stdout.strip()}",
            hint=f"see the log at {cluster.log_file}",
        )
    reg.setdefault("postgres", {})[name] = asdict(cluster)
    _save_registry(reg)
    return cluster


@exclusive(state_dir)
def stop_postgres(name: str, *, mode: str = "fast") -> None:
    entry = _load_registry().get("postgres", {}).get(name)
    if entry is None:
        return
    data = Path(entry["data_dir"])
    if data.exists():
        version = entry.get("version", DEFAULT_VERSION)
        _pg_ctl(data, "stop", "-m", mode, "-w", check=False, version=version)


@exclusive(state_dir)
def restart_postgres(name: str, *, mode: str = "fast") -> PgCluster:
    entry = _load_registry()["postgres"][name]
    stop_postgres(name, mode=mode)
    return start_postgres(
        name, wal_level=entry["wal_level"], version=entry.get("version", DEFAULT_VERSION)
    )


@exclusive(state_dir)
def destroy_postgres(name: str) -> None:
    stop_postgres(name, mode="immediate")
    reg = _load_registry()
    entry = reg.get("postgres", {}).pop(name, None)
    if entry is not None:
        shutil.rmtree(Path(entry["data_dir"]).parent, ignore_errors=True)
        _save_registry(reg)


# -- Kafka -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaBroker:
    port: int
    controller_port: int
    pid: int
    log_dir: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _require_java() -> None:
    java = shutil.which("java")
    if java is None:
        raise PreconditionError(
            "Java is not installed; Kafka 4 needs Java 17 or later",
            hint="apt-get install -y openjdk-17-jre-headless",
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    try:
        major = int(out.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        return
    if major < 17:
        raise PreconditionError(
            f"Java {major} found; Kafka 4 needs Java 17 or later",
            hint="apt-get install -y openjdk-17-jre-headless",
        )


def kafka_classpath() -> Path:
    """Resolve Kafka's jars from Maven Central once (cached in ~/.m2 and the state dir)."""
    libs = state_dir() / "kafka" / "libs"
    marker = libs / ".complete"
    pom_digest = hashlib.sha1(KAFKA_POM.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text() == pom_digest:
        return libs
    if shutil.which("mvn") is None:
        raise PreconditionError(
            "Maven is not installed; it fetches Kafka's jars from Maven Central",
            hint="apt-get install -y maven",
        )
    shutil.rmtree(libs, ignore_errors=True)
    libs.mkdir(parents=True)
    result = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise PreconditionError(
            "Maven could not resolve Kafka's jars: " + (result.stdout + result.stderr)[-800:],
            hint="check that Maven Central is reachable (`mvn -B dependency:get`)",
        )
    marker.write_text(pom_digest)
    return libs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.split(") ", 1)[1][0] != "Z"


def kafka_running(broker: KafkaBroker) -> bool:
    return _pid_alive(broker.pid) and _port_open(broker.port)


@exclusive(state_dir)
def start_kafka(*, timeout: float = 90.0) -> KafkaBroker:
    reg = _load_registry()
    entry = reg.get("kafka")
    if entry is not None:
        broker = KafkaBroker(**entry)
        if kafka_running(broker):
            return broker
    _require_java()
    libs = kafka_classpath()
    root = state_dir() / "kafka"
    data = root / "data"
    port = entry["port"] if entry and not _port_open(entry["port"]) else _free_port()
    cport = (
        entry["controller_port"]
        if entry and not _port_open(entry["controller_port"])
        else _free_port()
    )
    props = root / "server.properties"
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    log4j = root / "log4j2.properties"
    log4j.write_text(
        "\n".join(
            [
                "rootLogger.level=INFO",
                "rootLogger.appenderRef.f.ref=F",
                "appender.f.type=File",
                "appender.f.name=F",
                f"appender.f.fileName={root / 'server.log'}",
                "appender.f.layout.type=PatternLayout",
                "appender.f.layout.pattern=[%d] %p %m (%c)%n",
                "",
            ]
        )
    )
    cp = f"{libs}/*"
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(
            [
                "java",
                "-cp",
                cp,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                # Joined with "=": an id starting with "-" (1 in 64) would read as an option.
                f"--cluster-id={cluster_id}",
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            raise PreconditionError(f"formatting Kafka storage failed: {fmt.stderr[-800:]}")
    stdout = open(root / "stdout.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [
            "java",
            "-Xms256m",
            "-Xmx768m",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            cp,
            "kafka.Kafka",
            str(props),
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stdout.close()
    broker = KafkaBroker(port=port, controller_port=cport, pid=proc.pid, log_dir=str(root))
    reg["kafka"] = asdict(broker)
    _save_registry(reg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            others = _other_brokers(props, proc.pid)
            if others:
                raise PreconditionError(
                    f"Kafka did not start: another broker (pid {', '.join(map(str, others))})"
                    f" holds its data directory {data}, and the registry does not name it",
                    hint=f"stop it (kill {' '.join(map(str, others))}), then start again",
                )
            raise PreconditionError(
                f"Kafka exited with code {proc.returncode} while starting",
                hint=f"see {root / 'server.log'} and {root / 'stdout.log'}",
            )
        if _port_open(port) and _broker_ready(broker):
            return broker
        time.sleep(0.3)
    raise PreconditionError(f"Kafka did not start within {timeout:.0f}s", hint=f"see {root}")


def _other_brokers(props: Path, pid: int) -> list[int]:
    """Other running brokers started with this ``server.properties`` (one left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args and str(props).encode() in args:
            found.append(int(entry.name))
    return sorted(found)


def _broker_ready(broker: KafkaBroker) -> bool:
    log = Path(broker.log_dir) / "server.log"
    try:
        return "Kafka Server started" in log.read_text(errors="replace")[-200_000:]
    except FileNotFoundError:
        return False


@exclusive(state_dir)
def stop_kafka(*, kill: bool = False, timeout: float = 30.0) -> None:
    entry = _load_registry().get("kafka")
    if entry is None:
        return
    pid = entry["pid"]
    if not _pid_alive(pid):
        return
    # The broker runs in its own session: signal the whole group.
    try:
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    # Truncate the old log so readiness of the next start is judged on fresh lines.
    log = Path(entry["log_dir"]) / "server.log"
    if log.exists():
        log.rename(log.with_suffix(".log.prev"))


def status() -> dict[str, Any]:
    reg = _load_registry()
    out: dict[str, Any] = {"state_dir": str(state_dir()), "postgres": {}, "kafka": None}
    for name, entry in reg.get("postgres", {}).items():
        cluster = PgCluster(**entry)
        out["postgres"][name] = {
            "port": cluster.port,
            "running": pg_running(cluster),
            "wal_level": cluster.wal_level,
            "version": cluster.version,
            "log": cluster.log_file,
            "dsn": cluster.dsn().replace(f"password={cluster.password}", "password=***"),
        }
    if "kafka" in reg:
        broker = KafkaBroker(**reg["kafka"])
        out["kafka"] = {
            "bootstrap": broker.bootstrap,
            "running": kafka_running(broker),
            "log": str(Path(broker.log_dir) / "server.log"),
        }
    return out


def stop_all() -> None:
    stop_kafka()
    for name in list(_load_registry().get("postgres", {})):
        stop_postgres(name)
