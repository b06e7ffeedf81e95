#!/usr/bin/env bash
# Runs the admin page's browser tests (tests/browser) against the rosterd
# binary in ROSTERD_BIN (default target/debug/rosterd, built by `cargo test`
# or `cargo build`), with Debian's chromium driven by Playwright.
#   bash tests/browser/run.sh [pytest args...]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

export ROSTERD_BIN="${ROSTERD_BIN:-target/debug/rosterd}"
case "$ROSTERD_BIN" in
  /*) bin="$ROSTERD_BIN" ;;
  *) bin="$repo/$ROSTERD_BIN" ;;
esac
if [ ! -x "$bin" ]; then
  echo "run.sh: no rosterd binary at $bin (run cargo build first, or set ROSTERD_BIN)" >&2
  exit 2
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "run.sh: installing chromium (apt-get)" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

python="${PYTHON:-python3}"
venv="$(mktemp -d "${TMPDIR:-/tmp}/rosterd-browser-venv.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/browser/requirements.txt

# Playwright's own browser download is not used: conftest.py launches
# /usr/bin/chromium through executable_path.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
# No __pycache__ or .pytest_cache left in the work tree.
export PYTHONDONTWRITEBYTECODE=1
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/browser "$@"
