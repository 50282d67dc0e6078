#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1:54329 (user/password/db: privdl).
# Exit non-zero when no server can be had; the postgres tests then skip.
set -u
PORT=54329
DATA=${PRIVDL_PG_DATA:-/tmp/privdl-ci-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || exit 1
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] || exit 1
fi
id postgres >/dev/null 2>&1 || exit 1
if ! su postgres -c "$bin/pg_ctl -D $DATA status" >/dev/null 2>&1; then
  rm -rf "$DATA"; mkdir -p "$DATA"; chown postgres "$DATA"
  su postgres -c "$bin/initdb -D $DATA -U postgres --auth=trust" >/dev/null || exit 1
  su postgres -c "$bin/pg_ctl -D $DATA -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1' -l $DATA/log -w start" >/dev/null || exit 1
fi
psql="psql -h 127.0.0.1 -p $PORT -U postgres -tAc"
$psql "SELECT 1 FROM pg_roles WHERE rolname='privdl'" | grep -q 1 || $psql "CREATE ROLE privdl LOGIN PASSWORD 'privdl'" >/dev/null
$psql "SELECT 1 FROM pg_database WHERE datname='privdl'" | grep -q 1 || $psql "CREATE DATABASE privdl OWNER privdl" >/dev/null
echo "postgres ready on 127.0.0.1:$PORT"
