#!/usr/bin/env bash
# CI test of the Debian package and the release archive, on this machine:
#
#   sudo tests/package/run.sh
#
# Builds target/debian/rosterd_<version>-1_<arch>.deb (`cargo deb`,
# installing cargo-deb when missing) and the release archive
# (contrib/release.sh), then installs the package with dpkg and checks what
# the install set up (files, modes, owners, the rosterd user, the config's
# fresh secret, `doctor`, `--version`, a server answering /api/health as
# the rosterd user), a reinstall (config kept), `dpkg -r` (program gone,
# config and database kept), `dpkg -P` (config gone, database kept, user
# kept), an install over the kept database, and a purge with
# ROSTERD_PURGE_DATA=yes (database gone). Then the archive: its checksum,
# SHA256SUMS and its files.
#
# It installs and purges the real package: it must run as root, and it
# refuses to touch a rosterd install it did not make (its mark,
# /var/lib/rosterd/.rosterd-package-test, is missing) unless
# ROSTERD_PACKAGE_TEST_FORCE=yes. Re-runnable: it purges what an earlier,
# failed run left first. It leaves the rosterd system user (as the package's
# purge does). Exits non-zero at the first failed check.
#
# Time: the two release builds share target/release; with a warm target/
# they are no-ops and the whole test takes seconds; from cold, the LTO build
# dominates (minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TERM_COLOR=never

CONFIG=/etc/rosterd/config.toml
DATA_DIR=/var/lib/rosterd
DB=$DATA_DIR/rosterd.sqlite3
MARK=$DATA_DIR/.rosterd-package-test
UNIT=/usr/lib/systemd/system/rosterd.service
EXAMPLE_SECRET=change-me-to-64-random-hex-characters-from-rosterd-init-0000000

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL  $*" >&2; exit 1; }
pass() { echo "ok    $*"; }
# check DESCRIPTION COMMAND...: passes when COMMAND succeeds.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
equals() { [ "$1" = "$2" ] || { echo "      got '$1', want '$2'" >&2; return 1; }; }
mode_of() { stat -c %a "$1"; }
owner_of() { stat -c %U:%G "$1"; }
as_rosterd() {
    setpriv --reuid=rosterd --regid=rosterd --init-groups --reset-env -- "$@"
}
# Installed, or removed with its config files left.
installed() {
    dpkg-query -W -f='${db:Status-Abbrev}' rosterd 2>/dev/null | grep -q '^.[ic]'
}
not_installed() { ! installed; }

[ "$(id -u)" = 0 ] || fail "run as root: it installs and purges the rosterd package"
for tool in dpkg dpkg-deb curl setpriv sha256sum tar git; do
    command -v "$tool" >/dev/null || fail "$tool is needed"
done

step "state left by an earlier run"
if installed || [ -e "$DATA_DIR" ] || [ -e /etc/rosterd ]; then
    if [ ! -e "$MARK" ] && [ "${ROSTERD_PACKAGE_TEST_FORCE:-}" != yes ]; then
        fail "a rosterd install or its files exist and were not made by this test" \
            "(no $MARK); set ROSTERD_PACKAGE_TEST_FORCE=yes to purge them"
    fi
    if installed; then ROSTERD_PURGE_DATA=yes dpkg -P rosterd >/dev/null; fi
    rm -rf "$DATA_DIR" /etc/rosterd
    echo "purged an earlier install"
else
    echo "none"
fi

step "build the .deb (cargo deb) and the release archive (contrib/release.sh)"
if ! command -v cargo-deb >/dev/null; then
    cargo install cargo-deb --locked
