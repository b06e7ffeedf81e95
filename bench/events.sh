#!/usr/bin/env bash
# rosterd's live-events benchmark (BENCHMARKS.md: events_fanout,
# events_memory, presence_churn), driven by bench/events.py (one asyncio
# process, raw HTTP/1.1 sockets, kernel receive timestamps).
#
# Builds the release binary and runs three fresh servers on 127.0.0.1, one
# after another, each with a new temporary database, ROSTERD_AUTH_PBKDF2_
# ITERATIONS=1000 (the users are registered and logged in through the API:
# cheap hashes keep that quick; nothing measured here hashes) and the rate
# limit off:
#   1. events_fanout, 1,000 streams: 63 users + 1 writer, 16 streams a user
#      (?presence=false), one PATCH of the writer's level a second; the time
#      from each PATCH's reply to its event on every stream.
#   2. events_memory + events_fanout, 10,000 streams: 625 users + 1 writer;
#      VmRSS idle (users made, no stream), with the 10,000 streams open and
#      idle, then the same fanout on them. 10,000 is events.max_streams'
#      default, which is left as it is (the writer holds no stream).
#   3. presence_churn (ROSTERD_PRESENCE_GRACE_SECONDS=1): presence streams
#      opening at 200/s (each living 0.05-3 s) over 100 users; then half the
#      users lose their streams, and after the grace window every status
#      must say whether the user holds a stream; then all close, all offline.
# Prints one markdown table, writes the figures as JSON.
#
# Usage: bash bench/events.sh [--quick] [--json PATH]
#   --quick      3 PATCHes per fanout (instead of 10), 10 s of churn (60)
#   --json PATH  where to write the figures (default bench/events.json)
# Exit status: 0 every target met; 1 a target failed (the table is still
# printed) or the harness failed.
#
# Needs: cargo, python3.

set -euo pipefail

