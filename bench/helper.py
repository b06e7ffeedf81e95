#!/usr/bin/env python3
"""Helpers for bench/run.sh (Python 3 standard library only).

Subcommands:
  wait-line FILE REGEX TIMEOUT      wait for a line of FILE matching REGEX; print group 1
  wait-health PORT TIMEOUT          wait for 200 from GET /api/health
  login PORT USERNAME PASSWORD      POST /api/token; print "ACCESS REFRESH"
  access PORT REFRESH               POST /api/token/refresh; print the access token
  owners PORT PASSWORD N            log in user1..userN; print "id:refresh,..."
  owners-access PORT ID:REFRESH,..  refresh each; print "id:access,..."
  probe PORT METHOD PATH [BODY] [TOKEN]
                                    one request; print "STATUS BYTES ITEMS FIRST_ID"
  startup BIN CONFIG DB RUNS SECRET median ms from exec to first 200 from /api/health
  hash-ceiling ITERATIONS RUNS      seconds of one PBKDF2 by `openssl kdf` (median)
  proc PID FIELD                    a /proc/PID/status field in KiB (VmRSS, VmHWM)
  wrk-json FILE                     the BENCHJSON line of a wrk output, as JSON
  fact FILE KEY.PATH VALUE          set a figure in the facts file (VALUE: JSON or text)
  fact-text FILE KEY.PATH VALUE     the same, VALUE always kept as text (a commit id)
  report RESULTS_DIR JSON_PATH      aggregate, print the markdown table, write JSON

For bench/soak.sh:
  tokens PORT PASSWORD N FILE       log in user1..userN; write "ID ACCESS REFRESH" lines
  rss-sample PID CSV T0 [WRK_PIDFILE]
                                    every second until PID is gone (or SIGTERM):
                                    t_s, VmRSS, VmHWM, fds, threads, CPU % of PID,
                                    of wrk, of the whole machine (100 = one core)
  soak-report WRK_OUT CSV FACTS JSON_OUT
                                    print the soak's markdown, write its JSON;
                                    exit 1 when it failed (5xx, errors, memory)
"""

import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def die(message):
    print(f"bench helper: {message}", file=sys.stderr)
    sys.exit(1)


def request(port, method, path, body=None, token=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=timeout)
    headers = {}
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, raw


def cmd_wait_line(path, regex, timeout):
    deadline = time.monotonic() + float(timeout)
    pattern = re.compile(regex)
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = pattern.search(line)
                    if m:
                        print(m.group(1))
                        return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    die(f"no line matching {regex!r} in {path} after {timeout}s")


def cmd_wait_health(port, timeout):
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        try:
            status, _ = request(port, "GET", "/api/health", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    die(f"GET /api/health on port {port} gave no 200 within {timeout}s")


def login(port, username, password):
    status, raw = request(port, "POST", "/api/token",
                          {"username": username, "password": password})
    if status != 200:
        die(f"login of {username} failed: {status} {raw[:300]!r}")
    pair = json.loads(raw)
    return pair["access"], pair["refresh"]


def access(port, refresh):
    status, raw = request(port, "POST", "/api/token/refresh", {"refresh": refresh})
    if status != 200:
        die(f"refresh failed: {status} {raw[:300]!r}")
    return json.loads(raw)["access"]


def cmd_owners(port, password, n):
    out = []
    for k in range(1, int(n) + 1):
        _, refresh = login(port, f"user{k}", password)
        out.append(f"{k}:{refresh}")
    print(",".join(out))


def cmd_owners_access(port, pairs):
    out = []
    for pair in pairs.split(","):
        uid, refresh = pair.split(":", 1)
        out.append(f"{uid}:{access(port, refresh)}")
    print(",".join(out))


def cmd_probe(port, method, path, body=None, token=None):
    data = body.encode() if body else None
    status, raw = request(port, method, path, data, token or None)
    items, first = "-", "-"
    try:
        value = json.loads(raw)
        if isinstance(value, dict) and isinstance(value.get("results"), list):
            value = value["results"]
        if isinstance(value, list):
            items = str(len(value))
            if value and isinstance(value[0], dict):
                first = str(value[0].get("id", "-"))
    except ValueError:
        pass
    print(status, len(raw), items, first)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_ok(port):
    """One raw GET /api/health; True on a 200, False when nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
            return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def cmd_startup(binary, config, db, runs, secret):
    """Median ms from exec to the first 200 of /api/health, over RUNS starts.

    DB "fresh" means a new, not yet existing file for every start;
    otherwise the given (seeded) file is opened each time.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROSTERD_")}
    env["ROSTERD_SECRET"] = secret
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(int(runs)):
            path = os.path.join(tmp, f"fresh{i}.sqlite3") if db == "fresh" else db
            port = free_port()
            args = [binary, "--config", config, "--db", path,
                    "serve", "--bind", f"127.0.0.1:{port}"]
            started = time.perf_counter()
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                while not health_ok(port):
                    if proc.poll() is not None:
                        die(f"rosterd exited with {proc.returncode} during start-up")
                    if time.perf_counter() - started > 10:
                        die("rosterd did not answer /api/health within 10s")
                    time.sleep(0.0005)
                times.append((time.perf_counter() - started) * 1000)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times),
                      "max_ms": max(times), "runs": times}))


