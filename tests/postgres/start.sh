#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server (Debian's `postgresql` package) for
# the tests: a fresh cluster in a temp dir, owned by the `postgres` user
# (initdb refuses root), listening on 127.0.0.1 at a free port only, with
# trust authentication for the local superuser `postgres` (nothing else can
# reach it). Prints the lines to `eval`:
#   ROSTERD_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#   ROSTERD_TEST_POSTGRES_DIR=DIR   (for tests/postgres/stop.sh)
#   ROSTERD_TEST_POSTGRES_CA=FILE   (the CA of the server's TLS certificate)
# The server also speaks TLS (a certificate for 127.0.0.1 signed by a CA made
# here), and the role `tlsonly` may only connect over TLS.
set -euo pipefail

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "installing PostgreSQL (Debian's postgresql package)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
command -v openssl >/dev/null || { apt-get update -qq >&2 && apt-get install -y -qq openssl >&2; }
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
# A CA and a server certificate for 127.0.0.1 signed by it (a certificate
# that is its own CA is refused as a server's by rustls).
(
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=rosterd test CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.crt 2>/dev/null
    cp server.crt server.key data/
    chmod 600 data/server.key
)
if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir/data"; fi
printf 'ssl = on\n' >>"$dir/data/postgresql.conf"
{ printf 'hostnossl all tlsonly 127.0.0.1/32 reject\n'; cat "$dir/data/pg_hba.conf"; } >"$dir/pg_hba.new"
cat "$dir/pg_hba.new" >"$dir/data/pg_hba.conf"
as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400" start >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
as_postgres "$bin/psql" -h "$dir" -p "$port" -U postgres -q -c "CREATE ROLE tlsonly LOGIN SUPERUSER" >&2
echo "ROSTERD_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
echo "ROSTERD_TEST_POSTGRES_DIR=$dir"
echo "ROSTERD_TEST_POSTGRES_CA=$dir/ca.crt"
