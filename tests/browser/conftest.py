"""Fixtures for the admin page's browser tests.

A rosterd server (the binary in ROSTERD_BIN, default target/debug/rosterd)
runs on 127.0.0.1 with a fresh database in a temp dir for the whole session;
Debian's chromium (/usr/bin/chromium) is driven by Playwright. Every test
gets a fresh browser context and page, and fails if the page logged a
console error, threw, or violated its Content-Security-Policy.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

ADMIN_PASSWORD = "Staff-pass-2718!"
PLAIN_PASSWORD = "Plain-pass-3141!"
USER_PASSWORD = "Roster-pass-1618!"
PAGER_COUNT = 30


def _pixel_png() -> bytes:
    """A 1×1 light-blue PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x9c\xb8\xf0")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# Served for every https picture: no traffic leaves 127.0.0.1.
PIXEL_PNG = _pixel_png()


# ----------------------------------------------------------------------
# A tiny JSON client for the API (standard library only)
# ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: object
    headers: object  # an http.client.HTTPMessage: case-insensitive get()


class Api:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body=None, token: str | None = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=15) as res:
                raw = res.read()
                status, headers = res.status, res.headers
        except urllib.error.HTTPError as err:
            raw = err.read()
            status, headers = err.code, err.headers
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Reply(status, parsed, headers)

    def login(self, username: str, password: str) -> Reply:
        return self.call("POST", "/api/token", {"username": username, "password": password})

    def token(self, username: str, password: str) -> str:
        r = self.login(username, password)
        assert r.status == 200, (r.status, r.body)
        return r.body["access"]

    def create_user(self, username: str, email: str | None = None, password: str = USER_PASSWORD) -> dict:
        r = self.call(
            "POST",
            "/api/users",
            {"username": username, "email": email or f"{username}@example.com", "password": password},
        )
        assert r.status == 201, (r.status, r.body)
        return r.body


# ----------------------------------------------------------------------
# The server
# ----------------------------------------------------------------------


@dataclass
class Server:
    base: str
    api: Api
    config: Path
    db: Path
    bin: Path
    stderr_lines: list = field(default_factory=list)

    @property
    def admin_url(self) -> str:
        return self.base + "/admin/"


def _rosterd_bin() -> Path:
    path = Path(os.environ.get("ROSTERD_BIN", "target/debug/rosterd"))
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.exit(f"rosterd binary not found at {path} (build it, or set ROSTERD_BIN)", returncode=2)
    return path


def _child_env() -> dict:
    """The environment for rosterd: without ROSTERD_* variables. rosterd reads
    ROSTERD_<SECTION>_<KEY> as config overrides and refuses to start on a
    name it does not know, ROSTERD_BIN (this suite's own setting) included;
    and the test's config file alone should decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROSTERD_")}


def _cli_user(binary: Path, config: Path, db: Path, username: str, password: str, staff: bool) -> None:
    cmd = [str(binary), "--config", str(config), "--db", str(db), "user", "create",
           "--username", username, "--email", f"{username}@example.com", "--password-stdin"]
    if staff:
        cmd.insert(-1, "--staff")
    done = subprocess.run(cmd, input=password + "\n", capture_output=True, text=True, timeout=60,
                          env=_child_env())
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"


@contextlib.contextmanager
def start_rosterd(extra_config: str = ""):
    """Runs rosterd on 127.0.0.1:0 with a fresh database in a temp dir, with
    a staff user `admin` and a plain user `plain` made by the CLI; kills it
    at the end."""
    binary = _rosterd_bin()
    with tempfile.TemporaryDirectory(prefix="rosterd-browser-") as tmp:
        tmp = Path(tmp)
        config = tmp / "rosterd.toml"
        db = tmp / "rosterd.db"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                "[auth]\n"
                f'secret = "{secrets.token_hex(32)}"\n'
                "pbkdf2_iterations = 1000\n"
                + extra_config
                + "[rate_limit]\n"
                "enabled = false\n"
                "[presence]\n"
                "grace_seconds = 1\n"
            )
        os.chmod(config, 0o600)

        _cli_user(binary, config, db, "admin", ADMIN_PASSWORD, staff=True)
        _cli_user(binary, config, db, "plain", PLAIN_PASSWORD, staff=False)

        proc = subprocess.Popen(
            [str(binary), "--config", str(config), "--db", str(db), "serve", "--bind", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        stderr_lines: list[str] = []

        def drain(stream, sink):
            for line in stream:
                sink.append(line)
                del sink[:-200]

        threading.Thread(target=drain, args=(proc.stderr, stderr_lines), daemon=True).start()
        watchdog = threading.Timer(30, proc.kill)  # a server that never says its port
        watchdog.start()
        try:
            port = None
            pattern = re.compile(r"rosterd: serving on http://127\.0\.0\.1:(\d+) ")
            while True:  # the first lines, until the one that names the port
                line = proc.stdout.readline()
                if not line:
                    break
                m = pattern.search(line)
                if m:
                    port = int(m.group(1))
                    break
            if port is None:
                proc.kill()
                proc.wait(timeout=10)
                time.sleep(0.2)
                raise RuntimeError("rosterd did not start:\n" + "".join(stderr_lines[-40:]))
            watchdog.cancel()
            threading.Thread(target=drain, args=(proc.stdout, []), daemon=True).start()
            base = f"http://127.0.0.1:{port}"
            yield Server(base, Api(base), config, db, binary, stderr_lines)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server():
    """The server most tests share, with PAGER_COUNT more users for paging."""
    with start_rosterd() as srv:
        for i in range(1, PAGER_COUNT + 1):
            srv.api.create_user(f"pager{i:02d}")
        yield srv


@pytest.fixture(scope="module")
def short_token_server():
    """A server whose access tokens last 4 seconds, with refresh rotation on."""
    with start_rosterd(
        "access_token_lifetime = 4\n"
        "rotate_refresh_tokens = true\n"
        "rotation_grace_period = 1\n"
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def api(server) -> Api:
    return server.api


@pytest.fixture(scope="session")
def staff_token(api):
    """A fresh staff access token for each call (they last 5 minutes)."""
    return lambda: api.token("admin", ADMIN_PASSWORD)


# ----------------------------------------------------------------------
# The browser
# ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.exit(f"{CHROMIUM} is missing: apt-get install -y chromium", returncode=2)
    # A small /dev/shm (containers) must not crash the renderer; root needs
    # --no-sandbox.
    args = ["--disable-dev-shm-usage"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


# Reported by the page for each CSP violation (added before any page script).
CSP_PROBE = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || ''));
});
"""