def time_openssl(iterations):
    args = ["openssl", "kdf", "-keylen", "32", "-kdfopt", "digest:SHA256",
            "-kdfopt", "pass:x", "-kdfopt", "salt:saltsaltsaltsalt",
            "-kdfopt", f"iter:{iterations}", "PBKDF2"]
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def cmd_hash_ceiling(iterations, runs):
    """Seconds of one PBKDF2-HMAC-SHA256 by openssl, median of RUNS, minus the
    median cost of starting openssl (the same command at 1 iteration)."""
    overhead = statistics.median(time_openssl(1) for _ in range(int(runs)))
    full = statistics.median(time_openssl(int(iterations)) for _ in range(int(runs)))
    seconds = max(full - overhead, 1e-9)
    cores = os.cpu_count() or 1
    print(json.dumps({"seconds_per_hash": seconds, "exec_overhead_s": overhead,
                      "cores": cores, "rps": cores / seconds}))


def cmd_proc(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                print(line.split()[1])
                return
    die(f"no {field} in /proc/{pid}/status")


def wrk_json(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("BENCHJSON "):
                return json.loads(line[len("BENCHJSON "):])
    die(f"no BENCHJSON line in {path}")


# ---------------------------------------------------------------- report

TARGETS = {
    # scenario: (ceiling, minimum ratio to the ceiling; None: no ratio target)
    "get_user": ("hello", 0.30),
    "refresh": ("hello", 0.30),
    "login": ("hash", 0.85),
    "register": ("hash", 0.80),
    "update": ("sqlite", 0.80),
    "list_1k": ("hello", None),
    "list_page": ("hello", None),
}

# Absolute targets in req/s (no ceiling to divide by): list_1k, the listing
# of all 1,000 users, at least 10 times PocketBase's rate for the same
# listing (about 84 req/s on this kind of machine, 2 cores).
ABSOLUTE_TARGETS = {
    "list_1k": 840,
}


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "rounds": values}


def fmt_rate(s):
    if s is None:
        return "n/a"
    def f(v):
        return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"


def good_rps(run):
    """Requests/s counting only 2xx answers (wrk's status errors are non-2xx/3xx)."""
    e = run["errors"]
    good = run["requests"] - e["status"] - e["timeout"]
    return max(good, 0) / run["seconds"]


def load_runs(results, name):
    """Every round's wrk JSON of one scenario, in round order."""
    runs = []
    for file in sorted(os.listdir(results)):
        m = re.fullmatch(re.escape(name) + r"\.r(\d+)\.wrk", file)
        if m:
            runs.append((int(m.group(1)), wrk_json(os.path.join(results, file))))
    return [r for _, r in sorted(runs)]


def load_json_rounds(results, name):
    out = []
    for file in sorted(os.listdir(results)):
        m = re.fullmatch(re.escape(name) + r"\.r(\d+)\.json", file)
        if m:
            with open(os.path.join(results, file)) as f:
                out.append((int(m.group(1)), json.load(f)))
    return [v for _, v in sorted(out)]


def cmd_report(results, json_path):
    with open(os.path.join(results, "facts.json")) as f:
        facts = json.load(f)
    settings = facts["settings"]

    ceilings = {
        "hello": summary([r["rps"] for r in load_runs(results, "hello")]),
        "hash": summary([h["rps"] for h in load_json_rounds(results, "hash")]),
        "sqlite": summary([s["rps"] for s in load_json_rounds(results, "sqlite")]),
    }
    hash_runs = load_json_rounds(results, "hash")
    ceilings_detail = {
        "hash_seconds_per_hash": summary([h["seconds_per_hash"] for h in hash_runs]),
    }

    rows = []
    out = {"date": facts["date"], "machine": facts["machine"], "settings": settings,
           "source": facts.get("source"),
           "ceilings": ceilings, "ceilings_detail": ceilings_detail, "scenarios": {},
           "binary": facts["binary"], "memory": facts["memory"], "startup": facts["startup"]}

    scenario_names = ["get_user", "refresh", "login", "register", "update", "list_1k"]
    scenario_names += [f"list_page@{o}" for o in settings["list_page_offsets"]]
    for name in scenario_names:
        base = name.split("@")[0]
        ceiling_name, minimum = TARGETS[base]
        absolute = ABSOLUTE_TARGETS.get(base)
        runs = load_runs(results, name)
        if not runs:
            continue
        rate = summary([good_rps(r) for r in runs])
        ceiling = ceilings[ceiling_name]
        ratio = None
        if rate and ceiling and ceiling["median"] > 0:
            ratio = rate["median"] / ceiling["median"]
        non2xx = sum(r["errors"]["status"] for r in runs)
        socket_errors = sum(r["errors"][k] for r in runs
                            for k in ("connect", "read", "write", "timeout"))
        notes = []
        if non2xx:
            notes.append(f"{non2xx} non-2xx answers (not counted)")
        if socket_errors:
            notes.append(f"{socket_errors} socket errors/timeouts")
        if base == "list_page" and facts.get("list_page_pending"):
            notes.append("pending: limit/offset")
        if base == "list_page":
            notes.append(f"{settings['list_page_users']:,} users")
        if absolute is not None:
            notes.append("absolute target in req/s (10 × PocketBase's ~84 req/s), "
                         "not a ratio: it depends on the machine and its load")
        mbps = summary([r["mbps"] for r in runs])
        if base == "list_1k" and mbps:
            notes.append(f"{mbps['median']:.1f} MB/s ({mbps['min']:.1f}–{mbps['max']:.1f}),"
                         f" {runs[0]['bytes'] / max(runs[0]['requests'], 1) / 1e3:.0f} kB/answer")
        p99 = summary([r["latency_ms"]["p99"] for r in runs])
        notes.append(f"p99 {p99['median']:.1f} ms")
        passed = None
        if absolute is not None:
            target = f"≥ {absolute:,} req/s"
            if rate is not None:
                passed = rate["median"] >= absolute
        elif minimum is not None:
            target = f"≥ {minimum:.2f} × {ceiling_name}"
            if ratio is not None:
                passed = ratio >= minimum
        else:
            target = "report only"
        if absolute is None and minimum is None:
            verdict = "—"
        else:
            verdict = "n/a" if passed is None else ("pass" if passed else "FAIL")
        rows.append([name, fmt_rate(rate), f"{ceiling_name} {fmt_rate(ceiling)}",
                     "n/a" if ratio is None else f"{ratio:.2f}", target, verdict,
                     "; ".join(notes)])
        out["scenarios"][name] = {
            "rps": rate, "ceiling": ceiling_name, "ratio": ratio, "target_ratio": minimum,
            "target_rps": absolute, "pass": passed,
            "p99_ms": p99, "mbps": mbps, "non_2xx": non2xx, "socket_errors": socket_errors,
            "pending": bool(base == "list_page" and facts.get("list_page_pending")),
            "raw": runs,
        }

    # mixed: get_user under a login flood vs get_user alone (same round).
    mixed = load_runs(results, "mixed")
    alone = load_runs(results, "get_user")
    flood = load_runs(results, "mixed_flood")
    if mixed:
        ratios = [good_rps(m) / good_rps(a) for m, a in zip(mixed, alone) if good_rps(a) > 0]
        rate = summary([good_rps(m) for m in mixed])
        alone_rate = summary([good_rps(a) for a in alone])
        p99 = summary([m["latency_ms"]["p99"] for m in mixed])
        p99_alone = summary([a["latency_ms"]["p99"] for a in alone])
        ratio = summary(ratios)
        flood_rate = summary([good_rps(f) for f in flood])
        ok = ratio is not None and ratio["median"] >= 0.30 and p99["median"] < 100
        non2xx = sum(m["errors"]["status"] for m in mixed)
        notes = [f"get_user p99 {p99['median']:.1f} ms flooded vs "
                 f"{p99_alone['median']:.1f} ms alone",
                 f"logins/s during flood {fmt_rate(flood_rate)}"]
        if non2xx:
            notes.append(f"{non2xx} non-2xx answers (not counted)")
        rows.append(["mixed (get_user under login flood)", fmt_rate(rate),
                     f"get_user alone {fmt_rate(alone_rate)}",
                     f"{ratio['median']:.2f}" if ratio else "n/a",
                     "≥ 0.30 × alone, p99 < 100 ms", "pass" if ok else "FAIL",
                     "; ".join(notes)])
        out["scenarios"]["mixed"] = {
            "rps": rate, "alone_rps": alone_rate, "ratio": ratio, "p99_ms": p99,
            "p99_alone_ms": p99_alone, "flood_logins_rps": flood_rate, "pass": ok,
            "non_2xx": non2xx, "raw": mixed, "raw_flood": flood,
        }

    mib = 1024 * 1024
    size = facts["binary"]["stripped_bytes"]
    mem = facts["memory"]
    st = facts["startup"]
    other = [
        ["binary size (stripped)", f"{size / mib:.2f} MiB", "", "", "≤ 10 MiB",
         "pass" if size <= 10 * mib else "FAIL", f"{size:,} bytes"],
        ["memory idle (VmRSS)", f"{mem['idle_rss_kib'] / 1024:.1f} MiB", "", "", "≤ 10 MiB",
         "pass" if mem["idle_rss_kib"] <= 10 * 1024 else "FAIL",
         "1k-user server, 1 s after the first 200"],
        ["memory peak (VmHWM)", f"{mem['peak_hwm_kib'] / 1024:.1f} MiB", "", "", "≤ 64 MiB",
         "pass" if mem["peak_hwm_kib"] <= 64 * 1024 else "FAIL",
         "highest of the servers after all scenarios: " + ", ".join(
             f"{k} {v / 1024:.1f} MiB" for k, v in mem["hwm_kib"].items())],
    ]
    for key, label in (("existing_db", "seeded 1k-user db"), ("fresh_db", "new db file")):
        s = st[key]
        other.append([f"start-up to first 200 ({label})", f"{s['median_ms']:.1f} ms", "", "",
                      "≤ 20 ms", "pass" if s["median_ms"] <= 20 else "FAIL",
                      f"median of {len(s['runs'])} ({s['min_ms']:.1f}–{s['max_ms']:.1f})"])

    header = ["scenario", "req/s median (min–max)", "ceiling median (min–max)", "ratio",
              "target", "result", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows + other:
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)

    h = ceilings_detail["hash_seconds_per_hash"]
    settings_line = (
        f"Load: `wrk -t{settings['threads']} -c{settings['connections']} "
        f"-d{settings['duration']}s --timeout {settings['timeout']}`, "
        f"{settings['rounds']} round(s) per scenario and ceiling, interleaved; "
        f"mixed flood `wrk -t1 -c{settings['flood_connections']}` on POST /api/token; "
        f"{settings['users']:,} users (list_page: {settings['list_page_users']:,}); "
        f"PBKDF2 {settings['pbkdf2_iterations']:,} iterations; "
        f"hash ceiling = {facts['machine']['cores']} cores ÷ "
        + (f"{h['median'] * 1000:.0f} ms per openssl hash" if h else "n/a")
        + f"; sqlite ceiling = {settings['duration']}s loop of the PUT UPDATE, one connection, "
        "BEGIN IMMEDIATE each. Source: commit "
        f"{facts.get('source', {}).get('commit', '?')} + "
        f"{facts.get('source', {}).get('uncommitted_files', '?')} uncommitted file(s). "
        "Load average before/after: "
        f"{facts['machine'].get('loadavg_before', '?')} / "
        f"{facts['machine'].get('loadavg_after', '?')}.")
    out["table_markdown"] = table
    out["settings_line"] = settings_line
    print(table)
    print()
    print(settings_line)
    with open(json_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


def cmd_fact(path, dotted, value, as_text=False):
    """Set FACTS[a][b]... = VALUE (parsed as JSON when it is JSON, unless
    as_text) in file PATH."""
    try:
        with open(path) as f:
            facts = json.load(f)
    except FileNotFoundError:
        facts = {}
    try:
        parsed = value if as_text else json.loads(value)
    except ValueError:
        parsed = value
    keys = dotted.split(".")
    node = facts
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = parsed
    with open(path, "w") as f:
        json.dump(facts, f, indent=2)


def main():
    if len(sys.argv) < 2:
        die(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    table = {
        "wait-line": cmd_wait_line,
        "wait-health": cmd_wait_health,
        "login": lambda port, u, p: print(*login(port, u, p)),
        "access": lambda port, r: print(access(port, r)),
        "owners": cmd_owners,
        "owners-access": cmd_owners_access,
        "probe": cmd_probe,
        "startup": cmd_startup,
        "hash-ceiling": cmd_hash_ceiling,
        "proc": cmd_proc,
        "wrk-json": lambda path: print(json.dumps(wrk_json(path))),
        "report": cmd_report,
        "fact": cmd_fact,
        # A commit like 8e21073 or 1234567 is text, not a number.
        "fact-text": lambda path, dotted, value: cmd_fact(path, dotted, value, True),
    }
    if cmd not in table:
        die(f"unknown subcommand {cmd}\n{__doc__}")
    table[cmd](*args)



# ---------------------------------------------------------------- soak (bench/soak.sh)

def cmd_tokens(port, password, n, path):
    """Log in user1..userN; write one "ID ACCESS REFRESH" line each to PATH."""
    lines = []
    for k in range(1, int(n) + 1):
        acc, ref = login(port, f"user{k}", password)
        status, raw = request(port, "GET", "/api/users/me", token=acc)
        if status != 200:
            die(f"GET /api/users/me as user{k}: {status} {raw[:200]!r}")
        lines.append(f"{json.loads(raw)['id']} {acc} {ref}\n")
    with open(path, "w") as f:
        f.writelines(lines)


def _proc_jiffies(pid):
    """utime + stime of PID, in clock ticks; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def _machine_jiffies():
    """(busy, total) clock ticks of all cores together, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def _status_fields(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def cmd_rss_sample(pid, csv_path, t0, wrk_pidfile=None):
    """Sample PID every second into CSV_PATH until PID exits or SIGTERM.

    t_s is seconds since the epoch time T0 (the load's start: negative
    before it). CPU columns are percent of one core over the last second.
    """
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    tick = os.sysconf("SC_CLK_TCK")
    t0 = float(t0)
    prev = None
    with open(csv_path, "w") as out:
        out.write("t_s,rss_kib,hwm_kib,fds,threads,server_cpu_pct,wrk_cpu_pct,machine_cpu_pct\n")
        next_at = time.time()
        while not stop:
            now = time.time()
            try:
                st = _status_fields(pid)
                fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                break
            wrk_pid = None
            if wrk_pidfile:
                try:
                    with open(wrk_pidfile) as f:
                        wrk_pid = int(f.read().strip() or 0) or None
                except (OSError, ValueError):
                    wrk_pid = None
            server_j = _proc_jiffies(pid)
            wrk_j = _proc_jiffies(wrk_pid) if wrk_pid else None
            busy, total = _machine_jiffies()
            cur = (now, server_j, wrk_j, busy, total)
            cpu = ["", "", ""]
            if prev is not None:
                wall = now - prev[0]
                if wall > 0:
                    if server_j is not None and prev[1] is not None:
                        cpu[0] = f"{(server_j - prev[1]) / tick / wall * 100:.1f}"
                    if wrk_j is not None and prev[2] is not None:
                        cpu[1] = f"{(wrk_j - prev[2]) / tick / wall * 100:.1f}"
                    elif wrk_j is None and wrk_pid is None:
                        cpu[1] = "0.0"
                    if total > prev[4]:
                        cores = os.cpu_count() or 1
                        cpu[2] = f"{(busy - prev[3]) / (total - prev[4]) * cores * 100:.1f}"
            prev = cur
            out.write(f"{now - t0:.2f},{st.get('VmRSS', '')},{st.get('VmHWM', '')},{fds},"
                      f"{st.get('Threads', '')},{cpu[0]},{cpu[1]},{cpu[2]}\n")
            out.flush()
            next_at += 1.0
            delay = next_at - time.time()
            if delay < 0:
                next_at = time.time()
                delay = 0
            # sleep in small steps so that SIGTERM ends the loop promptly
            end = time.time() + delay
            while not stop and time.time() < end:
                time.sleep(min(0.1, max(end - time.time(), 0)))


def _read_samples(csv_path):
    import csv
    rows = []
    with open(csv_path) as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                row[k] = float(v) if v not in ("", None) else None
            rows.append(row)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(v, spec=".0f", none="n/a"):
    return none if v is None else format(v, spec)


def cmd_soak_report(wrk_out, csv_path, facts_path, json_path):
    with open(facts_path) as f:
        facts = json.load(f)
    s = facts["settings"]
    duration = float(s["duration"])
    expected_4xx = {str(x) for x in s.get("expected_4xx", [])}
    run = wrk_json(wrk_out)
    samples = _read_samples(csv_path)

    # ---- answers
    statuses = {k: int(v) for k, v in run["statuses"].items()}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    five = {k: v for k, v in statuses.items() if k.startswith("5")}
    four_expected = {k: v for k, v in statuses.items() if k in expected_4xx}
    other_bad = {k: v for k, v in statuses.items()
                 if not k.startswith("2") and not k.startswith("5") and k not in expected_4xx}
    non2xx = {k: v for k, v in statuses.items() if not k.startswith("2")}
    e = run["errors"]
    socket_errors = {k: e[k] for k in ("connect", "read", "write", "timeout")}
    answered = sum(statuses.values())

    # ---- memory: peak of the second minute vs peak of the last minute
    # (runs shorter than 3 minutes: the second and the last fifth instead)
    if duration >= 180:
        win_a, win_b = (60.0, 120.0), (duration - 60.0, duration)
        win_label = ("second minute", "last minute")
    else:
        fifth = duration / 5
        win_a, win_b = (fifth, 2 * fifth), (duration - fifth, duration)
        win_label = ("second fifth", "last fifth")

    def window(lo, hi):
        return [r for r in samples if lo <= r["t_s"] < hi and r["rss_kib"] is not None]

    a, b = window(*win_a), window(*win_b)
    peak_a = max((r["rss_kib"] for r in a), default=None)
    peak_b = max((r["rss_kib"] for r in b), default=None)
    ratio = peak_b / peak_a if peak_a and peak_b else None
    before = [r for r in samples if r["t_s"] < 0 and r["rss_kib"] is not None]
    during = [r for r in samples if 0 <= r["t_s"] < duration and r["rss_kib"] is not None]
    after = [r for r in samples if r["t_s"] >= duration + 1 and r["rss_kib"] is not None]
    rss_start = before[-1]["rss_kib"] if before else (during[0]["rss_kib"] if during else None)
    rss_end_load = during[-1]["rss_kib"] if during else None
    rss_after = after[-1]["rss_kib"] if after else None
    peak_all = max((r["rss_kib"] for r in during), default=None)
    hwm_end = samples[-1]["hwm_kib"] if samples else None
    fds_start = before[-1]["fds"] if before else None
    fds_after = after[-1]["fds"] if after else None

    # ---- per minute (or per fifth on short runs)
    per_second = run.get("answers_per_second", [])
    step = 60.0 if duration >= 180 else duration / 5
    periods = []
    t = 0.0
    while t < duration - 1e-6:
        hi = min(t + step, duration)
        rows = [r for r in samples if t <= r["t_s"] < hi]
        secs = per_second[int(t):int(hi)]
        server = _mean([r["server_cpu_pct"] for r in rows])
        wrk_cpu = _mean([r["wrk_cpu_pct"] for r in rows])
        machine = _mean([r["machine_cpu_pct"] for r in rows])
        others = None
        if machine is not None and server is not None:
            others = max(machine - server - (wrk_cpu or 0), 0.0)
        periods.append({
            "from_s": t, "to_s": hi,
            "answers_per_s": (sum(secs) / len(secs)) if secs else None,
            "rss_peak_kib": max((r["rss_kib"] for r in rows if r["rss_kib"]), default=None),
            "rss_mean_kib": _mean([r["rss_kib"] for r in rows]),
            "fds_max": max((r["fds"] for r in rows if r["fds"] is not None), default=None),
            "server_cpu_pct": server, "wrk_cpu_pct": wrk_cpu,
            "machine_cpu_pct": machine, "others_cpu_pct": others,
        })
        t = hi

    # ---- verdict
    failures = []
    if five:
        failures.append(f"{sum(five.values())} 5xx answers ({five})")
    if other_bad:
        failures.append(f"{sum(other_bad.values())} unexpected non-2xx answers ({other_bad})")
    if sum(socket_errors.values()):
        failures.append(f"socket errors {socket_errors}")
    if ratio is None:
        failures.append("memory: not enough RSS samples to compare")
    elif ratio > 1.10:
        failures.append(f"memory grew: {win_label[1]} peak {peak_b / 1024:.1f} MiB is "
                        f"{(ratio - 1) * 100:.1f}% over the {win_label[0]}'s {peak_a / 1024:.1f} MiB")
    if run["requests"] == 0:
        failures.append("no requests completed")
    passed = not failures

    mib = lambda k: None if k is None else k / 1024  # noqa: E731
    lat = run["latency_ms"]
    issued = run.get("issued", {})
    issued_total = sum(issued.values()) or 1
    mix = ", ".join(f"{k} {issued.get(k, 0) / issued_total * 100:.1f}%"
                    for k in ("get", "refresh", "patch", "list", "register"))

    out = {
        "date": facts.get("date"), "machine": facts.get("machine"), "source": facts.get("source"),
        "settings": s, "pass": passed, "failures": failures,
        "requests": run["requests"], "answered": answered, "ok_2xx": ok,
        "rps": run["rps"], "seconds": run["seconds"], "bytes": run["bytes"],
        "latency_ms": lat, "statuses": statuses, "non_2xx": non2xx, "5xx": five,
        "expected_4xx": four_expected, "unexpected_non_2xx": other_bad,
        "socket_errors": socket_errors, "issued_by_kind": issued,
        "memory": {
            "windows": {win_label[0]: list(win_a), win_label[1]: list(win_b)},
            "peak_a_kib": peak_a, "peak_b_kib": peak_b, "ratio": ratio,
            "target_ratio_max": 1.10,
            "rss_start_kib": rss_start, "rss_end_under_load_kib": rss_end_load,
            "rss_after_load_kib": rss_after, "peak_under_load_kib": peak_all,
            "vmhwm_end_kib": hwm_end, "fds_start": fds_start, "fds_after": fds_after,
            "samples": len(samples),
        },
        "periods": periods,
        "answers_per_second": per_second,
        "non2xx_samples": run.get("non2xx_samples", []),
    }

    def status_text(d):
        return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items())) or "none"

    rows = [
        ["duration", f"{run['seconds']:.1f} s"],
        ["requests (completed)", f"{run['requests']:,}"],
        ["req/s", f"{run['rps']:,.1f}"],
        ["mix as issued", mix],
        ["latency p50 / p90 / p99 / max",
         f"{lat['p50']:.1f} / {lat['p90']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} ms"],
        ["statuses", status_text(statuses)],
        ["non-2xx", f"{sum(non2xx.values()):,} ({status_text(non2xx)})"],
        ["5xx", f"{sum(five.values()):,}"],
        ["unexpected non-2xx (not 5xx)", f"{sum(other_bad.values()):,}"],
        ["socket errors (connect/read/write/timeout)",
         "/".join(str(socket_errors[k]) for k in ("connect", "read", "write", "timeout"))],
        ["RSS at start (idle, before load)", f"{_fmt(mib(rss_start), '.1f')} MiB"],
        [f"RSS peak, {win_label[0]} ({win_a[0]:.0f}–{win_a[1]:.0f} s)",
         f"{_fmt(mib(peak_a), '.1f')} MiB"],
        [f"RSS peak, {win_label[1]} ({win_b[0]:.0f}–{win_b[1]:.0f} s)",
         f"{_fmt(mib(peak_b), '.1f')} MiB"],
        ["ratio last / second (target ≤ 1.10)", _fmt(ratio, ".3f")],
        ["RSS at end of load / after load", f"{_fmt(mib(rss_end_load), '.1f')} / "
         f"{_fmt(mib(rss_after), '.1f')} MiB"],
        ["peak RSS under load / VmHWM", f"{_fmt(mib(peak_all), '.1f')} / "
         f"{_fmt(mib(hwm_end), '.1f')} MiB"],
        ["open fds before / after", f"{_fmt(fds_start)} / {_fmt(fds_after)}"],
        ["result", "pass" if passed else "FAIL: " + "; ".join(failures)],
    ]
    lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    unit = "minute" if duration >= 180 else "fifth"
    lines += ["", f"| {unit} | answers/s | RSS peak (MiB) | RSS mean (MiB) | max fds | "
              "rosterd CPU % | wrk CPU % | machine CPU % | others' CPU % |",
              "|---|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(periods, 1):
        lines.append(
            f"| {i} ({p['from_s']:.0f}–{p['to_s']:.0f} s) | {_fmt(p['answers_per_s'], ',.0f')} | "
            f"{_fmt(mib(p['rss_peak_kib']), '.1f')} | {_fmt(mib(p['rss_mean_kib']), '.1f')} | "
            f"{_fmt(p['fds_max'])} | {_fmt(p['server_cpu_pct'])} | {_fmt(p['wrk_cpu_pct'])} | "
            f"{_fmt(p['machine_cpu_pct'])} | {_fmt(p['others_cpu_pct'])} |")
    settings_line = (
        f"Load: `wrk -t{s['threads']} -c{s['connections']} -d{s['duration']:.0f}s "
        f"--timeout {s['timeout']}` with bench/lua/soak_mixed.lua, weights "
        f"get/refresh/patch/list/register = {s['weights']} %; {s['users']:,} seeded users, "
        f"a pool of {s['token_pool']} logged-in owners; PBKDF2 {s['pbkdf2_iterations']:,} "
        f"iterations (registrations dominate the CPU); access token lifetime "
        f"{s['access_token_lifetime']} s (so that tokens made before the run outlive it); "
        f"rate limiting off. CPU % = percent of one core ({facts['machine']['cores']} cores). "
        f"Load average before/after: {facts['machine'].get('loadavg_before', '?')} / "
        f"{facts['machine'].get('loadavg_after', '?')}. Source: commit "
        f"{facts.get('source', {}).get('commit', '?')} + "
        f"{facts.get('source', {}).get('uncommitted_files', '?')} uncommitted file(s).")
    samples_text = run.get("non2xx_samples", [])
    md = "\n".join(lines) + "\n\n" + settings_line + "\n"
    if samples_text:
        md += "\nFirst non-2xx answers:\n" + "".join(f"- `{x}`\n" for x in samples_text)
    out["table_markdown"] = md
    print(md)
    with open(json_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    if not passed:
        print("soak: FAIL: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


SOAK_COMMANDS = {
    "tokens": cmd_tokens,
    "rss-sample": cmd_rss_sample,
    "soak-report": cmd_soak_report,
}


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] in SOAK_COMMANDS:
        SOAK_COMMANDS[sys.argv[1]](*sys.argv[2:])
    else:
        main()
