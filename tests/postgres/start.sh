#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server (Debian's `postgresql` package) for
# the tests: a fresh cluster in a temp dir, owned by the `postgres` user
# (initdb refuses root), listening on 127.0.0.1 at a free port only, with
# trust authentication for the local superuser `postgres` (nothing else can
# reach it). Prints the lines to `eval`:
#   ROSTERD_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#   ROSTERD_TEST_POSTGRES_DIR=DIR   (for tests/postgres/stop.sh)
set -euo pipefail

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "installing PostgreSQL (Debian's postgresql package)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
dir="$(mktemp -d /tmp/rosterd-pg.XXXXXX)"
chmod 755 "$dir"
as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
echo "ROSTERD_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
echo "ROSTERD_TEST_POSTGRES_DIR=$dir"
