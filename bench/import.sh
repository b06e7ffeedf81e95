#!/usr/bin/env bash
# How long `rosterd import django` takes for 100,000 users, and its peak
# memory (issue: "100,000 users import in <= 10 s with <= 64 MiB").
#
# Builds the release binary, makes a Django SQLite database of N users
# (default 100,000) from the checked-in fixture tests/fixtures/moving_in/
# django_auth.sqlite3 (its schema and one of its real pbkdf2_sha256 hashes)
# and its dumpdata JSON, and imports each into a fresh rosterd database
# under /usr/bin/time. Prints one line per source.
#
# Usage: bash bench/import.sh [N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-100000}
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$n" <<'PY'
import json, shutil, sqlite3, sys
work, n = sys.argv[1], int(sys.argv[2])
shutil.copy("tests/fixtures/moving_in/django_auth.sqlite3", f"{work}/django.sqlite3")
db = sqlite3.connect(f"{work}/django.sqlite3")
hash_ = db.execute("SELECT password FROM auth_user WHERE password LIKE 'pbkdf2_sha256$%'").fetchone()[0]
db.executescript("DELETE FROM token_blacklist_blacklistedtoken; "
                 "DELETE FROM token_blacklist_outstandingtoken; DELETE FROM auth_user;")
rows = [(i, hash_, f"user{i}", f"user{i}@example.com") for i in range(1, n + 1)]
db.executemany("INSERT INTO auth_user (id, password, is_superuser, username, first_name, "
               "last_name, email, is_staff, is_active, date_joined) "
               "VALUES (?, ?, 0, ?, '', '', ?, 0, 1, '2020-01-01 00:00:00.123456')", rows)
db.commit()
with open(f"{work}/django.json", "w") as out:
    out.write("[")
    for i, (pk, h, name, email) in enumerate(rows):
        entry = {"model": "auth.user", "pk": pk, "fields": {
            "password": h, "last_login": None, "is_superuser": False, "username": name,
            "first_name": "", "last_name": "", "email": email, "is_staff": False,
            "is_active": True, "date_joined": "2020-01-01T00:00:00.123Z",
            "groups": [], "user_permissions": []}}
        out.write(("," if i else "") + json.dumps(entry))
    out.write("]")
PY
printf '[auth]\nsecret = "%s"\n' "$(openssl rand -hex 32)" > "$work/c.toml"
chmod 600 "$work/c.toml"
for source in django.sqlite3 django.json; do
    rm -f "$work"/r.sqlite3*
    /usr/bin/time -f "$source: $n users in %e s, peak memory %M KiB" \
        target/release/rosterd --config "$work/c.toml" --db "$work/r.sqlite3" \
        import django "$work/$source" 2>&1 >/dev/null | tail -1
done
