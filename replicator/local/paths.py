"""Where the local services keep their files (the state directory, git-ignored)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    return Path(os.environ.get("REPLICATOR_STATE_DIR", REPO_ROOT / ".state")).resolve()


def pg_root(name: str) -> Path:
    """Where a cluster's files live: inside the checkout when the postgres user can reach it.

    Running as root, a checkout under a private home directory is not traversable by the
    ``postgres`` user; the cluster then lives in /var/tmp under a name derived from the checkout.
    """
    preferred = state_dir() / "pg" / name
    state_dir().mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return preferred
    probe = subprocess.run(
        ["runuser", "-u", "postgres", "--", "test", "-x", str(state_dir())],
        capture_output=True,
    )
    if probe.returncode == 0:
        return preferred
    digest = hashlib.sha1(str(state_dir()).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"replicator-{digest}" / name
