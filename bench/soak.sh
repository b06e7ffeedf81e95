#!/usr/bin/env bash
# rosterd's soak benchmark (issue 6, "Load"): minutes of mixed traffic at the
# highest rate the machine sustains; zero errors, no 5xx, resident memory
# flat (the last minute's peak RSS within 10% of the second minute's).
#
# Builds the release binary, starts it on 127.0.0.1 with a fresh temporary
# database (1,000 seeded users), logs a pool of owners in, then runs
# `wrk -t2 -c32 --timeout 10s` with bench/lua/soak_mixed.lua: per request, at
# random, GET a user 50%, refresh a token 20%, PATCH one's own level 15%,
# list a page of 50 at a random offset 10%, register a new user 5%. VmRSS of
# the server is sampled every second. Prints a markdown block, writes JSON.
#
# Usage: bash bench/soak.sh [--quick] [--duration S] [--json PATH]
#                           [--weights G,R,P,L,N]
#   --quick       60 s instead of 300 s
#   --duration S  seconds of load (default 300)
#   --json PATH   where to write the figures (default bench/soak.json)
#   --weights     percent per kind: get,refresh,patch,list,register
#                 (default 50,20,15,10,5)
# Exit status: 0 pass; 1 any 5xx, unexpected non-2xx, socket error or memory
# growth over 10% (or the harness failed).
#
# Needs: cargo, python3, wrk (installed from apt when missing), timeout.

set -euo pipefail

