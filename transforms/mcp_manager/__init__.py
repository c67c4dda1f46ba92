"""The shipped MCP Manager migration: legacy FastAPI/SQLModel schema ⇄ Drizzle + Better-Auth.

``MAPPING.forward`` maps the legacy tables (:mod:`.legacy`) to the target tables
(``drizzle/schema.ts``); ``MAPPING.reverse`` maps them back for rollback. Configure it with
``mapping = "transforms.mcp_manager:MAPPING"``. Importing this package loads no database code:
the schema helpers live in :mod:`.legacy`, :mod:`.generate` and :mod:`.target_schema`.
"""

from __future__ import annotations

from transforms.api import MappingSet
from transforms.mcp_manager import forward, reverse
from transforms.mcp_manager import sql as _sql  # noqa: F401 - registers the SQL twins
from transforms.mcp_manager.snapshot import snapshot_catalog

MAPPING = MappingSet(
    "mcp_manager",
    forward=forward.build(),
    reverse=reverse.build(),
    expected_target=snapshot_catalog,
    target_schema_hint="apply the target schema: in transforms/mcp_manager/drizzle run "
    "`npm ci` once, then `DATABASE_URL=postgresql://… npx drizzle-kit migrate`",
)

__all__ = ["MAPPING"]
