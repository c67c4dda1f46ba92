"""The Drizzle snapshot: the target schema as drizzle-kit last generated it (JSON only, no I/O
beyond reading the committed files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replicator.errors import SchemaError
from transforms.api import Catalog, ColumnSpec

DRIZZLE_DIR = Path(__file__).resolve().parent / "drizzle"
MIGRATIONS_DIR = DRIZZLE_DIR / "migrations"


def load_drizzle_snapshot() -> dict[str, Any]:
    """The latest Drizzle snapshot: ``tables["public.user"]["columns"]["email"]`` etc."""
    journal_path = MIGRATIONS_DIR / "meta" / "_journal.json"
    try:
        journal = json.loads(journal_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(
            f"no Drizzle journal at {journal_path}",
            hint=f"run `npx drizzle-kit generate` in {DRIZZLE_DIR}",
        ) from None
    entries = journal.get("entries") or []
    if not entries:
        raise SchemaError(f"the Drizzle journal {journal_path} lists no migration")
    latest = max(entries, key=lambda e: int(e["idx"]))
    path = MIGRATIONS_DIR / "meta" / f"{int(latest['idx']):04d}_snapshot.json"
    snapshot: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return snapshot


# Drizzle writes serial types by their shorthand; the catalog reports the underlying type.
_SERIAL = {"serial": "integer", "bigserial": "bigint", "smallserial": "smallint"}


def snapshot_catalog() -> Catalog:
    """The snapshot as a :data:`Catalog`, types spelled as ``format_type`` spells them."""
    out: dict[str, dict[str, ColumnSpec]] = {}
    for name, table in load_drizzle_snapshot()["tables"].items():
        cols: dict[str, ColumnSpec] = {}
        for col in table["columns"].values():
            typ = _SERIAL.get(col["type"], col["type"])
            default = "default" in col or col["type"] in _SERIAL
            cols[col["name"]] = ColumnSpec(typ, bool(col.get("notNull")), default)
        out[name] = cols
    return out
