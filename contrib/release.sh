#!/usr/bin/env bash
# Builds the release archive of rosterd for one target:
#
#   contrib/release.sh [--target TRIPLE]
#
# writes
#   dist/rosterd-<version>-<target>.tar.gz         one directory, rosterd-<version>-<target>/:
#       rosterd              the binary (release profile: LTO, stripped)
#       README.md, LICENSE, config.example.toml
#       rosterd.service      the systemd unit (contrib/rosterd.service)
#       SHA256SUMS           of the five files above
#   dist/rosterd-<version>-<target>.tar.gz.sha256  of the archive
#
# Without --target it builds for this machine (`cargo build --release
# --locked`, the same target/release/rosterd that `cargo deb` packs). The
# archive is reproducible: sorted, owner 0, dates from the last commit.
#
# Verify and install (README.md, "Install"):
#   sha256sum -c rosterd-<version>-<target>.tar.gz.sha256
#   tar xzf rosterd-<version>-<target>.tar.gz && cd rosterd-<version>-<target>
#   sha256sum -c SHA256SUMS
#   sudo install -m 0755 rosterd /usr/local/bin/rosterd
#
# Cross-building for a Raspberry Pi (64-bit OS) from x86_64 Debian. SQLite
# is compiled in (rusqlite's "bundled" feature builds its C source with the
# target's C compiler), so the cross C compiler is needed, not only the
# linker:
#   sudo apt-get install gcc-aarch64-linux-gnu
#   rustup target add aarch64-unknown-linux-gnu
#   export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
#   contrib/release.sh --target aarch64-unknown-linux-gnu
#   cargo deb --target aarch64-unknown-linux-gnu   # -> target/debian/rosterd_<version>-1_arm64.deb
# The C compiler needs no variable: the cc crate looks for
# aarch64-linux-gnu-gcc by itself. This script also sets the linker variable
# itself when it is unset and <arch>-linux-gnu-gcc is on the PATH; cargo deb
# does not (export it, as above, so both build the same way: then cargo deb
# reuses this build).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

target=""
while [ $# -gt 0 ]; do
    case "$1" in
        --target) [ $# -ge 2 ] || { echo "release.sh: --target needs a value" >&2; exit 2; }
                  target=$2; shift 2 ;;
        --target=*) target=${1#--target=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "release.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
root=$PWD

host=$(rustc -vV | sed -n 's/^host: //p')
version=$(cargo pkgid --offline 2>/dev/null || cargo pkgid)
version=${version##*[#@]}
target_dir=$(cargo metadata --no-deps --format-version 1 --offline \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || target_dir=$root/target

build=(cargo build --release --locked)
if [ -z "$target" ]; then
    target=$host
    binary=$target_dir/release/rosterd
else
    build+=(--target "$target")
    binary=$target_dir/$target/release/rosterd
    if [ "$target" != "$host" ]; then
        # aarch64-unknown-linux-gnu -> aarch64-linux-gnu-gcc (Debian's name)
        linker_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_LINKER"
        cross_gcc="${target%%-*}-linux-gnu-gcc"
        if [[ "$target" == *-linux-gnu ]] && [ -z "${!linker_var:-}" ] &&
            command -v "$cross_gcc" >/dev/null; then
            export "$linker_var=$cross_gcc"
            echo "release.sh: linking with $cross_gcc ($linker_var)" >&2
        fi
    fi
fi

echo "release.sh: rosterd $version for $target: ${build[*]}" >&2
"${build[@]}"

name=rosterd-$version-$target
dist=$root/dist
stage=$dist/$name
rm -rf "$stage" "$dist/$name.tar.gz" "$dist/$name.tar.gz.sha256"
mkdir -p "$stage"
install -m 0755 "$binary" "$stage/rosterd"
install -m 0644 README.md LICENSE config.example.toml "$stage/"
install -m 0644 contrib/rosterd.service "$stage/rosterd.service"
(cd "$stage" && sha256sum rosterd README.md LICENSE config.example.toml rosterd.service > SHA256SUMS)

# Same bytes for the same sources: sorted names, no owners, one date.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --format=gnu -C "$dist" -cf - "$name" | gzip -9n > "$dist/$name.tar.gz"
(cd "$dist" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
rm -rf "$stage"

echo "release.sh: wrote" >&2
ls -l "$dist/$name.tar.gz" "$dist/$name.tar.gz.sha256" >&2
cat "$dist/$name.tar.gz.sha256"
