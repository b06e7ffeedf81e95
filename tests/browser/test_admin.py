"""The staff page at /admin/, driven in headless chromium.

Each test gets a fresh page (see conftest.py), and fails on any console
error, page error or Content-Security-Policy violation, apart from the
HTTP error statuses it provokes on purpose (declared with expect_status).
"""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect

from conftest import (
    ADMIN_PASSWORD,
    PAGER_COUNT,
    PLAIN_PASSWORD,
    USER_PASSWORD,
    screenshot,
)

LIVE_TIMEOUT = 5_000  # ms: a change made elsewhere shows within this


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------


def sign_in(page, username: str, password: str) -> None:
    page.fill("#signin-username", username)
    page.fill("#signin-password", password)
    page.click("#signin-submit")


def sign_in_as_staff(page, server) -> None:
    page.goto(server.admin_url)
    sign_in(page, "admin", ADMIN_PASSWORD)
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("admin")
    expect(page.locator("#page-info")).to_have_text(re.compile(r"of \d+"))


def row(page, username: str):
    return page.locator("#users-body tr").filter(
        has=page.locator("td.col-username", has_text=re.compile("^" + re.escape(username) + "$"))
    )


def search(page, text: str, expect_info: str | None = None) -> None:
    page.fill("#search", text)
    page.press("#search", "Enter")
    if expect_info is not None:
        expect(page.locator("#page-info")).to_have_text(expect_info)


def open_edit(page, username: str):
    page.get_by_role("button", name=f"Edit {username}", exact=True).click()
    dialog = page.locator("#edit-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#account-state")).not_to_have_text("Checking account…")
    return dialog


def usernames(page) -> list[str]:
    return page.locator("#users-body td.col-username").all_inner_texts()


# ----------------------------------------------------------------------
# 1. Sign in, the table, search, paging, ordering
# ----------------------------------------------------------------------


def test_staff_signs_in_searches_pages_and_orders(page_and_watch, server, api):
    page, watch = page_and_watch
    # Pictures: one https (shown, through the test's stand-in), one http
    # (not loadable under the page's img-src: shown as an initial).
    p03 = api.token("pager03", USER_PASSWORD)
    p04 = api.token("pager04", USER_PASSWORD)
    me03 = api.call("GET", "/api/users/me", token=p03).body
    me04 = api.call("GET", "/api/users/me", token=p04).body
    assert api.call("PATCH", f"/api/users/{me03['id']}",
                    {"profilePicture": "https://pictures.example.com/p03.png"}, token=p03).status == 200
    assert api.call("PATCH", f"/api/users/{me04['id']}",
                    {"profilePicture": "http://pictures.example.com/p04.png", "status": "busy"},
                    token=p04).status == 200

    response = page.goto(server.admin_url)
    assert response.status == 200
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#users-view")).to_be_hidden()
    screenshot(page, "signin")

    sign_in(page, "admin", ADMIN_PASSWORD)
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#signin-view")).to_be_hidden()
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
    total = api.call("GET", "/api/users?limit=1", token=api.token("admin", ADMIN_PASSWORD)).headers.get("X-Total-Count")
    expect(page.locator("#page-info")).to_have_text(f"1–{min(20, int(total))} of {total}")
    expect(row(page, "admin")).to_be_visible()
    screenshot(page, "users")

    # A reload keeps the session (tokens in sessionStorage), no new sign-in.
    page.reload()
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#signin-view")).to_be_hidden()
    expect(row(page, "admin")).to_be_visible()

    # Search filters the rows (username or e-mail).
    search(page, "pager", f"1–20 of {PAGER_COUNT}")
    expect(page.locator("#users-body tr")).to_have_count(20)
    assert all(name.startswith("pager") for name in usernames(page))
    expect(row(page, "pager03").locator(".avatar img")).to_have_attribute(
        "src", "https://pictures.example.com/p03.png")
    expect(row(page, "pager04").locator(".avatar img")).to_have_count(0)
    expect(row(page, "pager04").locator(".avatar")).to_have_text("p")

    # Paging.
    expect(page.locator("#prev-page")).to_be_disabled()
    page.click("#next-page")
    expect(page.locator("#page-info")).to_have_text(f"21–30 of {PAGER_COUNT}")
    expect(page.locator("#users-body tr")).to_have_count(10)
    expect(page.locator("#next-page")).to_be_disabled()
    assert usernames(page)[0] == "pager21"
    page.click("#prev-page")
    expect(page.locator("#page-info")).to_have_text(f"1–20 of {PAGER_COUNT}")
    expect(page.locator("#prev-page")).to_be_disabled()
    assert usernames(page)[0] == "pager01"

    # Ordering: username descending.
    page.select_option("#ordering", "-username")
    expect(page.locator("#users-body tr").first.locator("td.col-username")).to_have_text("pager30")
    assert usernames(page) == [f"pager{i:02d}" for i in range(30, 10, -1)]
    expect(page.locator('th[data-sort="username"]')).to_have_attribute("aria-sort", "descending")

    # A narrower search, then the status filter.
    search(page, "pager0", "1–9 of 9")
    page.select_option("#status-filter", "busy")
    expect(page.locator("#page-info")).to_have_text("1–1 of 1")
    expect(row(page, "pager04").locator(".badge")).to_have_text("busy")
    expect(row(page, "pager04").locator(".badge")).to_have_class(re.compile(r"\bbadge-busy\b"))
    search(page, "no-such-user-anywhere", "No users")
    expect(page.locator("#users-empty")).to_be_visible()

    # Sign out: back to the form, the refresh token blacklisted.
    refresh = page.evaluate("JSON.parse(sessionStorage.getItem('rosterd.admin.tokens')).refresh")
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#users-view")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('rosterd.admin.tokens')") is None
    for _ in range(50):
        r = api.call("POST", "/api/token/refresh", {"refresh": refresh})
        if r.status == 401:
            break
        page.wait_for_timeout(100)
    assert r.status == 401 and r.body["detail"] == "Token is blacklisted", (r.status, r.body)


