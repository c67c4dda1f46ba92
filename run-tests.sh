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
pytest=(.venv/bin/pytest -q -p no:cacheprovider)
if [ $# -gt 0 ] || [ -n "${REPLICATOR_TEST_LEGACY_DSN:-}" ]; then
  exec "${pytest[@]}" "$@"
fi
# The whole suite: the switch's fault matrix (one module, which mostly waits on its writers and
# the switch) runs beside everything else on the same services, started here once; then the
# tests that restart a shared service (marked `exclusive`) run alone.
export REPLICATOR_TEST_NO_DOCKER=1
started=$(.venv/bin/python -m tests.shared_services start)
trap '.venv/bin/python -m tests.shared_services stop $started' EXIT
faults_log=$(mktemp)
"${pytest[@]}" -m faults >"$faults_log" 2>&1 &
faults_pid=$!
rc=0
"${pytest[@]}" -m "not faults and not exclusive" || rc=$?
faults_rc=0
wait "$faults_pid" || faults_rc=$?
echo "==> pytest: the switch's fault matrix (ran beside the tests above)"
cat "$faults_log"
echo "==> pytest: tests that restart a shared service"
exclusive_rc=0
"${pytest[@]}" -m exclusive || exclusive_rc=$?
for code in $rc $faults_rc $exclusive_rc; do
  [ "$code" -eq 0 ] || exit "$code"
done