NETWORK_LINE = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")


class PageWatch:
    """Collects console errors, page errors and CSP violations of a page.

    Chrome logs every 4xx/5xx reply as a console error ("Failed to load
    resource: ... status of 401"). A test that makes the page meet an
    expected error status says so with `expect_status(…)`; any other such
    line, and every other console error, fails the test.
    """

    def __init__(self):
        self.errors: list[str] = []
        self.allowed_statuses: set[int] = set()

    def expect_status(self, *statuses: int) -> None:
        self.allowed_statuses.update(statuses)

    def on_console(self, msg) -> None:
        text = msg.text
        if "Content Security Policy" in text:
            self.errors.append("CSP: " + text)
            return
        if msg.type != "error":
            return
        m = NETWORK_LINE.match(text)
        if m and int(m.group(1)) in self.allowed_statuses:
            return
        self.errors.append(f"console.{msg.type}: {text} ({msg.location.get('url', '')})")

    def on_page_error(self, err) -> None:
        self.errors.append(f"pageerror: {err}")

    def check(self, page) -> None:
        violations = []
        if not page.is_closed():
            try:
                violations = page.evaluate("window.__cspViolations || []")
            except Exception:  # navigated away or closed: nothing to read
                violations = []
        problems = self.errors + [f"CSP violation: {v}" for v in violations]
        assert not problems, "the page reported errors:\n" + "\n".join(problems)


def _route_outside(route):
    """Nothing leaves 127.0.0.1: https pictures get a 1×1 PNG, the rest is refused."""
    if route.request.resource_type == "image":
        route.fulfill(status=200, content_type="image/png", body=PIXEL_PNG)
    else:
        route.abort()


def _new_page(browser, **context_args):
    context = browser.new_context(**context_args)
    context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/])(https?|wss?)://"), _route_outside)
    context.add_init_script(CSP_PROBE)
    page = context.new_page()
    page.set_default_timeout(10_000)
    watch = PageWatch()
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_page_error)
    return context, page, watch


@pytest.fixture
def page_and_watch(browser):
    context, page, watch = _new_page(browser, viewport={"width": 1280, "height": 800})
    yield page, watch
    try:
        watch.check(page)
    finally:
        context.close()


@pytest.fixture
def phone_page_and_watch(browser):
    context, page, watch = _new_page(
        browser,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    yield page, watch
    try:
        watch.check(page)
    finally:
        context.close()


SCREENSHOT_MAX_BYTES = 150_000


def screenshot(page, name: str) -> Path:
    """Saves docs/admin-<name>.png (overwritten each run), at most ~150 KB:
    a high-density one that comes out larger is taken again at CSS pixels."""
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"admin-{name}.png"
    page.screenshot(path=str(path), animations="disabled", caret="hide")
    if path.stat().st_size > SCREENSHOT_MAX_BYTES:
        page.screenshot(path=str(path), animations="disabled", caret="hide", scale="css")
    return path
