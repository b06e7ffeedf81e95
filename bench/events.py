#!/usr/bin/env python3
"""Load generator for rosterd's change stream, GET /api/events
(bench/events.sh; Python 3 standard library only).

One asyncio process. Every stream is a raw non-blocking TCP socket speaking
HTTP/1.1, read with recvmsg() and SO_TIMESTAMPNS: each read carries the
kernel's receive time of its last byte, so an event's arrival time is when
it reached this machine's socket, not when this process got round to it
(how far behind the process ran is reported as `generator lag`). The
chunked body and the SSE lines are parsed incrementally.

Subcommands:
  fanout --port P --pid PID --streams N --seconds S --out FILE [--memory]
      register N/16 users (+1 that writes) through the API, log each in once,
      open N streams (?presence=false, 16 a user), then PATCH the writer's
      level once a second for S seconds; for each PATCH, the time from its
      reply to the matching event (user id + level) on every stream.
      --memory: VmRSS of PID idle (users made, no stream) and with the N
      streams open and idle, before the PATCHes.
  churn --port P --pid PID --rate R --seconds S --users U --grace G --out FILE
      presence streams opening (and closing) at R a second for S seconds over
      U users, then: streams of a random half of the users closed, the rest
      kept; after the grace window every user's status (GET /api/users/{id})
      must be `online` iff a stream of theirs is open; then all closed, and
      after the grace window every user must be `offline`.
  report --results DIR --json OUT
      the markdown table of DIR/*.json; writes OUT; exit 1 if a target failed.
"""

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import re
import resource
import socket
import struct
import sys
import time

PASSWORD = "Bench-Pass-7fq2-Zx!"
PER_USER = 16  # events.max_streams_per_user, default
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
ANC_SPACE = socket.CMSG_SPACE(16)
NS = 1_000_000_000


