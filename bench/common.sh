# Shared by bench/run.sh and bench/soak.sh (sourced; ROOT and log() set by
# the caller): the caller's ROSTERD_* cleared, wrk installed when missing,
# the required tools checked, the release binaries built.

# The harness decides every setting: nothing from the caller's ROSTERD_*.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^ROSTERD_' || true)

helper() { python3 "$ROOT/bench/helper.py" "$@"; }

# prepare TOOL... : install wrk if needed, require TOOL..., build release.
prepare() {
    if ! command -v wrk >/dev/null 2>&1; then
        log "wrk not found: installing it from apt"
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
        $sudo apt-get update
        $sudo apt-get install -y wrk
    fi
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || { echo "$0: $tool is required" >&2; exit 1; }
    done
    log "building (cargo build --release --examples --bins)"
    cargo build --release --examples --bins
    BIN=$ROOT/target/release/rosterd
    EX=$ROOT/target/release/examples
}

# scratch NAME: a fresh work directory WORK under target/ (on the repo's
# disk, not a tmpfs /tmp: the sqlite ceiling and the server's commits must
# hit the same storage), and a trap that kills every pid in PIDS on exit
# and removes WORK after a success (keeps it, for the logs, after a failure).
scratch() {
    mkdir -p "$ROOT/target"
    WORK=$(mktemp -d "$ROOT/target/$1.XXXXXX")
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "$0: failed (exit $rc); logs and databases kept in $WORK" >&2
    fi
    exit "$rc"
}
