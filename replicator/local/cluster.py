"""Local Kafka clusters beside the default broker: one or three KRaft nodes, plaintext or with a
SASL_SSL listener, for the security tests, the fault tests and ``bench.live --tls``.

Each node runs as broker and controller (a static quorum of all nodes: three tolerate the loss
of one). Clients dial the ``CLIENT`` listener; brokers replicate over a plaintext ``INTERNAL``
listener on 127.0.0.1. With ``sasl_ssl`` the client listener is SASL_SSL (SCRAM-SHA-512,
SCRAM-SHA-256 and PLAIN; the SCRAM user is written into the metadata log by Kafka's own storage
formatter, ``--add-scram``), and a second, ``MTLS`` listener asks for a client certificate.
Certificates come from :mod:`replicator.local_tls`. State: ``<state>/kafka-<name>/node<N>``.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replicator.errors import PreconditionError
from replicator.local.lock import exclusive
from replicator.local.services import (
    _free_port,
    _load_registry,
    _pid_alive,
    _port_open,
    _require_java,
    _save_registry,
    kafka_classpath,
    state_dir,
)
from replicator.local.tls import local_pki

USER = "replicator"


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int  # CLIENT listener
    internal_port: int
    controller_port: int
    mtls_port: int
    root: str
    pid: int = 0

    @property
    def running(self) -> bool:
        return bool(self.pid) and _pid_alive(self.pid) and _port_open(self.port)


@dataclass(frozen=True)
class KafkaCluster:
    name: str
    cluster_id: str
    sasl_ssl: bool
    nodes: list[KafkaNode] = field(default_factory=list)
    password: str = ""  # the SCRAM user's; local development only

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def mtls_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.mtls_port}" for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def settings(self) -> dict[str, Any]:
        """The ``[kafka]`` settings that reach this cluster's client listener."""
        out: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.sasl_ssl:
            out.update(
                security_protocol="SASL_SSL",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_username=USER,
                sasl_password=self.password,
                ssl_cafile=str(local_pki().ca),
            )
        return out


def _load(name: str) -> KafkaCluster | None:
    entry = _load_registry().get("kafka_clusters", {}).get(name)
    if entry is None:
        return None
    nodes = [KafkaNode(**n) for n in entry.pop("nodes")]
    return KafkaCluster(**entry, nodes=nodes)


def clusters() -> list[KafkaCluster]:
    """Every cluster the registry names (``services start --tls``, ``--brokers N``)."""
    names = _load_registry().get("kafka_clusters", {})
    return [c for c in (_load(n) for n in sorted(names)) if c is not None]


def _save(cluster: KafkaCluster) -> None:
    reg = _load_registry()
    reg.setdefault("kafka_clusters", {})[cluster.name] = asdict(cluster)
    _save_registry(reg)


def _port(old: int | None) -> int:
    return old if old and not _port_open(old) else _free_port()


