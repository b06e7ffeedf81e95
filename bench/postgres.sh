#!/usr/bin/env bash
# The PostgreSQL rows of BENCHMARKS.md beside the SQLite ones: get_user,
# refresh, update and list_1k on one rosterd node backed by a throwaway
# PostgreSQL 15 on this machine (Debian's package, default settings:
# tests/postgres/start.sh), and the same scenarios on the SQLite file, round
# by round. The two databases hold the same 1,000 seeded users: the SQLite
# file is seeded, then `rosterd copy-db` moves it onto PostgreSQL.
#
#   bash bench/postgres.sh [--rounds N] [--duration SECONDS] [--connections N]
#
# Prints a table of requests per second (median, min–max of the rounds).
# Everything runs on 127.0.0.1; every load run is bounded by --duration.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

ROUNDS=3
DURATION=10
CONNECTIONS=16
THREADS=1
TIMEOUT=30s
USERS=1000
PASSWORD='Bench-Pass-7fq2-Zx!'
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "postgres.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
prepare cargo python3
scratch bench-postgres
RESULTS=$WORK/results
mkdir -p "$RESULTS"

PG_ENV=$(bash "$ROOT/tests/postgres/start.sh")
PG_URL=$(echo "$PG_ENV" | sed -n 's/^ROSTERD_TEST_POSTGRES=//p')
PG_DIR=$(echo "$PG_ENV" | sed -n 's/^ROSTERD_TEST_POSTGRES_DIR=//p')
stop_pg() { bash "$ROOT/tests/postgres/stop.sh" "$PG_DIR"; }
trap 'rc=$?; stop_pg; (exit $rc); cleanup' EXIT

CONFIG=$WORK/bench.toml
: >"$CONFIG"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

log "seeding $USERS users, then copying them onto PostgreSQL"
"$EX/seed" "$WORK/main.sqlite3" "$USERS" "$PASSWORD"
python3 - "$PG_URL" <<'EOF'
import subprocess, sys
# The bench database, made by the superuser of the throwaway server.
subprocess.run(["psql", sys.argv[1], "-q", "-c", "CREATE DATABASE bench"], check=True,
               stdout=subprocess.DEVNULL)
EOF
BENCH_URL="${PG_URL%/*}/bench"
ROSTERD_SECRET=$SECRET "$BIN" --config "$CONFIG" --db "$WORK/main.sqlite3" \
    copy-db --to "$BENCH_URL" >&2

# start NAME ARGS... -> PORT_<NAME>
start() {
    local name=$1 pid port
    shift
    ROSTERD_SECRET=$SECRET ROSTERD_RATE_LIMIT_ENABLED=false \
        "$BIN" --config "$CONFIG" "$@" serve --bind 127.0.0.1:0 \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    pid=$!
    PIDS+=("$pid")
    port=$(helper wait-line "$WORK/$name.out" 'serving on http://127\.0\.0\.1:(\d+)' 30)
    helper wait-health "$port" 30
    printf -v "PORT_$name" '%s' "$port"
    log "rosterd $name: pid $pid, port $port"
}
start sqlite --db "$WORK/main.sqlite3"
start postgres --database-url "$BENCH_URL"

run_wrk() {
    local out=$1 port=$2 script=$3
    shift 3
    env BENCH_LUA_DIR="$ROOT/bench/lua" "$@" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout "$TIMEOUT" \
        -s "$ROOT/bench/lua/$script" "http://127.0.0.1:$port" >"$out" 2>&1 ||
        { cat "$out" >&2; return 1; }
    grep -q '^BENCHJSON ' "$out" || { cat "$out" >&2; return 1; }
}

for backend in sqlite postgres; do
    port_var=PORT_$backend
    read -r _ refresh < <(helper login "${!port_var}" user1 "$PASSWORD")
    printf -v "REFRESH_$backend" '%s' "$refresh"
    printf -v "OWNERS_$backend" '%s' "$(helper owners "${!port_var}" "$PASSWORD" 4)"
done

for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for backend in sqlite postgres; do
        port_var=PORT_$backend refresh_var=REFRESH_$backend owners_var=OWNERS_$backend
        port=${!port_var}
        access=$(helper access "$port" "${!refresh_var}")
        run_wrk "$RESULTS/$backend.get_user.$round" "$port" get_user.lua \
            BENCH_USERS="$USERS" BENCH_ACCESS="$access"
        run_wrk "$RESULTS/$backend.refresh.$round" "$port" refresh.lua \
            BENCH_REFRESH="${!refresh_var}"
        run_wrk "$RESULTS/$backend.update.$round" "$port" update.lua \
            BENCH_OWNERS="$(helper owners-access "$port" "${!owners_var}")"
        access=$(helper access "$port" "${!refresh_var}")
        run_wrk "$RESULTS/$backend.list_1k.$round" "$port" list_1k.lua BENCH_ACCESS="$access"
        log "  $backend done"
    done
done

python3 - "$RESULTS" <<'EOF'
import glob, json, os, statistics, sys
results = sys.argv[1]
def figures(backend, scenario):
    out = []
    for path in sorted(glob.glob(os.path.join(results, f"{backend}.{scenario}.*"))):
        for line in open(path):
            if line.startswith("BENCHJSON "):
                r = json.loads(line[10:])
                bad = r["errors"]["status"] + r["errors"]["timeout"]
                out.append((r["rps"], r["latency_ms"]["p99"], bad))
    return out
print("| scenario | SQLite req/s median (min–max) | PostgreSQL req/s median (min–max) | PostgreSQL p99 | errors |")
print("|---|---|---|---|---|")
for scenario in ["get_user", "refresh", "update", "list_1k"]:
    cells = []
    for backend in ["sqlite", "postgres"]:
        f = figures(backend, scenario)
        rps = [x[0] for x in f]
        cells.append(f"{statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f})")
    pg = figures("postgres", scenario)
    errors = sum(x[2] for x in pg) + sum(x[2] for x in figures("sqlite", scenario))
    print(f"| {scenario} | {cells[0]} | {cells[1]} | {max(x[1] for x in pg):.1f} ms | {errors} |")
EOF
