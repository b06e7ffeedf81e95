#!/usr/bin/env bash
# rosterd's benchmark harness (README, "Benchmarks"); the targets each
# scenario is held to are in bench/helper.py (TARGETS, ABSOLUTE_TARGETS).
#
# Builds the release binary and the example ceilings, starts everything on
# 127.0.0.1 with fresh temporary databases, seeds them, runs every scenario
# and its ceiling with wrk (bench/lua/*.lua), interleaved round by round,
# stops everything, prints one markdown table and writes the same figures as
# JSON.
#
# Usage: bash bench/run.sh [--quick] [--json PATH] [--rounds N] [--duration S]
#                          [--connections C] [--threads T] [--algorithm A]
#   --quick      smoke run: 1 round of 2 s each, 10,000 users for list_page
#   --json PATH  where to write the JSON figures (default bench/results.json)
#   --algorithm  auth.algorithm of the servers: HS256 (default), EdDSA,
#                ES256 or RS256 (the first start makes the key)
#
# Needs: cargo, python3, openssl, wrk (installed from apt when missing).

set -euo pipefail

CALLER_DIR=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# ------------------------------------------------------------------ options
QUICK=0
JSON_OUT=$ROOT/bench/results.json
ROUNDS=""
DURATION=""
THREADS=1
ALGORITHM=HS256
CONNECTIONS=16
FLOOD_CONNECTIONS=8      # concurrent logins in `mixed`: more than the cores
TIMEOUT=30s              # wrk's per-request timeout: logins queue for seconds
USERS=1000
PASSWORD='Bench-Pass-7fq2-Zx!'

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --json) JSON_OUT=$2; shift ;;
        --json=*) JSON_OUT=${1#--json=} ;;
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        --algorithm) ALGORITHM=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case $JSON_OUT in /*) ;; *) JSON_OUT=$CALLER_DIR/$JSON_OUT ;; esac
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-2}; LIST_USERS=10000
else
    ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; LIST_USERS=100000
fi
# list_page offsets: the first page, the middle, the last page.
LIST_OFFSETS="0 $((LIST_USERS / 2)) $((LIST_USERS - 100))"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
prepare cargo python3 openssl

# ------------------------------------------------------------------ scratch + cleanup
scratch bench
RESULTS=$WORK/results
mkdir -p "$RESULTS"
FACTS=$RESULTS/facts.json

# An explicit, empty config file: built-in defaults only, never the caller's
# ~/.config/rosterd/config.toml (and nothing gets written there).
CONFIG=$WORK/bench.toml
: >"$CONFIG"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

# start_rosterd NAME DB -> sets PORT_<NAME> and PID_<NAME>
start_rosterd() {
    local name=$1 db=$2 pid port
    ROSTERD_SECRET=$SECRET ROSTERD_RATE_LIMIT_ENABLED=false ROSTERD_AUTH_ALGORITHM=$ALGORITHM \
        "$BIN" --config "$CONFIG" --db "$db" serve --bind 127.0.0.1:0 \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    pid=$!
    PIDS+=("$pid")
    port=$(helper wait-line "$WORK/$name.out" 'serving on http://127\.0\.0\.1:(\d+)' 30)
    helper wait-health "$port" 30
    printf -v "PORT_$name" '%s' "$port"
    printf -v "PID_$name" '%s' "$pid"
    log "rosterd $name: pid $pid, port $port, db $db"
}

# run_wrk OUTFILE PORT SCRIPT [CONNECTIONS] [DURATION] [ENV=VALUE ...]
run_wrk() {
    local out=$1 port=$2 script=$3 conns=${4:-$CONNECTIONS} dur=${5:-$DURATION}
    shift 5 || shift $#
    env BENCH_LUA_DIR="$ROOT/bench/lua" "$@" \
        wrk -t"$THREADS" -c"$conns" -d"${dur}s" --timeout "$TIMEOUT" \
        -s "$ROOT/bench/lua/$script" "http://127.0.0.1:$port" >"$out" 2>&1 ||
        { cat "$out" >&2; return 1; }
    grep -q '^BENCHJSON ' "$out" || { cat "$out" >&2; echo "run.sh: no figures in $out" >&2; return 1; }
}

# one_line OUTFILE -> "1234 req/s, p99 5.6 ms" for the progress log
one_line() {
    python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("BENCHJSON "):
        r = json.loads(line[10:])
        bad = r["errors"]["status"] + r["errors"]["timeout"]
        print(f'{r["rps"]:,.0f} req/s, p99 {r["latency_ms"]["p99"]:.1f} ms'
              + (f', {bad} non-2xx/timeouts' if bad else ''))
EOF
}

# ------------------------------------------------------------------ facts
helper fact "$FACTS" date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
helper fact "$FACTS" machine.cores "$(nproc)"
helper fact "$FACTS" machine.cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
helper fact "$FACTS" machine.kernel "$(uname -r)"
helper fact-text "$FACTS" source.commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
helper fact "$FACTS" source.uncommitted_files "$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)"
# Other work on the machine skews everything: the load average is recorded.
helper fact "$FACTS" machine.loadavg_before "$(cut -d' ' -f1-3 /proc/loadavg)"
helper fact "$FACTS" settings "$(python3 -c '
import json, sys
a = sys.argv[1:]
print(json.dumps({"threads": int(a[0]), "connections": int(a[1]), "duration": float(a[2]),
  "rounds": int(a[3]), "timeout": a[4], "flood_connections": int(a[5]), "users": int(a[6]),
  "list_page_users": int(a[7]), "list_page_offsets": [int(x) for x in a[8].split()],
  "pbkdf2_iterations": 600000, "quick": a[9] == "1", "wrk": a[10]}))
' "$THREADS" "$CONNECTIONS" "$DURATION" "$ROUNDS" "$TIMEOUT" "$FLOOD_CONNECTIONS" \
    "$USERS" "$LIST_USERS" "$LIST_OFFSETS" "$QUICK" "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)")"

size_file=$WORK/rosterd.stripped
strip -o "$size_file" "$BIN" 2>/dev/null || cp "$BIN" "$size_file"
helper fact "$FACTS" binary.stripped_bytes "$(stat -c %s "$size_file")"
helper fact "$FACTS" binary.as_built_bytes "$(stat -c %s "$BIN")"

# ------------------------------------------------------------------ seed + start
log "seeding $USERS users (main server) and $LIST_USERS users (list_page server)"
"$EX/seed" "$WORK/main.sqlite3" "$USERS" "$PASSWORD"
"$EX/seed" "$WORK/list.sqlite3" "$LIST_USERS" "$PASSWORD"
"$EX/seed" "$WORK/register.sqlite3" "$USERS" "$PASSWORD"
cp "$WORK/main.sqlite3" "$WORK/startup.sqlite3"
cp "$WORK/main.sqlite3" "$WORK/seeded.sqlite3"

log "start-up time: 10 starts on a seeded database, 10 on a new file"
helper fact "$FACTS" startup.existing_db "$(helper startup "$BIN" "$CONFIG" "$WORK/startup.sqlite3" 10 "$SECRET")"
helper fact "$FACTS" startup.fresh_db "$(helper startup "$BIN" "$CONFIG" fresh 10 "$SECRET")"

"$EX/hello" 0 >"$WORK/hello.out" 2>"$WORK/hello.err" &
PIDS+=("$!")
PORT_hello=$(helper wait-line "$WORK/hello.out" 'listening on http://127\.0\.0\.1:(\d+)' 30)
log "hello: port $PORT_hello"

start_rosterd main "$WORK/main.sqlite3"
sleep 1
helper fact "$FACTS" memory.idle_rss_kib "$(helper proc "$PID_main" VmRSS)"
start_rosterd list "$WORK/list.sqlite3"
start_rosterd register "$WORK/register.sqlite3"

# Tokens: one login for reading, one per owner for `update` (refreshed to
# fresh access tokens before every run; access tokens live 5 minutes).
read -r _ REFRESH_main < <(helper login "$PORT_main" user1 "$PASSWORD")
read -r _ REFRESH_list < <(helper login "$PORT_list" user1 "$PASSWORD")
OWNERS=$(helper owners "$PORT_main" "$PASSWORD" 4)

# ------------------------------------------------------------------ checks
ACCESS=$(helper access "$PORT_main" "$REFRESH_main")
LACCESS=$(helper access "$PORT_list" "$REFRESH_list")
log "probe get_user:  $(helper probe "$PORT_main" GET /api/users/2 '' "$ACCESS")"
log "probe list_1k:   $(helper probe "$PORT_main" GET /api/users '' "$ACCESS")"
PENDING=0
first_ids=""
for off in $LIST_OFFSETS; do
    read -r status bytes items first < <(helper probe "$PORT_list" GET "/api/users?limit=100&offset=$off" '' "$LACCESS")
    log "probe list_page offset $off: status $status, $bytes bytes, $items items, first id $first"
    if [ "$status" != 200 ] || [ "$items" = - ] || [ "$items" -gt 100 ]; then PENDING=1; fi
    case " $first_ids " in *" $first "*) PENDING=1 ;; esac
    first_ids="$first_ids $first"
done
helper fact "$FACTS" list_page_pending "$( ((PENDING)) && echo true || echo false)"
((PENDING)) && log "list_page: limit/offset not (fully) implemented: marked pending"

# ------------------------------------------------------------------ rounds
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    R=r$round

    run_wrk "$RESULTS/hello.$R.wrk" "$PORT_hello" hello.lua
    log "  hello:     $(one_line "$RESULTS/hello.$R.wrk")"

    ACCESS=$(helper access "$PORT_main" "$REFRESH_main")
    run_wrk "$RESULTS/get_user.$R.wrk" "$PORT_main" get_user.lua "" "" \
        BENCH_USERS="$USERS" BENCH_ACCESS="$ACCESS"
    log "  get_user:  $(one_line "$RESULTS/get_user.$R.wrk")"

    run_wrk "$RESULTS/refresh.$R.wrk" "$PORT_main" refresh.lua "" "" \
        BENCH_REFRESH="$REFRESH_main"
    log "  refresh:   $(one_line "$RESULTS/refresh.$R.wrk")"

    ACCESS=$(helper access "$PORT_main" "$REFRESH_main")
    run_wrk "$RESULTS/list_1k.$R.wrk" "$PORT_main" list_1k.lua "" "" BENCH_ACCESS="$ACCESS"
    log "  list_1k:   $(one_line "$RESULTS/list_1k.$R.wrk")"

    LACCESS=$(helper access "$PORT_list" "$REFRESH_list")
    for off in $LIST_OFFSETS; do
        run_wrk "$RESULTS/list_page@$off.$R.wrk" "$PORT_list" list_page.lua "" "" \
            BENCH_ACCESS="$LACCESS" BENCH_OFFSET="$off"
        log "  list_page@$off: $(one_line "$RESULTS/list_page@$off.$R.wrk")"
    done

    OWNER_TOKENS=$(helper owners-access "$PORT_main" "$OWNERS")
    run_wrk "$RESULTS/update.$R.wrk" "$PORT_main" update.lua "" "" BENCH_OWNERS="$OWNER_TOKENS"
    log "  update:    $(one_line "$RESULTS/update.$R.wrk")"
    # The ceiling works on a copy of the seeded database (same size, same
    # indexes), in the same directory as the server's.
    cp "$WORK/seeded.sqlite3" "$WORK/ceiling.$R.sqlite3"
    sq=$("$EX/sqlite_ceiling" "$WORK/ceiling.$R.sqlite3" "$DURATION")
    echo "$sq" | sed -n 's/^updates\/s: \([0-9.]*\).*/{"rps": \1}/p' >"$RESULTS/sqlite.$R.json"
    log "  sqlite:    $sq"

    run_wrk "$RESULTS/login.$R.wrk" "$PORT_main" login.lua "" "" \
        BENCH_USERS="$USERS" BENCH_PASSWORD="$PASSWORD"
    log "  login:     $(one_line "$RESULTS/login.$R.wrk")"
    helper hash-ceiling 600000 5 >"$RESULTS/hash.$R.json"
    log "  hash:      $(cat "$RESULTS/hash.$R.json")"

    run_wrk "$RESULTS/register.$R.wrk" "$PORT_register" register.lua "" "" \
        BENCH_PREFIX="b${round}x$(python3 -c 'import secrets; print(secrets.token_hex(4))')" \
        BENCH_PASSWORD="$PASSWORD"
    log "  register:  $(one_line "$RESULTS/register.$R.wrk")"

    # mixed: a login flood (more concurrent logins than cores) starts first
    # and outlasts the measured get_user run.
    ACCESS=$(helper access "$PORT_main" "$REFRESH_main")
    flood_duration=$(python3 -c "print($DURATION + 3)")
    run_wrk "$RESULTS/mixed_flood.$R.wrk" "$PORT_main" login.lua "$FLOOD_CONNECTIONS" \
        "$flood_duration" BENCH_USERS="$USERS" BENCH_PASSWORD="$PASSWORD" &
    flood=$!
    PIDS+=("$flood")
    sleep 1.5
    run_wrk "$RESULTS/mixed.$R.wrk" "$PORT_main" get_user.lua "" "" \
        BENCH_USERS="$USERS" BENCH_ACCESS="$ACCESS"
    wait "$flood"
    log "  mixed:     $(one_line "$RESULTS/mixed.$R.wrk") (flood: $(one_line "$RESULTS/mixed_flood.$R.wrk"))"
done

helper fact "$FACTS" machine.loadavg_after "$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ memory after
helper fact "$FACTS" memory.hwm_kib.main "$(helper proc "$PID_main" VmHWM)"
helper fact "$FACTS" memory.hwm_kib.list "$(helper proc "$PID_list" VmHWM)"
helper fact "$FACTS" memory.hwm_kib.register "$(helper proc "$PID_register" VmHWM)"
helper fact "$FACTS" memory.rss_after_kib.main "$(helper proc "$PID_main" VmRSS)"
helper fact "$FACTS" memory.peak_hwm_kib "$(python3 -c '
import json, sys; print(max(json.load(open(sys.argv[1]))["memory"]["hwm_kib"].values()))' "$FACTS")"

# ------------------------------------------------------------------ report
echo
echo "## rosterd benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1))"
echo
mkdir -p "$(dirname "$JSON_OUT")"
helper report "$RESULTS" "$JSON_OUT"
echo
echo "JSON: $JSON_OUT"
