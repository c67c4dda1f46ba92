#!/usr/bin/env bash
# The whole test suite: lint, types, then unit, integration and end-to-end tests against real
# PostgreSQL and Kafka (started by the fixtures, stopped at the end).
set -euo pipefail
cd "$(dirname "$0")"
# The version matrix (tests/e2e/test_version_matrix.py) runs PostgreSQL 13 to 18.
REPLICATOR_PG_VERSIONS="${REPLICATOR_PG_VERSIONS-all}" bash deploy/local/bootstrap.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> tsc (the Drizzle schema and the Better-Auth instance)"
(cd transforms/mcp_manager/drizzle && node_modules/.bin/tsc --noEmit)
echo "==> mypy (strict)"
.venv/bin/mypy replicator connectors transforms
echo "==> pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
