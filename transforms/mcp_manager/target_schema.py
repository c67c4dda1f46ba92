"""The target schema, as Drizzle Kit defines and migrates it.

The TypeScript schema (``drizzle/schema.ts``) is the source of truth; its generated migrations
(``drizzle/migrations``) are committed. :func:`apply_target_schema` runs ``drizzle-kit migrate``
exactly as the TypeScript app's deployment would, so tests run against the real thing rather
than a Python copy of it. Needs Node.js and ``npm ci`` run once in the ``drizzle`` folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import psycopg

from replicator.errors import ConnectionFailed, PreconditionError, SchemaError
from transforms.mcp_manager.snapshot import DRIZZLE_DIR, MIGRATIONS_DIR, load_drizzle_snapshot

__all__ = ["DRIZZLE_DIR", "MIGRATIONS_DIR", "apply_target_schema", "load_drizzle_snapshot"]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _require_tooling() -> str:
    npx = shutil.which("npx")
    if npx is None or shutil.which("node") is None:
        raise PreconditionError(
            "applying the target schema needs Node.js (node and npx are not on PATH)",
            hint=f"install Node.js 20+, then run `npm ci` in {DRIZZLE_DIR}",
        )
    if not (DRIZZLE_DIR / "node_modules" / ".bin" / "drizzle-kit").exists():
        raise PreconditionError(
            f"drizzle-kit is not installed in {DRIZZLE_DIR}",
            hint=f"run `npm ci` in {DRIZZLE_DIR}",
        )
    return npx


def apply_target_schema(dsn: str, *, timeout: float = 300.0) -> None:
    """Apply the committed Drizzle migrations to the database at ``dsn`` (idempotent:
    drizzle-kit records what it applied in ``drizzle.__drizzle_migrations``)."""
    npx = _require_tooling()
    # drizzle-kit swallows connection errors (it exits 1 printing nothing useful): check first.
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.Error as e:
        raise ConnectionFailed(f"cannot connect to the target database: {e}") from e
    env = {**os.environ, "DATABASE_URL": dsn}
    try:
        # --no-install: never fetch a drizzle-kit other than the pinned one.
        done = subprocess.run(
            [npx, "--no-install", "drizzle-kit", "migrate"],
            cwd=DRIZZLE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise SchemaError(f"drizzle-kit migrate did not finish within {timeout:.0f} s") from e
    if done.returncode != 0:
        text = _ANSI.sub("", f"{done.stdout}\n{done.stderr}")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("npm warn")]
        out = "\n".join(lines)[-2000:]
        raise SchemaError(
            f"drizzle-kit migrate failed (exit {done.returncode}): {out}",
            hint="check DATABASE_URL and that the role may create tables and types",
        )