fi
echo "cargo-deb $(cargo deb --version | sed 's/^cargo-deb //')"
cargo deb --locked >"$work/deb.out"
deb=$(tail -n 1 "$work/deb.out")
[ -f "$deb" ] || fail "cargo deb wrote no package (said: $(cat "$work/deb.out"))"
contrib/release.sh >"$work/release.out"
version=$(cargo pkgid --offline)
version=${version##*[#@]}

step "package: $deb"
dpkg -c "$deb"
size=$(stat -c %s "$deb")
echo "size: $size bytes ($((size / 1024)) KiB); installed size: $(dpkg-deb -f "$deb" Installed-Size) KiB"
dpkg-deb -f "$deb" Package Version Architecture Depends
for path in ./usr/bin/rosterd ./usr/share/rosterd/config.example.toml \
    ./usr/lib/systemd/system/rosterd.service ./usr/share/doc/rosterd/README.md \
    ./usr/share/doc/rosterd/copyright; do
    check "the package holds $path" grep -q " $path\$" <(dpkg -c "$deb")
done

step "install (dpkg -i)"
dpkg -i "$deb" 2>&1 | tee "$work/install.out" || fail "dpkg -i"
touch "$MARK"
check "the post-install says it created the config" grep -q "created now, with a fresh random secret" "$work/install.out"
check "the post-install says how to start it" grep -q "systemctl enable --now rosterd" "$work/install.out"
check "the post-install names doctor" grep -q "rosterd --config $CONFIG doctor" "$work/install.out"

step "installed files"
dpkg -L rosterd
for path in /usr/bin/rosterd /usr/share/rosterd/config.example.toml "$UNIT" \
    /usr/share/doc/rosterd/copyright; do
    check "dpkg -L lists $path" grep -qx "$path" <(dpkg -L rosterd)
done
check "/usr/bin/rosterd mode 755, root" equals "$(mode_of /usr/bin/rosterd) $(owner_of /usr/bin/rosterd)" "755 root:root"
check "the unit is at /lib/systemd/system/rosterd.service" test -f /lib/systemd/system/rosterd.service
check "the unit runs /usr/bin/rosterd with the package's paths" grep -qx \
    "ExecStart=/usr/bin/rosterd --config $CONFIG --db $DB serve" "$UNIT"

step "user, directories, config"
id rosterd
check "group rosterd exists" getent group rosterd
check "rosterd is a system user (uid < 1000)" test "$(id -u rosterd)" -lt 1000
check "rosterd's home is $DATA_DIR" equals "$(getent passwd rosterd | cut -d: -f6)" "$DATA_DIR"
check "$DATA_DIR: 700 rosterd:rosterd" equals "$(mode_of "$DATA_DIR") $(owner_of "$DATA_DIR")" "700 rosterd:rosterd"
check "/etc/rosterd: 700 rosterd:rosterd" equals "$(mode_of /etc/rosterd) $(owner_of /etc/rosterd)" "700 rosterd:rosterd"
check "$CONFIG: 600 rosterd:rosterd" equals "$(mode_of "$CONFIG") $(owner_of "$CONFIG")" "600 rosterd:rosterd"
secret=$(sed -n 's/^secret = "\(.*\)"$/\1/p' "$CONFIG")
check "the config's secret is 64 hex characters" grep -Eqx '[0-9a-f]{64}' <<<"$secret"
check "the config's secret is not the example's" test "$secret" != "$EXAMPLE_SECRET"
check "the example's secret is still the example's" grep -q "$EXAMPLE_SECRET" /usr/share/rosterd/config.example.toml
check "the config points at the database" grep -qx "path = \"$DB\"" "$CONFIG"
config_sum=$(sha256sum <"$CONFIG")

step "rosterd --version, doctor (as rosterd)"
shown=$(/usr/bin/rosterd --version)
echo "$shown"
check "--version shows the version and a commit" grep -Eqx \
    "rosterd $version \([0-9a-f]{12}(-dirty)?\)" <<<"$shown"
commit=$(sed -E 's/.*\(([0-9a-f]{12}).*/\1/' <<<"$shown")
check "the commit $commit is in this repository" git cat-file -e "$commit^{commit}"
as_rosterd /usr/bin/rosterd --config "$CONFIG" doctor | tee "$work/doctor.out" ||
    fail "doctor as rosterd"
check "doctor's first line is the version" equals "$(head -n 1 "$work/doctor.out")" "ok    $shown"

step "serve as rosterd, GET /api/health"
port=""
for _ in $(seq 50); do
    candidate=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
        port=$candidate
        break
    fi
done
[ -n "$port" ] || fail "no free port"
setpriv --reuid=rosterd --regid=rosterd --init-groups --reset-env -- \
    /usr/bin/rosterd --config "$CONFIG" --db "$DB" serve --bind "127.0.0.1:$port" \
    >"$work/serve.log" 2>&1 &
server_pid=$!
code=""
for _ in $(seq 100); do
    code=$(curl -s -o "$work/health.json" -w '%{http_code}' "http://127.0.0.1:$port/api/health" || true)
    [ "$code" = 200 ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log"; fail "the server exited"; }
    sleep 0.1
done
echo "GET http://127.0.0.1:$port/api/health -> $code $(cat "$work/health.json")"
check "health is 200" equals "$code" 200
check "health says {\"status\":\"ok\"}" equals "$(tr -d ' \n' <"$work/health.json")" '{"status":"ok"}'
kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
check "the server stops on SIGTERM with status 0" equals "$rc" 0
check "the database is $DB, owner rosterd" equals "$(owner_of "$DB")" "rosterd:rosterd"
as_rosterd /usr/bin/rosterd --config "$CONFIG" doctor >"$work/doctor2.out" || { cat "$work/doctor2.out"; fail "doctor after serve"; }
check "doctor checks the database the config names" grep -q "^ok    database $DB: integrity ok" "$work/doctor2.out"

step "reinstall (dpkg -i again): config and database kept"
dpkg -i "$deb" >"$work/reinstall.out" 2>&1 || { cat "$work/reinstall.out"; fail "dpkg -i again"; }
check "the post-install says it kept the config" grep -q "kept (it existed already)" "$work/reinstall.out"
check "the config is unchanged" equals "$(sha256sum <"$CONFIG")" "$config_sum"
check "the database is kept" test -f "$DB"

step "remove (dpkg -r)"
dpkg -r rosterd 2>&1 | tee "$work/remove.out" || fail "dpkg -r"
check "/usr/bin/rosterd is gone" test ! -e /usr/bin/rosterd
check "the unit is gone" test ! -e "$UNIT"
check "the config is kept, unchanged" equals "$(sha256sum <"$CONFIG")" "$config_sum"
check "the config is still 600 rosterd:rosterd" equals "$(mode_of "$CONFIG") $(owner_of "$CONFIG")" "600 rosterd:rosterd"
check "the database is kept" test -f "$DB"
check "dpkg knows only its config files now" grep -q '^rc' <(dpkg-query -W -f='${db:Status-Abbrev}' rosterd)

step "purge (dpkg -P)"
dpkg -P rosterd 2>&1 | tee "$work/purge.out" || fail "dpkg -P"
check "/etc/rosterd is gone" test ! -e /etc/rosterd
check "the purge says it deleted /etc/rosterd" grep -q "deleted /etc/rosterd" "$work/purge.out"
check "the database is kept" test -f "$DB"
check "the purge says it kept $DATA_DIR" grep -q "KEPT $DATA_DIR" "$work/purge.out"
check "the user rosterd is kept" getent passwd rosterd
check "the purge says it kept the user" grep -q "kept the system user" "$work/purge.out"
check "dpkg forgot the package" not_installed

step "install over the kept database, then purge with ROSTERD_PURGE_DATA=yes"
dpkg -i "$deb" >"$work/install2.out" 2>&1 || { cat "$work/install2.out"; fail "dpkg -i over kept data"; }
check "a new config, with a new secret" sh -c "! grep -q '$secret' '$CONFIG'"
check "the post-install says the database is kept" grep -q "database  $DB (kept)" "$work/install2.out"
as_rosterd /usr/bin/rosterd --config "$CONFIG" doctor >"$work/doctor3.out" || { cat "$work/doctor3.out"; fail "doctor over kept data"; }
check "doctor passes on the kept database" grep -q "^ok    database $DB: integrity ok" "$work/doctor3.out"
ROSTERD_PURGE_DATA=yes dpkg -P rosterd 2>&1 | tee "$work/purge2.out" ||
    fail "dpkg -P with ROSTERD_PURGE_DATA=yes"
check "$DATA_DIR is gone" test ! -e "$DATA_DIR"
check "the purge says it deleted $DATA_DIR" grep -q "deleted $DATA_DIR" "$work/purge2.out"
check "/etc/rosterd is gone" test ! -e /etc/rosterd

step "release archive"
cat "$work/release.out"
host=$(rustc -vV | sed -n 's/^host: //p')
name=rosterd-$version-$host
check "dist/$name.tar.gz and .sha256 exist" test -f "dist/$name.tar.gz" -a -f "dist/$name.tar.gz.sha256"
(cd dist && sha256sum -c "$name.tar.gz.sha256") || fail "the archive's checksum"
tar tzvf "dist/$name.tar.gz"
check "the archive holds exactly its six files" equals \
    "$(tar tzf "dist/$name.tar.gz" | sort | tr '\n' ' ')" \
    "$name/ $name/LICENSE $name/README.md $name/SHA256SUMS $name/config.example.toml $name/rosterd $name/rosterd.service "
tar xzf "dist/$name.tar.gz" -C "$work"
(cd "$work/$name" && sha256sum -c SHA256SUMS) || fail "SHA256SUMS inside the archive"
check "SHA256SUMS covers the five other files" equals "$(wc -l <"$work/$name/SHA256SUMS")" 5
check "the archive's rosterd is executable" test -x "$work/$name/rosterd"
check "the archive's rosterd shows the same version" equals "$("$work/$name/rosterd" --version)" "$shown"
if cmp -s "$work/$name/rosterd" <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/rosterd); then
    echo "      (the archive's binary is the .deb's, byte for byte)"
else
    echo "      (the archive's binary differs from the .deb's: sources changed between the builds)"
fi

step "all checks passed"
