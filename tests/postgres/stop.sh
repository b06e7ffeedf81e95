#!/usr/bin/env bash
# Stops the server tests/postgres/start.sh started and deletes its files.
set -euo pipefail
dir="${1:-${ROSTERD_TEST_POSTGRES_DIR:?pass the directory start.sh printed}}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
else
    "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
fi
rm -rf "$dir"
