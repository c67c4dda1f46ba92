#!/usr/bin/env bash
# The main job, as a demo on local PostgreSQL and Kafka: backfill → live sync → cutover.
set -euo pipefail
cd "$(dirname "$0")"
bash deploy/local/bootstrap.sh
exec .venv/bin/replicator demo "$@"