CALLER_DIR=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# ------------------------------------------------------------------ options
DURATION=300
JSON_OUT=$ROOT/bench/soak.json
WEIGHTS=50,20,15,10,5
THREADS=2
CONNECTIONS=32
TIMEOUT=10s
USERS=1000
POOL=32                  # logged-in owners: one per connection
PASSWORD='Bench-Pass-7fq2-Zx!'

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --quick) DURATION=60 ;;
        --duration) DURATION=$2; shift ;;
        --duration=*) DURATION=${1#--duration=} ;;
        --json) JSON_OUT=$2; shift ;;
        --json=*) JSON_OUT=${1#--json=} ;;
        --weights) WEIGHTS=$2; shift ;;
        --weights=*) WEIGHTS=${1#--weights=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "soak.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case $DURATION in ''|*[!0-9]*) echo "soak.sh: --duration needs whole seconds" >&2; exit 2 ;; esac
((DURATION >= 10)) || { echo "soak.sh: --duration must be at least 10" >&2; exit 2; }
case $JSON_OUT in /*) ;; *) JSON_OUT=$CALLER_DIR/$JSON_OUT ;; esac
# Tokens are made before the run: they must outlive it (default 5 minutes).
ACCESS_LIFETIME=$((DURATION + 900))

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
prepare cargo python3 timeout

# ------------------------------------------------------------------ scratch + cleanup
scratch soak
FACTS=$WORK/facts.json

CONFIG=$WORK/soak.toml
printf '[auth]\naccess_token_lifetime = %d\n' "$ACCESS_LIFETIME" >"$CONFIG"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

# ------------------------------------------------------------------ facts
helper fact "$FACTS" date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
helper fact "$FACTS" machine.cores "$(nproc)"
helper fact "$FACTS" machine.cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
helper fact "$FACTS" machine.kernel "$(uname -r)"
helper fact-text "$FACTS" source.commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
helper fact "$FACTS" source.uncommitted_files "$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)"
helper fact "$FACTS" machine.loadavg_before "$(cut -d' ' -f1-3 /proc/loadavg)"
helper fact "$FACTS" settings "$(python3 -c '
import json, sys
a = sys.argv[1:]
print(json.dumps({"threads": int(a[0]), "connections": int(a[1]), "duration": float(a[2]),
  "timeout": a[3], "weights": a[4], "users": int(a[5]), "token_pool": int(a[6]),
  "access_token_lifetime": int(a[7]), "pbkdf2_iterations": 600000,
  "list_limit": 50, "expected_4xx": [], "wrk": a[8]}))
' "$THREADS" "$CONNECTIONS" "$DURATION" "$TIMEOUT" "$WEIGHTS" "$USERS" "$POOL" \
    "$ACCESS_LIFETIME" "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)")"

# ------------------------------------------------------------------ seed + start
log "seeding $USERS users"
"$EX/seed" "$WORK/soak.sqlite3" "$USERS" "$PASSWORD" >&2

ROSTERD_SECRET=$SECRET ROSTERD_RATE_LIMIT_ENABLED=false \
    "$BIN" --config "$CONFIG" --db "$WORK/soak.sqlite3" serve --bind 127.0.0.1:0 \
    >"$WORK/rosterd.out" 2>"$WORK/rosterd.err" &
SERVER=$!
PIDS+=("$SERVER")
PORT=$(helper wait-line "$WORK/rosterd.out" 'serving on http://127\.0\.0\.1:(\d+)' 30)
helper wait-health "$PORT" 30
log "rosterd: pid $SERVER, port $PORT"
sleep 1
helper fact "$FACTS" memory.idle_rss_kib "$(helper proc "$SERVER" VmRSS)"

log "logging in $POOL owners (the token pool)"
helper tokens "$PORT" "$PASSWORD" "$POOL" "$WORK/tokens.txt"
log "probe PATCH: $(helper probe "$PORT" PATCH /api/users/1 '{"level": 3}' \
    "$(head -1 "$WORK/tokens.txt" | cut -d' ' -f2)")"

# ------------------------------------------------------------------ load
sleep 2   # let the logins' memory settle before the "start" sample
T0=$(python3 -c 'import time; print(f"{time.time() + 3:.3f}")')
# python3 directly (not the helper function): $! must be the sampler itself.
python3 "$ROOT/bench/helper.py" rss-sample "$SERVER" "$WORK/rss.csv" "$T0" "$WORK/wrk.pid" &
SAMPLER=$!
PIDS+=("$SAMPLER")
python3 -c "import time; time.sleep(max($T0 - time.time(), 0))"

PREFIX="s$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
log "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --timeout $TIMEOUT, weights $WEIGHTS"
env BENCH_LUA_DIR="$ROOT/bench/lua" BENCH_USERS="$USERS" BENCH_PREFIX="$PREFIX" \
    BENCH_PASSWORD="$PASSWORD" BENCH_TOKENS="$WORK/tokens.txt" BENCH_WEIGHTS="$WEIGHTS" \
    timeout -k 10 $((DURATION + 60)) \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout "$TIMEOUT" \
    -s "$ROOT/bench/lua/soak_mixed.lua" "http://127.0.0.1:$PORT" \
    >"$WORK/wrk.out" 2>&1 &
WRK=$!
PIDS+=("$WRK")
echo "$WRK" >"$WORK/wrk.pid"
# `timeout` execs nothing itself: the pid above is timeout's; its child is wrk.
sleep 0.5
pgrep -P "$WRK" -x wrk >"$WORK/wrk.pid" 2>/dev/null || true
wrk_rc=0
wait "$WRK" || wrk_rc=$?
sleep 4   # a few idle samples after the load
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
helper fact "$FACTS" machine.loadavg_after "$(cut -d' ' -f1-3 /proc/loadavg)"

if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "soak.sh: rosterd is gone (it crashed during the load); stderr:" >&2
    tail -20 "$WORK/rosterd.err" >&2
    exit 1
fi
if [ "$wrk_rc" -ne 0 ] || ! grep -q '^BENCHJSON ' "$WORK/wrk.out"; then
    cat "$WORK/wrk.out" >&2
    echo "soak.sh: wrk failed (exit $wrk_rc)" >&2
    exit 1
fi
log "wrk: $(grep -E 'Requests/sec|requests in' "$WORK/wrk.out" | tr -s ' ' | paste -sd';')"

# ------------------------------------------------------------------ report
echo
echo "## rosterd soak ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1))"
echo
mkdir -p "$(dirname "$JSON_OUT")"
cp "$WORK/rss.csv" "${JSON_OUT%.json}.rss.csv"
rc=0
helper soak-report "$WORK/wrk.out" "$WORK/rss.csv" "$FACTS" "$JSON_OUT" || rc=$?
echo "JSON: $JSON_OUT (RSS samples: ${JSON_OUT%.json}.rss.csv)"
# The server's own log: ERROR lines or a panic fail the soak; WARNs are shown.
errors=$(grep -cE ' ERROR |panicked' "$WORK/rosterd.err" || true)
warns=$(grep -c ' WARN ' "$WORK/rosterd.err" || true)
echo "rosterd log: $errors ERROR/panic line(s), $warns WARN line(s)"
if ((errors + warns)); then
    grep -E ' ERROR | WARN |panicked' "$WORK/rosterd.err" | head -5 >&2
    cp "$WORK/rosterd.err" "${JSON_OUT%.json}.rosterd.err"
fi
((errors == 0)) || rc=1
exit "$rc"
