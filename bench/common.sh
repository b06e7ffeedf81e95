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
