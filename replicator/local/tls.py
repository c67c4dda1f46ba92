"""Certificates for the local services' TLS, made at first use with ``openssl`` and ``keytool``.

One local certificate authority signs a server certificate valid for ``localhost`` and
``127.0.0.1`` (so verify-full holds whichever a client dials), used by the TLS-enabled Kafka
brokers (as a PKCS12 keystore) and by PostgreSQL clusters switched to ``ssl=on``, and a client
certificate for mutual TLS. Files live under ``<state>/tls`` and are kept between runs.
Local development and tests only: the CA's key sits beside its certificate.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from replicator.errors import PreconditionError
from replicator.local.services import PgCluster, state_dir

_DAYS = "825"


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.root / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def keystore(self) -> Path:
        return self.root / "broker.p12"

    @property
    def truststore(self) -> Path:
        return self.root / "truststore.p12"

    @property
    def store_password(self) -> str:
        return (self.root / "store.password").read_text().strip()


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise PreconditionError(
            f"{cmd[0]} is not installed; the local TLS services need it",
            hint="apt-get install -y openssl openjdk-17-jre-headless",
        )
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PreconditionError(f"{cmd[0]} failed: {(done.stdout + done.stderr)[-600:]}")


def make_ca(root: Path, name: str = "replicator local CA") -> tuple[Path, Path]:
    """A self-signed certificate authority (certificate, key) in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", _DAYS, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        root,
    )  # fmt: skip
    return root / "ca.crt", root / "ca.key"


def _signed(root: Path, stem: str, cn: str, ext: str) -> None:
    (root / f"{stem}.ext").write_text(ext)
    _run(
        [
            "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key",
            "-out", f"{stem}.csr", "-subj", f"/CN={cn}",
        ],
        root,
    )  # fmt: skip
    _run(
        [
            "openssl", "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{stem}.crt", "-days", _DAYS, "-extfile", f"{stem}.ext",
        ],
        root,
    )  # fmt: skip


def local_pki() -> Pki:
    """The local CA and its certificates, made on first use."""
    pki = Pki(state_dir() / "tls")
    done = pki.root / ".complete"
    if done.exists():
        return pki
    shutil.rmtree(pki.root, ignore_errors=True)
    make_ca(pki.root)
    _signed(
        pki.root,
        "server",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    _signed(
        pki.root,
        "client",
        "replicator",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    password = secrets.token_urlsafe(16)
    (pki.root / "store.password").write_text(password + "\n")
    _run(
        [
            "openssl", "pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key",
            "-certfile", "ca.crt", "-name", "broker", "-out", "broker.p12",
            "-passout", f"pass:{password}",
        ],
        pki.root,
    )  # fmt: skip
    # The brokers' truststore (clients' certificates for mutual TLS), with Java's own tool.
    _run(
        [
            "keytool", "-importcert", "-noprompt", "-alias", "local-ca", "-file", "ca.crt",
            "-keystore", "truststore.p12", "-storetype", "PKCS12", "-storepass", password,
        ],
        pki.root,
    )  # fmt: skip
    for key in pki.root.glob("*.key"):
        key.chmod(0o600)
    done.write_text("ok\n")
    return pki


def enable_postgres_tls(cluster: PgCluster, timeout: float = 20.0) -> Pki:
    """Switch a running local cluster to ``ssl=on`` with the local CA's server certificate
    (a reload, no restart; kept across restarts by ALTER SYSTEM). Plain connections still work:
    clients choose with sslmode."""
    import psycopg

    pki = local_pki()
    data = Path(cluster.data_dir)
    for src, name in ((pki.server_cert, "server.crt"), (pki.server_key, "server.key")):
        dst = data / name
        shutil.copyfile(src, dst)
        dst.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(dst, "postgres", "postgres")
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET ssl = on")
        c.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while True:
        try:
            dsn = f"{cluster.dsn()} sslmode=verify-full sslrootcert={pki.ca}"
            psycopg.connect(dsn, connect_timeout=5).close()
            return pki
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PreconditionError(
                    f"PostgreSQL cluster {cluster.name!r} did not turn TLS on: {exc}",
                    hint=f"see {cluster.log_file}",
                ) from None
            time.sleep(0.2)