# ----------------------------------------------------------------------
# 2. Edit: fields, field errors, password, (de)activation, logout-all
# ----------------------------------------------------------------------


def test_staff_edits_a_user(page_and_watch, server, api):
    page, watch = page_and_watch
    watch.expect_status(400)  # the bad level, e-mail and password below
    user = api.create_user("editme")
    sign_in_as_staff(page, server)
    search(page, "editme", "1–1 of 1")

    # Level and status.
    open_edit(page, "editme")
    expect(page.locator("#edit-username")).to_have_value("editme")
    expect(page.locator("#account-state")).to_contain_text("Account is active")
    expect(page.locator("#toggle-active")).to_have_text("Deactivate")
    page.fill("#edit-level", "7")
    page.select_option("#edit-status", "busy")
    with page.expect_request(lambda req: req.method == "PATCH") as patch:
        page.click("#edit-submit")
    assert patch.value.url.endswith(f"/api/users/{user['id']}")
    assert patch.value.post_data_json == {"level": 7, "status": "busy"}  # only what changed
    expect(page.locator("#edit-dialog")).to_be_hidden()
    expect(row(page, "editme").locator("td.col-level")).to_have_text("7")
    expect(row(page, "editme").locator(".badge")).to_have_text("busy")
    stored = api.call("GET", f"/api/users/{user['id']}", token=api.token("admin", ADMIN_PASSWORD)).body
    assert (stored["level"], stored["status"]) == (7, "busy")

    # Bad values: the server's message beside the field.
    open_edit(page, "editme")
    page.fill("#edit-level", "-1")
    page.click("#edit-submit")
    expect(page.locator("#edit-level-error")).to_have_text("Ensure this value is greater than or equal to 0.")
    expect(page.locator("#edit-level")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#edit-dialog")).to_be_visible()
    page.fill("#edit-level", "7")
    page.fill("#edit-email", "not-an-e-mail")
    page.click("#edit-submit")
    expect(page.locator("#edit-email-error")).to_have_text("Enter a valid email address.")
    expect(page.locator("#edit-level-error")).to_be_hidden()
    page.keyboard.press("Escape")
    expect(page.locator("#edit-dialog")).to_be_hidden()
    expect(row(page, "editme").locator("td.col-email")).to_have_text("editme@example.com")

    # A picture with its preview; the edit screen for the docs.
    open_edit(page, "editme")
    page.fill("#edit-picture", "https://pictures.example.com/editme.png")
    expect(page.locator("#edit-preview img")).to_have_attribute("src", "https://pictures.example.com/editme.png")
    screenshot(page, "edit")
    page.click("#edit-submit")
    expect(page.locator("#edit-dialog")).to_be_hidden()
    expect(row(page, "editme").locator(".avatar img")).to_be_visible()

    # Set a password: a bad one first, then one the user can log in with.
    open_edit(page, "editme")
    page.fill("#edit-password", "short")
    page.click("#password-submit")
    expect(page.locator("#edit-password-error")).to_contain_text("This password is too short.")
    page.fill("#edit-password", "Fresh-secret-4242")
    page.click("#password-submit")
    expect(page.locator("#account-ok")).to_contain_text("Password set")
    expect(page.locator("#edit-password-error")).to_be_hidden()
    assert api.login("editme", "Fresh-secret-4242").status == 200
    assert api.login("editme", USER_PASSWORD).status == 401

    # Deactivate: the user cannot log in; activate again: they can.
    page.click("#toggle-active")
    expect(page.locator("#account-ok")).to_contain_text("Account deactivated")
    expect(page.locator("#toggle-active")).to_have_text("Activate")
    expect(page.locator("#account-state")).to_contain_text("deactivated")
    r = api.login("editme", "Fresh-secret-4242")
    assert r.status == 401 and r.body == {"detail": "No active account found with the given credentials"}
    page.click("#toggle-active")
    expect(page.locator("#account-ok")).to_contain_text("Account activated")
    expect(page.locator("#toggle-active")).to_have_text("Deactivate")
    assert api.login("editme", "Fresh-secret-4242").status == 200

    # Log out everywhere: a token issued before stops working.
    token = api.token("editme", "Fresh-secret-4242")
    assert api.call("GET", "/api/users/me", token=token).status == 200
    page.wait_for_timeout(1100)  # tokens carry whole seconds: one issued in this second stays valid
    page.click("#logout-all")
    expect(page.locator("#account-ok")).to_contain_text("Logged out everywhere")
    assert api.call("GET", "/api/users/me", token=token).status == 401
    page.click("#edit-dialog [data-close] >> nth=0")
    expect(page.locator("#edit-dialog")).to_be_hidden()


# ----------------------------------------------------------------------
# 3. Create (with a field error) and delete (with the confirmation)
# ----------------------------------------------------------------------


def test_staff_creates_and_deletes_a_user(page_and_watch, server, api):
    page, watch = page_and_watch
    watch.expect_status(400)  # the taken username
    sign_in_as_staff(page, server)

    page.click("#new-user")
    expect(page.locator("#create-dialog")).to_be_visible()
    expect(page.locator("#create-username")).to_be_focused()
    page.fill("#create-username", "newbie")
    page.fill("#create-email", "newbie@example.com")
    page.fill("#create-password", "Brand-new-pass-77")
    page.click("#create-submit")
    expect(page.locator("#create-dialog")).to_be_hidden()
    expect(page.locator("#messages")).to_contain_text("Created user “newbie”.")
    search(page, "newbie", "1–1 of 1")
    expect(row(page, "newbie")).to_be_visible()
    expect(row(page, "newbie").locator("td.col-email")).to_have_text("newbie@example.com")
    assert api.login("newbie", "Brand-new-pass-77").status == 200

    # The same username again: the error beside the username field.
    page.click("#new-user")
    page.fill("#create-username", "NEWBIE")
    page.fill("#create-email", "other-newbie@example.com")
    page.fill("#create-password", "Brand-new-pass-77")
    page.click("#create-submit")
    expect(page.locator("#create-username-error")).to_have_text("A user with that username already exists.")
    expect(page.locator("#create-email-error")).to_be_hidden()
    expect(page.locator("#create-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#create-dialog")).to_be_hidden()

    # Delete, confirmed by typing the username.
    uid = int(row(page, "newbie").get_attribute("data-id"))
    open_edit(page, "newbie")
    page.click("#delete-user")
    expect(page.locator("#delete-dialog")).to_be_visible()
    expect(page.locator("#delete-name")).to_have_text("newbie")
    expect(page.locator("#delete-submit")).to_be_disabled()
    page.fill("#delete-confirm", "newbi")
    expect(page.locator("#delete-submit")).to_be_disabled()
    page.fill("#delete-confirm", "newbie")
    expect(page.locator("#delete-submit")).to_be_enabled()
    expect(page.locator("#delete-submit")).to_have_text("Delete newbie")
    page.click("#delete-submit")
    expect(page.locator("#delete-dialog")).to_be_hidden()
    expect(page.locator("#edit-dialog")).to_be_hidden()
    expect(row(page, "newbie")).to_have_count(0)
    expect(page.locator("#page-info")).to_have_text("No users")
    r = api.call("GET", f"/api/users/{uid}", token=api.token("admin", ADMIN_PASSWORD))
    assert r.status == 404


# ----------------------------------------------------------------------
# 4. Refusals: wrong password, an account that is not staff
# ----------------------------------------------------------------------


def test_wrong_password_and_non_staff_are_refused(page_and_watch, server):
    page, watch = page_and_watch
    watch.expect_status(401, 403)  # the bad login; the account check of a non-staff user
    page.goto(server.admin_url)

    sign_in(page, "admin", "not-the-password")
    expect(page.locator("#signin-error")).to_contain_text("No active account found with the given credentials")
    expect(page.locator("#users-view")).to_be_hidden()

    sign_in(page, "plain", PLAIN_PASSWORD)
    expect(page.locator("#signin-error")).to_contain_text("This page is for staff accounts")
    expect(page.locator("#signin-error")).to_contain_text("plain")
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#users-view")).to_be_hidden()
    expect(page.locator("#session")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('rosterd.admin.tokens')") is None


# ----------------------------------------------------------------------
# 5. Live: a change made through the API shows without a reload
# ----------------------------------------------------------------------


def test_live_updates(page_and_watch, server, api):
    page, watch = page_and_watch
    user = api.create_user("liveone")
    token = api.token("liveone", USER_PASSWORD)
    sign_in_as_staff(page, server)
    search(page, "liveone", "1–1 of 1")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
    badge = row(page, "liveone").locator(".badge")
    expect(badge).to_have_text("offline")
    page.evaluate("document.querySelector('#users-body tr').dataset.marker = 'same-row'")
    requests = []
    page.on("request", lambda req: requests.append(req.url) if "/api/users?" in req.url else None)

    r = api.call("PATCH", f"/api/users/{user['id']}", {"status": "busy", "level": 4}, token=token)
    assert r.status == 200, r.body
    expect(badge).to_have_text("busy", timeout=LIVE_TIMEOUT)
    expect(badge).to_have_class(re.compile(r"\bbadge-busy\b"))
    expect(row(page, "liveone").locator("td.col-level")).to_have_text("4")
    # Updated in place: the same row element, and no list request.
    assert page.evaluate("document.querySelector('#users-body tr').dataset.marker") == "same-row"
    assert requests == []

    # Created and deleted elsewhere: the page reloads its list.
    api.create_user("liveone2")
    expect(page.locator("#page-info")).to_have_text("1–2 of 2", timeout=LIVE_TIMEOUT)
    expect(row(page, "liveone2")).to_be_visible()
    assert api.call("DELETE", f"/api/users/{user['id']}", token=token).status == 204
    expect(row(page, "liveone")).to_have_count(0, timeout=LIVE_TIMEOUT)
    expect(page.locator("#page-info")).to_have_text("1–1 of 1")


# ----------------------------------------------------------------------
# 6. A phone-sized screen, and the keyboard alone
# ----------------------------------------------------------------------


def test_phone_and_keyboard(phone_page_and_watch, server):
    page, watch = phone_page_and_watch
    page.goto(server.admin_url)
    expect(page.locator("#signin-form")).to_be_visible()

    # Sign in with Tab, typing and Enter only (from nothing focused).
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(10):
        if page.evaluate("document.activeElement && document.activeElement.id") == "signin-username":
            break
        page.keyboard.press("Tab")
    expect(page.locator("#signin-username")).to_be_focused()
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    expect(page.locator("#signin-password")).to_be_focused()
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")

    expect(page.locator("#users-view")).to_be_visible()
    first = page.locator("#users-body tr").first
    expect(first).to_be_visible()
    expect(page.locator("#page-info")).to_have_text(re.compile(r"^1–20 of \d+$"))
    # Cards, not a squeezed table: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("getComputedStyle(document.querySelector('#users-body tr')).display") != "table-row"
    assert page.evaluate("document.querySelector('#users-table thead').getBoundingClientRect().width") <= 1
    box = first.bounding_box()
    assert box and box["width"] <= 390
    expect(first.locator("[data-edit]")).to_be_in_viewport()
    screenshot(page, "phone")

    # A dialog opened from the keyboard closes with Escape, focus returns.
    edit = first.locator("[data-edit]")
    edit.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#edit-dialog")).to_be_visible()
    expect(page.locator("#edit-username")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#edit-dialog")).to_be_hidden()
    expect(edit).to_be_focused()

    # Focus is visible: the focused button has an outline.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), outline


# ----------------------------------------------------------------------
# 7. Tokens: the access token is refreshed before it expires (rotation on)
# ----------------------------------------------------------------------


def test_access_token_is_refreshed_before_it_expires(page_and_watch, short_token_server):
    page, watch = page_and_watch
    server = short_token_server
    refreshes = []
    page.on("response", lambda res: refreshes.append(res.status) if res.url.endswith("/api/token/refresh") else None)
    sign_in_as_staff(page, server)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
    first = page.evaluate("JSON.parse(sessionStorage.getItem('rosterd.admin.tokens'))")

    # Access tokens last 4 s; after 9 s the page has refreshed a few times,
    # each time keeping the rotated refresh token (an old one reused after
    # the 1 s grace would void the whole family and end the session).
    page.wait_for_timeout(9_000)
    assert len(refreshes) >= 2 and set(refreshes) == {200}, refreshes
    now = page.evaluate("JSON.parse(sessionStorage.getItem('rosterd.admin.tokens'))")
    assert now["refresh"] != first["refresh"] and now["access"] != first["access"]

    # Still signed in: the list answers with the current token, live stays on.
    search(page, "plain", "1–1 of 1")
    expect(row(page, "plain")).to_be_visible()
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
    server.api.create_user("refreshed")
    search(page, "refreshed", "1–1 of 1")


# ----------------------------------------------------------------------
# 8. Live: retries with backoff, and a Reload button without events
# ----------------------------------------------------------------------


def test_live_retries_then_falls_back_to_reload(page_and_watch, server, api):
    page, watch = page_and_watch
    watch.expect_status(404, 503)  # the stand-in ticket replies below
    calls = []

    def busy_once(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=503, content_type="application/json", headers={"Retry-After": "1"},
                          body=json.dumps({"detail": "The server is busy. Try again shortly."}))
        else:
            route.continue_()

    streams = []

    def stream_fails_once(route):
        streams.append(route.request.url)
        if len(streams) == 1:
            route.fulfill(status=503, content_type="application/json",
                          body=json.dumps({"detail": "The server is busy. Try again shortly."}))
        else:
            route.continue_()

    # The first ticket is refused (503), the stream opened with the second
    # fails (503): the page asks for a third ticket, and that stream works.
    page.route("**/api/events/ticket", busy_once)
    page.route(re.compile(r"/api/events\?"), stream_fails_once)
    sign_in_as_staff(page, server)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on", timeout=2 * LIVE_TIMEOUT)
    assert len(calls) == 3 and len(streams) == 2, (calls, streams)
    assert all("presence=false" in url and "ticket=" in url for url in streams)
    tickets = [re.search(r"ticket=([^&]+)", url).group(1) for url in streams]
    assert tickets[0] != tickets[1]  # a fresh ticket for each try
    expect(page.locator("#reload")).to_be_hidden()
    page.unroute(re.compile(r"/api/events\?"))

    # Events unavailable (the ticket endpoint answers 404): a Reload button.
    page.unroute("**/api/events/ticket")
    page.route("**/api/events/ticket", lambda route: route.fulfill(
        status=404, content_type="application/json", body=json.dumps({"detail": "Not found."})))
    page.click("#signout")
    sign_in(page, "admin", ADMIN_PASSWORD)
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("Live updates unavailable")
    expect(page.locator("#reload")).to_be_visible()
    search(page, "latecomer", "No users")
    api.create_user("latecomer")
    page.wait_for_timeout(500)
    expect(page.locator("#page-info")).to_have_text("No users")  # nothing live
    page.click("#reload")
    expect(page.locator("#page-info")).to_have_text("1–1 of 1")
    expect(row(page, "latecomer")).to_be_visible()


# ----------------------------------------------------------------------
# 9. The session voided elsewhere: back to the sign-in form
# ----------------------------------------------------------------------


def test_voided_session_returns_to_sign_in(page_and_watch, server, api):
    page, watch = page_and_watch
    watch.expect_status(401)  # the voided tokens
    sign_in_as_staff(page, server)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
    token = api.token("admin", ADMIN_PASSWORD)
    page.wait_for_timeout(1100)  # tokens carry whole seconds: the page's must be older than the cut

    # "Log out everywhere" for admin from elsewhere: the page's access and
    # refresh tokens are void; the server ends its stream, the page's
    # ticket request gets a 401, its refresh too.
    assert api.call("POST", "/api/users/me/logout-all", token=token).status == 204
    expect(page.locator("#signin-form")).to_be_visible(timeout=LIVE_TIMEOUT)
    expect(page.locator("#signin-error")).to_contain_text("Your session has ended")
    expect(page.locator("#users-view")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('rosterd.admin.tokens')") is None

    # And signing in again works.
    sign_in(page, "admin", ADMIN_PASSWORD)
    expect(page.locator("#users-view")).to_be_visible()
    expect(page.locator("#live-state")).to_have_attribute("data-state", "on")