def log(message):
    print(f"[events {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def dist_ms(values_ns):
    """p50/p99/max/min in ms of a list of nanosecond durations."""
    s = sorted(values_ns)
    if not s:
        return {"n": 0}
    return {"n": len(s), "min": s[0] / 1e6, "p50": pct(s, 0.50) / 1e6,
            "p99": pct(s, 0.99) / 1e6, "max": s[-1] / 1e6}


def kernel_ts(ancdata, fallback):
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack_from("qq", raw)
            return sec * NS + nsec
    return fallback


def new_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ---------------------------------------------------------------- plain requests (setup, checks)

def dechunk(body):
    out, pos = [], 0
    while True:
        i = body.find(b"\r\n", pos)
        if i < 0:
            break
        size = int(body[pos:i].split(b";", 1)[0], 16)
        if size == 0:
            break
        out.append(body[i + 2:i + 2 + size])
        pos = i + 2 + size + 2
    return b"".join(out)


async def http(port, method, path, body=None, token=None, timeout=30):
    """One request on its own connection (Connection: close): (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data)
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        payload = dechunk(payload)
    return status, payload


async def make_users(port, prefix, n, concurrency=4):
    """Register prefix1..prefixN through the API, log each in once:
    [(id, access)]. Logins cost one password hash each (the server runs at
    ROSTERD_AUTH_PBKDF2_ITERATIONS=1000 here)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(k):
        name = f"{prefix}{k}"
        async with gate:
            status, raw = await http(port, "POST", "/api/users",
                                     {"username": name, "email": f"{name}@example.com",
                                      "password": PASSWORD})
            if status != 201:
                raise RuntimeError(f"register {name}: {status} {raw[:200]!r}")
            uid = json.loads(raw)["id"]
            status, raw = await http(port, "POST", "/api/token",
                                     {"username": name, "password": PASSWORD})
            if status != 200:
                raise RuntimeError(f"login {name}: {status} {raw[:200]!r}")
            return uid, json.loads(raw)["access"]

    t0 = time.monotonic()
    users = await asyncio.gather(*(one(k) for k in range(1, n + 1)))
    log(f"{n} users registered and logged in ({time.monotonic() - t0:.1f} s)")
    return users


# ---------------------------------------------------------------- one SSE stream

class Stream:
    """An open GET /api/events, parsed as it arrives. `on_event(stream,
    kind, id, data, kernel_ns, now_ns)` for each event; `on_end(stream,
    why)` when it ends other than by close()."""

    __slots__ = ("loop", "sock", "fd", "index", "user", "on_event", "on_end", "head",
                 "status", "left", "pend", "lines", "kind", "eid", "data", "ready",
                 "ready_ns", "closed", "ended", "comments", "error_body", "opened_ns",
                 "close_ns", "tag")

    def __init__(self, loop, sock, index, user, on_event, on_end):
        self.loop, self.sock, self.fd = loop, sock, sock.fileno()
        self.index, self.user = index, user
        self.on_event, self.on_end = on_event, on_end
        self.head = b""
        self.status = None
        self.left = 0          # >0: bytes of chunk data to come; <0: CRLF to skip; 0: size line
        self.pend = b""
        self.lines = b""
        self.kind = self.eid = self.data = None
        self.ready = loop.create_future()
        self.ready_ns = None
        self.closed = False    # by us
        self.ended = None      # why it ended otherwise
        self.comments = 0
        self.error_body = b""
        self.opened_ns = time.time_ns()
        self.close_ns = None
        self.tag = None

    def readable(self):
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._end(f"recv: {err.strerror}")
            return
        now = time.time_ns()
        if not data:
            self._end("closed by the server" if self.status == 200 else "eof before a reply")
            return
        ts = kernel_ts(anc, now)
        if self.status is None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            head, data = self.head[:i], self.head[i + 4:]
            self.head = b""
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                self.error_body = data[:300]
                self._end(f"status {self.status}")
                return
            if b"transfer-encoding: chunked" not in head.lower():
                self._end("reply not chunked")
                return
            if not data:
                return
        self._body(data, ts, now)

    def _body(self, data, ts, now):
        buf = self.pend + data if self.pend else data
        self.pend = b""
        pos, n, out = 0, len(buf), []
        while pos < n:
            left = self.left
            if left > 0:
                take = min(left, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.left = left - take or -2
            elif left < 0:
                take = min(-left, n - pos)
                pos += take
                self.left = left + take
            else:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    self.pend = buf[pos:]
                    break
                size = int(buf[pos:i].split(b";", 1)[0], 16)
                pos = i + 2
                if size == 0:
                    self._end("the server ended the stream")
                    return
                self.left = size
        if out:
            self._lines(out[0] if len(out) == 1 else b"".join(out), ts, now)

    def _lines(self, text, ts, now):
        buf = self.lines + text if self.lines else text
        start = 0
        while True:
            i = buf.find(b"\n", start)
            if i < 0:
                break
            line = buf[start:i]
            start = i + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if self.data is not None:
                    kind = self.kind or b"message"
                    if kind == b"ready" and not self.ready.done():
                        self.ready_ns = ts
                        self.ready.set_result(True)
                    self.on_event(self, kind, self.eid, self.data, ts, now)
                self.kind = self.eid = self.data = None
            elif line[0] == 58:  # ':' a comment (keep-alive)
                self.comments += 1
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self.data = value if self.data is None else self.data + b"\n" + value
                elif name == b"event":
                    self.kind = value
                elif name == b"id":
                    self.eid = value
        self.lines = buf[start:]

    def _end(self, why):
        if self.closed or self.ended:
            return
        self.ended = why
        self._drop()
        if not self.ready.done():
            self.ready.set_result(False)
        self.on_end(self, why)

    def _drop(self):
        try:
            self.loop.remove_reader(self.fd)
        except (ValueError, OSError):
            pass
        self.sock.close()

    def close(self):
        if self.closed or self.ended:
            return
        self.closed = True
        self.close_ns = time.time_ns()
        self._drop()


def ignore(*_):
    pass


async def open_stream(loop, port, token, presence, index, user, on_event, on_end, timeout=30):
    """Connects, asks for the stream, waits for `ready`: the Stream (check
    .ended for why it failed)."""
    sock = new_socket()
    path = "/api/events" if presence else "/api/events?presence=false"
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode()
    stream = Stream(loop, sock, index, user, on_event, on_end)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
        await asyncio.wait_for(loop.sock_sendall(sock, request), timeout)
    except (OSError, asyncio.TimeoutError) as err:
        sock.close()
        stream.ended = f"connect: {getattr(err, 'strerror', None) or type(err).__name__}"
        on_end(stream, stream.ended)
        return stream
    loop.add_reader(stream.fd, stream.readable)
    try:
        await asyncio.wait_for(asyncio.shield(stream.ready), timeout)
    except asyncio.TimeoutError:
        stream._end("no ready within %d s" % timeout)
    return stream


# ---------------------------------------------------------------- a keep-alive connection for PATCHes

class Client:
    """Requests one after another on one keep-alive connection; each reply
    comes with the kernel's receive time of its last byte."""

    def __init__(self, loop, port):
        self.loop, self.port = loop, port
        self.sock = None
        self.buf = b""
        self.waiter = None

    async def connect(self):
        self.sock = new_socket()
        await self.loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self):
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            data, anc = b"", []
            if self.waiter and not self.waiter.done():
                self.waiter.set_exception(err)
            return
        now = time.time_ns()
        if not data:
            if self.waiter and not self.waiter.done():
                self.waiter.set_exception(ConnectionError("closed by the server"))
            self.loop.remove_reader(self.sock.fileno())
            return
        self.buf += data
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = self.buf[:i].decode("latin-1")
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < i + 4 + length:
            return
        body = self.buf[i + 4:i + 4 + length]
        self.buf = self.buf[i + 4 + length:]
        if self.waiter and not self.waiter.done():
            self.waiter.set_result((int(head.split(" ", 2)[1]), body, kernel_ts(anc, now), now))

    async def request(self, method, path, body, token, timeout=30):
        data = json.dumps(body).encode()
        raw = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
               f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        self.waiter = self.loop.create_future()
        sent = time.time_ns()
        await self.loop.sock_sendall(self.sock, raw)
        status, body, ts, now = await asyncio.wait_for(self.waiter, timeout)
        return status, body, sent, ts

    def close(self):
        if self.sock:
            try:
                self.loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self.sock.close()


async def open_many(loop, port, tokens, n, presence, on_event, on_end, concurrency=128):
    """n streams, stream i as user i // PER_USER: (streams, seconds)."""
    gate = asyncio.Semaphore(concurrency)
    streams = [None] * n

    async def one(i):
        uid, token = tokens[i // PER_USER]
        async with gate:
            streams[i] = await open_stream(loop, port, token, presence, i, uid, on_event, on_end)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return streams, time.monotonic() - t0


# ---------------------------------------------------------------- fanout (+ memory)

async def fanout(args):
    loop = asyncio.get_running_loop()
    n, seconds = args.streams, args.seconds
    result = {"scenario": "events_fanout", "streams": n, "patches": seconds,
              "streams_per_user": PER_USER, "nofile": raise_nofile()}
    n_users = -(-n // PER_USER)
    users = await make_users(args.port, f"f{n}u", n_users + 1)
    writer_id, writer_token = users[-1]
    tokens = users[:-1]
    result["users"] = n_users

    if args.memory:
        await asyncio.sleep(1.0)
        result["rss_idle_kib"] = proc_kib(args.pid, "VmRSS")
        log(f"server VmRSS idle ({n_users + 1} users, no stream): {result['rss_idle_kib']} KiB")

    # Deliveries: arrival[k][i] = kernel ns of PATCH k's event on stream i.
    base_level = 1000
    arrival = [[0] * n for _ in range(seconds)]
    by_event_id = {}       # event id -> k (or -1: not ours)
    counts = {"duplicates": 0, "resets": 0, "other_events": 0, "ended": 0}
    lags = []              # now - kernel time, per delivery
    ended = {}

    def on_event(stream, kind, eid, data, ts, now):
        if kind != b"user.updated":
            if kind == b"reset":
                counts["resets"] += 1
            elif kind != b"ready":
                counts["other_events"] += 1
            return
        k = by_event_id.get(eid)
        if k is None:
            user = json.loads(data)
            level = user.get("level", -1) - base_level
            k = level if user.get("id") == writer_id and 0 <= level < seconds else -1
            by_event_id[eid] = k
        if k < 0:
            counts["other_events"] += 1
            return
        row = arrival[k]
        if row[stream.index]:
            counts["duplicates"] += 1
            return
        row[stream.index] = ts
        lags.append(now - ts)

    def on_end(stream, why):
        counts["ended"] += 1
        ended[why] = ended.get(why, 0) + 1

    log(f"opening {n:,} streams (?presence=false, {PER_USER} a user, 128 at a time)")
    streams, took = await open_many(loop, args.port, tokens, n, False, on_event, on_end)
    ok = sum(1 for s in streams if s.ready.done() and s.ready.result() and not s.ended)
    result["open"] = {"ok": ok, "failed": n - ok, "seconds": round(took, 2),
                      "failures": dict(ended),
                      "ready_ms": dist_ms([s.ready_ns - s.opened_ns for s in streams if s.ready_ns])}
    statuses = {}
    for s in streams:
        if s.status and s.status != 200:
            statuses[s.status] = statuses.get(s.status, 0) + 1
    result["open"]["statuses"] = {str(k): v for k, v in statuses.items()}
    log(f"{ok:,}/{n:,} streams open in {took:.1f} s" + (f"; failures: {dict(ended)}" if ended else ""))
    counts["ended"] = 0
    ended.clear()

    if args.memory:
        await asyncio.sleep(2.0)
        rss = proc_kib(args.pid, "VmRSS")
        result["rss_streams_kib"] = rss
        result["rss_streams_open"] = sum(1 for s in streams if not s.ended)
        result["per_stream_kib"] = (rss - result["rss_idle_kib"]) / max(1, result["rss_streams_open"])
        log(f"server VmRSS with {result['rss_streams_open']:,} idle streams: {rss} KiB "
            f"({result['per_stream_kib']:.2f} KiB a stream over idle)")

    # One PATCH a second, on one keep-alive connection.
    client = Client(loop, args.port)
    await client.connect()
    replies = [None] * seconds
    patch_errors = []
    cpu_self0, cpu_srv0, wall0 = self_cpu_seconds(), proc_cpu_seconds(args.pid), time.monotonic()
    start = time.monotonic() + 0.5
    for k in range(seconds):
        await asyncio.sleep(max(0.0, start + k - time.monotonic()))
        try:
            status, body, sent, ts = await client.request(
                "PATCH", f"/api/users/{writer_id}", {"level": base_level + k}, writer_token)
        except (OSError, asyncio.TimeoutError, ConnectionError) as err:
            patch_errors.append(f"PATCH {k}: {err!r}")
            continue
        if status != 200 or json.loads(body).get("level") != base_level + k:
            patch_errors.append(f"PATCH {k}: {status} {body[:200]!r}")
            continue
        replies[k] = ts
        result.setdefault("patch_ms", []).append(round((ts - sent) / 1e6, 3))
    # Wait for the stragglers: every open stream, every event.
    want = [i for i, s in enumerate(streams) if not s.ended]
    deadline = time.monotonic() + (5 if n <= 1000 else 15)
    while time.monotonic() < deadline:
        if all(arrival[k][i] for k in range(seconds) if replies[k] for i in want):
            break
        await asyncio.sleep(0.1)
    wall = time.monotonic() - wall0
    result["generator_cpu_pct"] = round(100 * (self_cpu_seconds() - cpu_self0) / wall, 1)
    result["server_cpu_pct"] = round(100 * (proc_cpu_seconds(args.pid) - cpu_srv0) / wall, 1)
    client.close()

    latencies, missing, first_last = [], 0, []
    per_event = []
    for k in range(seconds):
        if replies[k] is None:
            continue
        row = arrival[k]
        got = [row[i] - replies[k] for i in range(n) if row[i]]
        missing += n - len(got)
        latencies.extend(got)
        if got:
            per_event.append({"patch": k, "delivered": len(got), "p50_ms": round(pct(sorted(got), .5) / 1e6, 2),
                              "last_ms": round(max(got) / 1e6, 2)})
    complete = sum(1 for i in range(n)
                   if all(arrival[k][i] for k in range(seconds) if replies[k]))
    sent_ok = sum(1 for r in replies if r)
    result.update({
        "patches_ok": sent_ok,
        "patch_errors": patch_errors,
        "deliveries": len(latencies),
        "expected": sent_ok * n,
        "missing": missing,
        "streams_complete": complete,
        "latency_ms": dist_ms(latencies),
        "per_event": per_event,
        "generator_lag_ms": dist_ms(lags),
        "duplicates": counts["duplicates"],
        "resets": counts["resets"],
        "other_events": counts["other_events"],
        "ended_during_run": dict(ended),
    })
    if args.memory:
        result["rss_after_kib"] = proc_kib(args.pid, "VmRSS")
        result["hwm_kib"] = proc_kib(args.pid, "VmHWM")
    lat = result["latency_ms"]
    log(f"{n:,} streams: {len(latencies):,}/{sent_ok * n:,} deliveries, "
        f"p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms, max {lat.get('max', 0):.1f} ms; "
        f"generator CPU {result['generator_cpu_pct']}%, server CPU {result['server_cpu_pct']}%")
    for s in streams:
        s.close()
    return result


# ---------------------------------------------------------------- presence churn

async def churn(args):
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed)
    result = {"scenario": "presence_churn", "rate": args.rate, "seconds": args.seconds,
              "users": args.users, "grace_seconds": args.grace, "nofile": raise_nofile()}
    users = await make_users(args.port, "c", args.users + 1)
    monitor_id, monitor_token = users[-1]
    pool = users[:-1]
    pool_ids = [uid for uid, _ in pool]
    token_of = dict(pool)
    cap = PER_USER - 4          # our own count of a user's streams stays below the limit

    # The monitor (?presence=false): every status change as the streams see it.
    status_seen = {}            # user id -> (status, kernel ns) of the latest event
    transitions = {"online": 0, "offline": 0}
    offline_events = []         # (user id, kernel ns)
    timeline = {uid: [] for uid in pool_ids}   # (kernel ns, status) at each change

    def on_monitor(stream, kind, eid, data, ts, now):
        if kind != b"user.updated":
            return
        user = json.loads(data)
        uid, status = user.get("id"), user.get("status")
        if uid in token_of:
            prev = status_seen.get(uid, ("offline", 0))[0]
            if status != prev:
                transitions[status] = transitions.get(status, 0) + 1
                timeline[uid].append((ts, status))
                if status == "offline":
                    offline_events.append((uid, ts))
            status_seen[uid] = (status, ts)

    monitor_end = []
    monitor = await open_stream(loop, args.port, monitor_token, False, -1, monitor_id,
                                on_monitor, lambda s, why: monitor_end.append(why))
    if monitor.ended:
        raise RuntimeError(f"monitor stream: {monitor.ended}")

    errors = {}                 # kind -> count
    error_samples = []
    open_streams = {uid: set() for uid in pool_ids}
    mine = {uid: 0 for uid in pool_ids}   # opening or open, by our count
    history = {uid: [] for uid in pool_ids}  # [asked, ready or None, closed or None] ns per stream
    sleeping = set()
    opening = set()
    ready_ns = []
    opened = closed = 0

    def error(kind, sample=None):
        errors[kind] = errors.get(kind, 0) + 1
        if sample and len(error_samples) < 20:
            error_samples.append(sample)

    def on_end(stream, why):
        # A stream that ends without our close() is an error.
        if stream.tag is not None:
            error("broken stream", f"user {stream.user}: {why}")
            open_streams[stream.user].discard(stream)
            stream.tag[2] = time.time_ns()
            mine[stream.user] -= 1

    def on_event(stream, kind, eid, data, ts, now):
        if kind == b"reset":
            error("reset event")

    async def life(uid, lifetime, index):
        nonlocal opened, closed
        stream = await open_stream(loop, args.port, token_of[uid], True, index, uid,
                                   on_event, on_end, timeout=10)
        if stream.ended:
            mine[uid] -= 1
            history[uid].append([stream.opened_ns, None, time.time_ns()])
            kind = f"status {stream.status}" if stream.status else stream.ended
            error(kind, f"user {uid}: {stream.ended} {stream.error_body[:120]!r}")
            return
        opened += 1
        ready_ns.append(stream.ready_ns - stream.opened_ns)
        stream.tag = [stream.opened_ns, stream.ready_ns, None]
        history[uid].append(stream.tag)
        open_streams[uid].add(stream)
        task = asyncio.current_task()
        opening.discard(task)
        sleeping.add(task)
        try:
            await asyncio.sleep(lifetime)
        except asyncio.CancelledError:
            return          # the end: the stream is left to the final phase
        finally:
            sleeping.discard(task)
        if not stream.ended:
            stream.close()
            stream.tag[2] = stream.close_ns
            open_streams[uid].discard(stream)
            mine[uid] -= 1
            closed += 1

    log(f"churn: {args.rate}/s presence streams for {args.seconds} s over {args.users} users "
        f"(grace {args.grace} s)")
    cpu_self0, cpu_srv0 = self_cpu_seconds(), proc_cpu_seconds(args.pid)
    t0 = time.monotonic()
    t_start = time.time_ns()
    total = int(args.rate * args.seconds)
    skipped = 0
    for i in range(total):
        due = t0 + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        candidates = [u for u in pool_ids if mine[u] < cap]
        if not candidates:
            skipped += 1
            continue
        uid = rng.choice(candidates)
        mine[uid] += 1
        # Half short-lived, half around and past the grace window.
        lifetime = rng.uniform(0.05, 0.6) if rng.random() < 0.5 else rng.uniform(0.6, 3.0)
        task = loop.create_task(life(uid, lifetime, i))
        opening.add(task)
        task.add_done_callback(opening.discard)
    run_wall = time.monotonic() - t0
    # Let the opens in flight finish, then stop every life where it is.
    deadline = time.monotonic() + 15
    while opening and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for task in list(sleeping):
        task.cancel()
    await asyncio.sleep(0)
    wall = time.monotonic() - t0
    result["generator_cpu_pct"] = round(100 * (self_cpu_seconds() - cpu_self0) / wall, 1)
    result["server_cpu_pct"] = round(100 * (proc_cpu_seconds(args.pid) - cpu_srv0) / wall, 1)
    result.update({"attempted": total - skipped, "skipped_at_cap": skipped, "opened": opened,
                   "closed_during_run": closed, "run_seconds": round(run_wall, 2),
                   "open_rate": round((total - skipped) / run_wall, 1),
                   "ready_ms": dist_ms(ready_ns)})

    # The end: a random half of the users lose every stream now; the others
    # keep theirs (some of them have none).
    closing = set(rng.sample(pool_ids, len(pool_ids) // 2))
    for uid in closing:
        for stream in list(open_streams[uid]):
            stream.close()
            stream.tag[2] = stream.close_ns
            mine[uid] -= 1
        open_streams[uid].clear()
    held = {uid for uid in pool_ids if open_streams[uid]}
    log(f"end of churn: {opened:,} streams opened, {sum(errors.values())} errors; "
        f"{len(held)} users keep a stream, {len(pool_ids) - len(held)} have none; "
        f"waiting {args.grace} s grace + {args.settle} s")
    await asyncio.sleep(args.grace + args.settle)

    async def check(expect_online):
        wrong = []
        for uid in pool_ids:
            status, raw = await http(args.port, "GET", f"/api/users/{uid}", token=monitor_token)
            if status != 200:
                wrong.append({"user": uid, "http": status})
                continue
            got = json.loads(raw)["status"]
            want = "online" if uid in expect_online else "offline"
            if got != want:
                seen = status_seen.get(uid, ("offline", 0))[0]
                wrong.append({"user": uid, "want": want, "got": got, "monitor_saw": seen,
                              "open_streams": len(open_streams[uid])})
        return wrong

    held = {uid for uid in pool_ids if open_streams[uid]}   # minus any broken meanwhile
    wrong_end = await check(held)
    result["check_end"] = {"online_expected": len(held), "offline_expected": len(pool_ids) - len(held),
                           "mismatches": len(wrong_end), "details": wrong_end[:20]}
    log(f"status after the grace window: {len(wrong_end)} mismatch(es) of {len(pool_ids)}")

    # Then every stream closes: everyone offline after the grace window.
    for uid in pool_ids:
        for stream in list(open_streams[uid]):
            stream.close()
            stream.tag[2] = stream.close_ns
        open_streams[uid].clear()
    await asyncio.sleep(args.grace + args.settle)
    wrong_all = await check(set())
    result["check_all_closed"] = {"mismatches": len(wrong_all), "details": wrong_all[:20]}
    log(f"all streams closed, after the grace window: {len(wrong_all)} mismatch(es)")

    t_end = time.time_ns()
    result.update(analyse(pool_ids, history, timeline, offline_events, t_start, t_end, args.grace))
    result["transitions_seen"] = transitions
    result["monitor_ended"] = monitor_end
    monitor.close()
    result["errors"] = errors
    result["error_count"] = sum(errors.values())
    result["error_samples"] = error_samples
    result["rss_kib"] = proc_kib(args.pid, "VmRSS")
    return result


def merged(intervals):
    """Sorted, merged [start, end) intervals and their starts."""
    out = []
    for a, b in sorted(intervals):
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out, [a for a, _ in out]


def covers(spans, t):
    out, starts = spans
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and t < out[i][1]


def analyse(pool_ids, history, timeline, offline_events, t_start, t_end, grace):
    """The whole run against the monitor's view of every status.

    Sampled every 50 ms from the first open to the last check, a user is
    wrongly offline when a stream of theirs has been ready for 100 ms and is
    not closed yet, and wrongly online when no stream of theirs was asked
    for or open within the last grace + 0.5 s. Offline changes that came
    sooner than the grace window after our close of the user's last stream
    are counted apart (`offline_early`): not a wrong status, a short grace."""
    grace_ns = int(grace * NS)
    tolerance = 100_000_000
    wrong = {"offline": {}, "online": {}}
    step = 50_000_000
    for uid in pool_ids:
        records = history[uid]
        must = merged([(r + tolerance, c if c is not None else t_end) for a, r, c in records
                       if r is not None])
        may = merged([(a, (c if c is not None else t_end) + grace_ns + 500_000_000)
                      for a, r, c in records])
        changes = timeline[uid]
        times = [t for t, _ in changes]
        t = t_start
        while t < t_end:
            i = bisect.bisect_right(times, t) - 1
            status = changes[i][1] if i >= 0 else "offline"
            if status == "offline" and covers(must, t):
                wrong["offline"].setdefault(uid, []).append(t)
            elif status == "online" and not covers(may, t):
                wrong["online"].setdefault(uid, []).append(t)
            t += step
    out = {}
    for kind, users in wrong.items():
        out[f"wrongly_{kind}"] = {
            "users": len(users),
            "seconds": round(sum(len(v) for v in users.values()) * step / NS, 2),
            "examples": [{"user": uid, "from_s": round((v[0] - t_start) / NS, 2),
                          "to_s": round((v[-1] - t_start) / NS, 2)}
                         for uid, v in list(users.items())[:10]],
        }
    delays, early = [], []
    for uid, ts in offline_events:
        closes = [c for a, r, c in history[uid] if c is not None and c < ts]
        if not closes or any(a < ts and (c is None or c > ts) for a, r, c in history[uid]):
            continue
        delay = ts - max(closes)
        delays.append(delay)
        if delay < grace_ns - 50_000_000:
            early.append({"user": uid, "at_s": round((ts - t_start) / NS, 2),
                          "after_last_close_ms": round(delay / 1e6, 1),
                          "closes_within_grace_before": sum(1 for c in closes if c > ts - grace_ns)})
    out["offline_after_last_close_ms"] = dist_ms(delays)
    out["offline_early"] = len(early)
    out["offline_early_details"] = early[:10]
    return out


# ---------------------------------------------------------------- report

def fmt_ms(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f} ms"
    return f"{v:.1f} ms"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def report(args):
    facts = load(os.path.join(args.results, "facts.json")) or {}
    rows, failed, figures = [], False, {"facts": facts}

    for n, target, target_text in ((1000, 50.0, "50 ms"), (10000, 1000.0, "1 s")):
        r = load(os.path.join(args.results, f"fanout_{n}.json"))
        name = f"events_fanout, {n:,} streams"
        want = f"p99 ≤ {target_text}, every stream gets every event"
        if not r or "latency_ms" not in r:
            rows.append((name, (r or {}).get("error", "did not run"), want, "FAIL"))
            failed = True
            continue
        figures[f"events_fanout_{n}"] = r
        lat = r["latency_ms"]
        everyone = r["missing"] == 0 and r["open"]["ok"] == n and r["patches_ok"] == r["patches"] \
            and not r["ended_during_run"] and r["resets"] == 0
        ok = everyone and lat.get("p99") is not None and lat["p99"] <= target
        failed |= not ok
        text = (f"p50 {fmt_ms(lat.get('p50'))}, p99 {fmt_ms(lat.get('p99'))}, max {fmt_ms(lat.get('max'))} "
                f"(min {fmt_ms(lat.get('min'))}); {r['deliveries']:,}/{r['expected']:,} deliveries of "
                f"{r['patches_ok']} PATCHes, {r['streams_complete']:,}/{n:,} streams got every event")
        if r["open"]["ok"] != n:
            text += f"; {n - r['open']['ok']} streams failed to open {r['open']['failures']}"
        if r["resets"]:
            text += f"; {r['resets']} resets"
        rows.append((name, text, want, "pass" if ok else "FAIL"))

    r = load(os.path.join(args.results, "fanout_10000.json"))
    want = "≤ 100 MiB, ≤ 10 KiB a stream over idle"
    if r and "rss_streams_kib" in r:
        total, per = r["rss_streams_kib"], r["per_stream_kib"]
        ok = total <= 100 * 1024 and per <= 10 and r["rss_streams_open"] == 10000
        failed |= not ok
        figures["events_memory"] = {k: r.get(k) for k in ("rss_idle_kib", "rss_streams_kib",
                                                           "rss_streams_open", "per_stream_kib",
                                                           "rss_after_kib", "hwm_kib")}
        text = (f"idle {r['rss_idle_kib'] / 1024:.1f} MiB → {total / 1024:.1f} MiB with "
                f"{r['rss_streams_open']:,} idle streams: {per:.2f} KiB a stream "
                f"(after the 10,000-stream fanout: {r['rss_after_kib'] / 1024:.1f} MiB, "
                f"peak {r['hwm_kib'] / 1024:.1f} MiB)")
        rows.append(("events_memory", text, want, "pass" if ok else "FAIL"))
    else:
        rows.append(("events_memory", "did not run", want, "FAIL"))
        failed = True

    r = load(os.path.join(args.results, "churn.json"))
    want = "no error; every status right after the grace window"
    if r and "check_end" in r:
        figures["presence_churn"] = r
        ce, ca = r["check_end"], r["check_all_closed"]
        wo, wn = r["wrongly_offline"], r["wrongly_online"]
        ok = r["error_count"] == 0 and ce["mismatches"] == 0 and ca["mismatches"] == 0
        failed |= not ok
        errs = ", ".join(f"{v} {k}" for k, v in sorted(r["errors"].items())) or "0 errors"
        text = (f"{r['opened']:,} streams opened at {r['open_rate']:.0f}/s for {r['seconds']} s over "
                f"{r['users']} users (grace {r['grace_seconds']} s): {errs}; at the end "
                f"{ce['mismatches']} wrong of {r['users']} ({ce['online_expected']} should be online, "
                f"{ce['offline_expected']} offline); after closing all, {ca['mismatches']} wrong; "
                f"during the run: {wo['users']} users offline with a stream open ({wo['seconds']} s), "
                f"{wn['users']} online with none past grace + 0.5 s ({wn['seconds']} s)")
        rows.append(("presence_churn", text, want, "pass" if ok else "FAIL"))
    else:
        rows.append(("presence_churn", (r or {}).get("error", "did not run"), want, "FAIL"))
        failed = True

    print("| scenario | result | target | verdict |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    notes = []
    for n in (1000, 10000):
        r = figures.get(f"events_fanout_{n}")
        if r:
            notes.append(f"{n:,} streams ({r['users']} users × ≤{r['streams_per_user']}): opened in "
                         f"{r['open']['seconds']} s; PATCH reply p50 "
                         f"{fmt_ms(pct(sorted(r.get('patch_ms') or [0]), 0.5))}; "
                         f"generator lag p99 {fmt_ms(r['generator_lag_ms'].get('p99'))}, "
                         f"CPU generator {r['generator_cpu_pct']}% / server {r['server_cpu_pct']}% "
                         f"(100% = one core)")
    r = figures.get("presence_churn")
    if r:
        off = r["offline_after_last_close_ms"]
        notes.append(f"churn: open→ready p50 {fmt_ms(r['ready_ms'].get('p50'))}, p99 "
                     f"{fmt_ms(r['ready_ms'].get('p99'))}; offline after the last close p50 "
                     f"{fmt_ms(off.get('p50'))}, max {fmt_ms(off.get('max'))}; "
                     f"{r['transitions_seen'].get('online', 0):,} online / "
                     f"{r['transitions_seen'].get('offline', 0):,} offline changes seen; "
                     f"{r['offline_early']} offline changes came sooner than the grace window after "
                     f"the user's last close (min {fmt_ms(off.get('min'))}); CPU generator "
                     f"{r['generator_cpu_pct']}% / server {r['server_cpu_pct']}%")
    logs = facts.get("server_log", {})
    for name, v in sorted(logs.items()):
        if v.get("warn") or v.get("error"):
            notes.append(f"server log ({name}): {v.get('warn', 0)} WARN, {v.get('error', 0)} ERROR lines "
                         "(besides the low PBKDF2 cost)")
    for note in notes:
        print(f"- {note}")
    figures["failed"] = failed
    with open(args.json, "w") as f:
        json.dump(figures, f, indent=2)
    return 1 if failed else 0


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fanout")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--out", required=True)
    p = sub.add_parser("churn")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--grace", type=float, default=1)
    p.add_argument("--settle", type=float, default=3)
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--json", required=True)
    args = parser.parse_args()

    if args.cmd == "report":
        sys.exit(report(args))
    run = fanout if args.cmd == "fanout" else churn
    try:
        result = asyncio.run(run(args))
        code = 0
    except Exception as err:  # the figures file says why, the table shows it
        result = {"scenario": args.cmd, "error": f"{type(err).__name__}: {err}"}
        log(f"{args.cmd} failed: {result['error']}")
        code = 1
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    sys.exit(code)


if __name__ == "__main__":
    main()