def _properties(cluster: KafkaCluster, node: KafkaNode) -> str:
    n = len(cluster.nodes)
    voters = ",".join(f"{x.node_id}@127.0.0.1:{x.controller_port}" for x in cluster.nodes)
    client = "SASL_SSL" if cluster.sasl_ssl else "PLAINTEXT"
    listeners = [
        f"CLIENT://127.0.0.1:{node.port}",
        f"INTERNAL://127.0.0.1:{node.internal_port}",
    ]
    if cluster.sasl_ssl:
        listeners.append(f"MTLS://127.0.0.1:{node.mtls_port}")
    lines = [
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        f"controller.quorum.voters={voters}",
        "listeners=" + ",".join([*listeners, f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
        "advertised.listeners=" + ",".join(listeners),
        "controller.listener.names=CONTROLLER",
        f"listener.security.protocol.map=CLIENT:{client},INTERNAL:PLAINTEXT,"
        "CONTROLLER:PLAINTEXT,MTLS:SSL",
        "inter.broker.listener.name=INTERNAL",
        f"log.dirs={Path(node.root) / 'data'}",
        "num.partitions=1",
        f"offsets.topic.replication.factor={min(3, n)}",
        f"transaction.state.log.replication.factor={min(3, n)}",
        f"transaction.state.log.min.isr={2 if n >= 3 else 1}",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        # A killed node's partitions get new leaders within seconds, not the default 9 s + 18 s.
        "broker.session.timeout.ms=6000",
        "broker.heartbeat.interval.ms=1000",
        "",
    ]
    if cluster.sasl_ssl:
        pki = local_pki()
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{USER}="{cluster.password}";'
        )
        lines += [
            "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
            f"listener.name.client.scram-sha-512.sasl.jaas.config={scram}",
            f"listener.name.client.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.client.plain.sasl.jaas.config={plain}",
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={pki.keystore}",
            f"ssl.keystore.password={pki.store_password}",
            f"ssl.key.password={pki.store_password}",
            "ssl.truststore.type=PKCS12",
            f"ssl.truststore.location={pki.truststore}",
            f"ssl.truststore.password={pki.store_password}",
            "listener.name.mtls.ssl.client.auth=required",
            "",
        ]
    return "\n".join(lines)


def _format(cluster: KafkaCluster, node: KafkaNode, cp: str) -> None:
    props = Path(node.root) / "server.properties"
    cmd = ["java", "-cp", cp, "kafka.tools.StorageTool", "format"]
    cmd += [f"--cluster-id={cluster.cluster_id}", "-c", str(props)]
    if cluster.sasl_ssl:
        for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
            cmd += ["--add-scram", f"{mech}=[name={USER},password={cluster.password}]"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PreconditionError(f"formatting Kafka storage failed: {done.stderr[-800:]}")


def _launch(node: KafkaNode, cp: str) -> int:
    root = Path(node.root)
    log4j = root / "log4j2.properties"
    log4j.write_text(
        "rootLogger.level=INFO\nrootLogger.appenderRef.f.ref=F\nappender.f.type=File\n"
        f"appender.f.name=F\nappender.f.fileName={root / 'server.log'}\n"
        "appender.f.layout.type=PatternLayout\nappender.f.layout.pattern=[%d] %p %m (%c)%n\n"
    )
    log = root / "server.log"
    if log.exists():
        log.rename(log.with_suffix(".log.prev"))
    stdout = open(root / "stdout.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [
            "java",
            "-Xms128m",
            "-Xmx512m",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            cp,
            "kafka.Kafka",
            str(root / "server.properties"),
        ],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stdout.close()
    return proc.pid


def _wait_started(node: KafkaNode, deadline: float) -> None:
    log = Path(node.root) / "server.log"
    while time.monotonic() < deadline:
        if not _pid_alive(node.pid):
            raise PreconditionError(
                f"Kafka node {node.node_id} exited while starting", hint=f"see {log}"
            )
        try:
            if "Kafka Server started" in log.read_text(errors="replace") and _port_open(node.port):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.3)
    raise PreconditionError(f"Kafka node {node.node_id} did not start in time", hint=f"see {log}")


@exclusive(state_dir)
def start_cluster(
    name: str, *, brokers: int = 1, sasl_ssl: bool = False, timeout: float = 180.0
) -> KafkaCluster:
    """Create (first time) and start every node of the named cluster; return its address."""
    old = _load(name)
    if old is not None and (len(old.nodes) != brokers or old.sasl_ssl != sasl_ssl):
        destroy_cluster(name)
        old = None
    if old is not None and all(n.running for n in old.nodes):
        return old
    _require_java()
    cp = f"{kafka_classpath()}/*"
    base = state_dir() / f"kafka-{name}"
    nodes = []
    for i in range(1, brokers + 1):
        prev = old.node(i) if old is not None else None
        if prev is not None and prev.running:
            nodes.append(prev)
            continue
        nodes.append(
            KafkaNode(
                node_id=i,
                port=_port(prev.port if prev else None),
                internal_port=_port(prev.internal_port if prev else None),
                controller_port=_port(prev.controller_port if prev else None),
                mtls_port=_port(prev.mtls_port if prev else None),
                root=str(base / f"node{i}"),
            )
        )
    cluster = KafkaCluster(
        name=name,
        cluster_id=old.cluster_id
        if old
        else base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        sasl_ssl=sasl_ssl,
        nodes=nodes,
        password=old.password if old else secrets.token_urlsafe(18),
    )
    started = []
    for node in cluster.nodes:
        if node.pid:
            started.append(node)
            continue
        root = Path(node.root)
        root.mkdir(parents=True, exist_ok=True)
        (root / "server.properties").write_text(_properties(cluster, node))
        if not (root / "data" / "meta.properties").exists():
            _format(cluster, node, cp)
        started.append(KafkaNode(**{**asdict(node), "pid": _launch(node, cp)}))
    cluster = KafkaCluster(
        name=cluster.name,
        cluster_id=cluster.cluster_id,
        sasl_ssl=sasl_ssl,
        nodes=started,
        password=cluster.password,
    )
    _save(cluster)
    deadline = time.monotonic() + timeout
    for node in cluster.nodes:
        _wait_started(node, deadline)
    _wait_registered(cluster, deadline)
    return cluster


def _wait_registered(cluster: KafkaCluster, deadline: float) -> None:
    """Until every broker is registered and unfenced: topics created before would get fewer
    replicas than the cluster has."""
    from connectors import kafka_io
    from replicator.config import KafkaSettings
    from replicator.errors import ReplicatorError

    kafka = KafkaSettings(**cluster.settings())
    seen = 0
    while time.monotonic() < deadline:
        try:
            client = kafka_io.admin(kafka.bootstrap_servers, **kafka.client_options())
            try:
                with kafka_io.translated("cluster description failed"):
                    brokers = client.describe_cluster().get("brokers", [])
            finally:
                client.close()
            seen = len([b for b in brokers if not b.get("is_fenced")])
            if seen >= len(cluster.nodes):
                return
        except ReplicatorError:
            pass
        time.sleep(0.5)
    raise PreconditionError(
        f"Kafka cluster {cluster.name!r}: {seen} of {len(cluster.nodes)} brokers registered in time"
    )


def kill_node(name: str, node_id: int) -> None:
    """kill -9 one node (its whole process group)."""
    cluster = _load(name)
    if cluster is None:
        return
    pid = cluster.node(node_id).pid
    if pid and _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.05)


@exclusive(state_dir)
def stop_cluster(name: str, timeout: float = 30.0) -> None:
    cluster = _load(name)
    if cluster is None:
        return
    for node in cluster.nodes:
        if node.pid and _pid_alive(node.pid):
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in cluster.nodes:
        while node.pid and _pid_alive(node.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if node.pid and _pid_alive(node.pid):
            os.killpg(node.pid, signal.SIGKILL)


@exclusive(state_dir)
def destroy_cluster(name: str) -> None:
    stop_cluster(name)
    reg = _load_registry()
    reg.get("kafka_clusters", {}).pop(name, None)
    _save_registry(reg)
    shutil.rmtree(state_dir() / f"kafka-{name}", ignore_errors=True)