CALLER_DIR=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# ------------------------------------------------------------------ options
QUICK=0
JSON_OUT=$ROOT/bench/events.json
PATCHES=10
CHURN_SECONDS=60
CHURN_RATE=200
CHURN_USERS=100
GRACE=1

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --json) JSON_OUT=$2; shift ;;
        --json=*) JSON_OUT=${1#--json=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "events.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case $JSON_OUT in /*) ;; *) JSON_OUT=$CALLER_DIR/$JSON_OUT ;; esac
if ((QUICK)); then PATCHES=3; CHURN_SECONDS=10; fi

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"   # clears the caller's ROSTERD_*; helper, scratch
for tool in cargo python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || { echo "events.sh: $tool is required" >&2; exit 1; }
done
export PYTHONDONTWRITEBYTECODE=1

# 10,000 streams: as many sockets in the server and in the generator.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
if (($(ulimit -n) < 10100)); then
    echo "events.sh: the open-file limit is $(ulimit -n): 10,000 streams need more" >&2
    exit 1
fi

log "building (cargo build --release --bins)"
cargo build --release --bins
BIN=$ROOT/target/release/rosterd

# ------------------------------------------------------------------ scratch + cleanup
scratch events
RESULTS=$WORK/results
mkdir -p "$RESULTS"
FACTS=$RESULTS/facts.json
CONFIG=$WORK/bench.toml
: >"$CONFIG"
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

# start_rosterd NAME [ENV=VALUE ...] -> sets PORT and PID (a new database)
start_rosterd() {
    local name=$1
    shift
    env "$@" ROSTERD_SECRET="$SECRET" ROSTERD_RATE_LIMIT_ENABLED=false \
        ROSTERD_AUTH_PBKDF2_ITERATIONS=1000 \
        "$BIN" --config "$CONFIG" --db "$WORK/$name.sqlite3" serve --bind 127.0.0.1:0 \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID=$!
    PIDS+=("$PID")
    PORT=$(helper wait-line "$WORK/$name.out" 'serving on http://127\.0\.0\.1:(\d+)' 30)
    helper wait-health "$PORT" 30
    log "rosterd $name: pid $PID, port $PORT"
}

# stop_rosterd NAME: stops PID; counts its log's WARN/ERROR lines (the
# warning about the low PBKDF2 cost aside) into the facts.
stop_rosterd() {
    local name=$1
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    local warn error
    warn=$(grep -v 'pbkdf2_iterations is below' "$WORK/$name.err" | grep -c ' WARN ' || true)
    error=$(grep -c ' ERROR ' "$WORK/$name.err" || true)
    helper fact "$FACTS" "server_log.$name" "{\"warn\": $warn, \"error\": $error}"
    if ((warn + error)); then
        log "rosterd $name logged $warn WARN and $error ERROR lines; the first:"
        grep -v 'pbkdf2_iterations is below' "$WORK/$name.err" | grep -E ' (WARN|ERROR) ' | head -5 >&2
    fi
}

# generator ARGS...: bench/events.py in the background (killed by the trap),
# bounded by `timeout`; returns its status.
generator() {
    timeout 600 python3 "$ROOT/bench/events.py" "$@" &
    local pid=$!
    PIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    return "$rc"
}

# ------------------------------------------------------------------ facts
helper fact "$FACTS" date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
helper fact "$FACTS" machine.cores "$(nproc)"
helper fact "$FACTS" machine.cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
helper fact "$FACTS" machine.kernel "$(uname -r)"
helper fact "$FACTS" machine.nofile "$(ulimit -n)"
helper fact-text "$FACTS" source.commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
helper fact "$FACTS" source.uncommitted_files "$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)"
helper fact "$FACTS" machine.loadavg_before "$(cut -d' ' -f1-3 /proc/loadavg)"
helper fact "$FACTS" settings "{\"quick\": $( ((QUICK)) && echo true || echo false), \"patches\": $PATCHES, \"churn_seconds\": $CHURN_SECONDS, \"churn_rate\": $CHURN_RATE, \"churn_users\": $CHURN_USERS, \"grace_seconds\": $GRACE, \"pbkdf2_iterations\": 1000, \"max_streams_per_user\": 16, \"max_streams\": 10000}"

# ------------------------------------------------------------------ scenarios
GEN_FAILED=0
start_rosterd fanout1k
log "events_fanout: 1,000 streams, $PATCHES PATCHes"
generator fanout --port "$PORT" --pid "$PID" --streams 1000 --seconds "$PATCHES" \
    --out "$RESULTS/fanout_1000.json" || GEN_FAILED=1
stop_rosterd fanout1k

start_rosterd fanout10k
log "events_memory + events_fanout: 10,000 streams, $PATCHES PATCHes"
generator fanout --port "$PORT" --pid "$PID" --streams 10000 --seconds "$PATCHES" --memory \
    --out "$RESULTS/fanout_10000.json" || GEN_FAILED=1
stop_rosterd fanout10k

start_rosterd churn ROSTERD_PRESENCE_GRACE_SECONDS="$GRACE"
log "presence_churn: ${CHURN_RATE}/s for $CHURN_SECONDS s over $CHURN_USERS users, grace $GRACE s"
generator churn --port "$PORT" --pid "$PID" --rate "$CHURN_RATE" --seconds "$CHURN_SECONDS" \
    --users "$CHURN_USERS" --grace "$GRACE" --out "$RESULTS/churn.json" || GEN_FAILED=1
stop_rosterd churn

helper fact "$FACTS" machine.loadavg_after "$(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------------ report
echo
echo "## rosterd live events ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1))"
echo
mkdir -p "$(dirname "$JSON_OUT")"
REPORT_RC=0
python3 "$ROOT/bench/events.py" report --results "$RESULTS" --json "$JSON_OUT" || REPORT_RC=$?
echo
echo "Load: one asyncio process (bench/events.py); PATCHes: $PATCHES per fanout, one a second;" \
     "churn: ${CHURN_RATE}/s for $CHURN_SECONDS s, $CHURN_USERS users, grace $GRACE s;" \
     "PBKDF2 1,000 iterations; load average before/after:" \
     "$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["machine"]; print(m["loadavg_before"], "/", m["loadavg_after"])' "$FACTS")."
echo "JSON: $JSON_OUT"
if ((GEN_FAILED || REPORT_RC)); then exit 1; fi
