#!/usr/bin/env bash
# Start a throwaway PostgreSQL on loopback for the store's PostgreSQL tests and print its URL.
# Prints nothing (and the tests skip, saying so) when PostgreSQL can't be installed or started.
# Usage: URL=$(bash scripts/ci_postgres.sh DIR)   stop with: bash scripts/ci_postgres.sh --stop DIR
set -u
if [ "${1:-}" = "--stop" ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$PGBIN" ] && [ -d "$2/data" ] && su postgres -c "$PGBIN/pg_ctl -D $2/data stop -m fast" >/dev/null 2>&1
  exit 0
fi
DIR="$1"
PORT="${PEXIR_CI_PG_PORT:-55432}"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/postgres" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null 2>&1 || { echo "PostgreSQL not available: its store tests will skip" >&2; exit 0; }
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
id postgres >/dev/null 2>&1 || { echo "no postgres user: PostgreSQL store tests will skip" >&2; exit 0; }
mkdir -p "$DIR" && chown postgres "$DIR" && chmod 700 "$DIR"
if su postgres -c "$PGBIN/initdb -D $DIR/data -A trust -U postgres" >/dev/null 2>&1 \
  && su postgres -c "$PGBIN/pg_ctl -D $DIR/data -l $DIR/log -w -o \"-p $PORT -k $DIR -c listen_addresses=127.0.0.1\" start" >/dev/null 2>&1 \
  && psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE pexir_test" >/dev/null 2>&1; then
  echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/pexir_test"
else
  echo "PostgreSQL did not start: its store tests will skip" >&2
fi
