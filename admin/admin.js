// rosterd staff page: plain JS, talks only to this origin's /api.
// The page's CSP allows this file and admin.css only: no inline script or
// style, no on* attributes; listeners are added here, styles are classes.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------
  // Errors
  // ------------------------------------------------------------------

  /** The session is over (refresh failed, or signed out meanwhile). */
  class AuthEnded extends Error {}
  /** fetch() itself failed: the server could not be reached. */
  class NetworkError extends Error {}

  const NETWORK_TEXT = "Could not reach the server. Check the connection and try again.";

  /** A readable text for a failed API result. */
  function errorText(r) {
    const d = r && r.data;
    if (d && typeof d.detail === "string" && d.detail) return d.detail;
    if (d && Array.isArray(d.non_field_errors)) return d.non_field_errors.join(" ");
    if (d && typeof d === "object") {
      const parts = [];
      for (const [k, v] of Object.entries(d)) {
        parts.push(k + ": " + (Array.isArray(v) ? v.join(" ") : String(v)));
      }
      if (parts.length) return parts.join("; ");
    }
    return "The request failed (HTTP " + (r ? r.status : "?") + ").";
  }

  function failureText(err) {
    if (err instanceof NetworkError) return NETWORK_TEXT;
    return (err && err.message) || "Something went wrong.";
  }

  // ------------------------------------------------------------------
  // Messages (dismissable) and in-place alerts
  // ------------------------------------------------------------------

  function showMessage(text, kind = "error") {
    const box = $("messages");
    const msg = document.createElement("div");
    msg.className = "message message-" + kind;
    msg.setAttribute("role", kind === "error" ? "alert" : "status");
    const span = document.createElement("span");
    span.className = "message-text";
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn-icon";
    close.setAttribute("aria-label", "Dismiss message");
    close.textContent = "×";
    close.addEventListener("click", () => msg.remove());
    msg.append(span, close);
    box.append(msg);
    while (box.children.length > 4) box.firstElementChild.remove();
    if (kind !== "error") setTimeout(() => msg.remove(), 6000);
    return msg;
  }

  /** Shows `text` in an alert element (with a Dismiss button); "" hides it. */
  function setAlert(el, text) {
    el.replaceChildren();
    if (!text) {
      el.hidden = true;
      return;
    }
    const span = document.createElement("span");
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn-quiet btn-small";
    close.textContent = "Dismiss";
    close.addEventListener("click", () => setAlert(el, ""));
    el.append(span, close);
    el.hidden = false;
  }

  /** Reports a thrown failure: in `alertEl` when given, else as a message. */
  function reportFailure(err, alertEl) {
    if (err instanceof AuthEnded) return; // already back at sign-in
    if (alertEl) setAlert(alertEl, failureText(err));
    else showMessage(failureText(err));
  }

  // ------------------------------------------------------------------
  // Tokens
  // ------------------------------------------------------------------

  const STORE_KEY = "rosterd.admin.tokens";
  const auth = { access: null, refresh: null, expiresAt: 0, timer: 0, refreshing: null };
  let generation = 0; // bumped at sign-out: late replies of an old session are dropped

  function jwtClaims(token) {
    try {
      let b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (b64.length % 4) b64 += "=";
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null;
    }
  }

  function setTokens(access, refresh) {
    auth.access = access;
    if (refresh) auth.refresh = refresh; // rotation: keep the new one
    const now = Date.now();
    const c = jwtClaims(access) || {};
    const hasExp = typeof c.exp === "number";
    const hasIat = typeof c.iat === "number";
    // `iat` is the server's "now": correct for a client clock that is off.
    const skew = hasIat ? c.iat * 1000 - now : 0;
    auth.expiresAt = hasExp ? c.exp * 1000 - skew : now + 4 * 60 * 1000;
    const lifetime = hasExp && hasIat ? (c.exp - c.iat) * 1000 : 5 * 60 * 1000;
    const margin = Math.min(60000, Math.max(2000, lifetime * 0.2));
    clearTimeout(auth.timer);
    auth.timer = setTimeout(scheduledRefresh, Math.max(1000, auth.expiresAt - margin - now));
    try {
      sessionStorage.setItem(STORE_KEY, JSON.stringify({ access: auth.access, refresh: auth.refresh }));
    } catch {
      /* storage off: memory only */
    }
  }

  function forgetTokens() {
    clearTimeout(auth.timer);
    auth.access = auth.refresh = null;
    auth.expiresAt = 0;
    auth.refreshing = null;
    try {
      sessionStorage.removeItem(STORE_KEY);
    } catch {
      /* nothing kept */
    }
  }

  async function scheduledRefresh() {
    try {
      await refreshAccess();
    } catch (err) {
      if (err instanceof AuthEnded) return;
      auth.timer = setTimeout(scheduledRefresh, 15000); // network trouble: try again
    }
  }

  async function readJson(res) {
    if (res.status === 204) return null;
    const text = await res.text();
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  /** One refresh at a time; AuthEnded (and back to sign-in) when refused. */
  function refreshAccess() {
    if (!auth.refresh) return Promise.reject(new AuthEnded());
    if (!auth.refreshing) {
      const gen = generation;
      auth.refreshing = (async () => {
        let res;
        try {
          res = await fetch("/api/token/refresh", {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "application/json" },
            body: JSON.stringify({ refresh: auth.refresh }),
            cache: "no-store",
          });
        } catch {
          throw new NetworkError();
        }
        const data = await readJson(res);
        if (gen !== generation) throw new AuthEnded();
        if (res.ok && data && typeof data.access === "string") {
          setTokens(data.access, data.refresh);
          return;
        }
        if (res.status === 400 || res.status === 401) {
          sessionEnded();
          throw new AuthEnded();
        }
        throw new Error(errorText({ status: res.status, data }));
      })().finally(() => {
        auth.refreshing = null;
      });
    }
    return auth.refreshing;
  }

  /**
   * Calls the API with the access token. Resolves {status, ok, data, headers}
   * for any HTTP answer; rejects with NetworkError, or AuthEnded when the
   * session is over (a 401 that a refresh could not fix).
   */
  async function api(method, path, body, retried = false) {
    const gen = generation;
    if (auth.refresh && Date.now() > auth.expiresAt - 5000) await refreshAccess();
    const headers = { Accept: "application/json" };
    if (auth.access) headers.Authorization = "Bearer " + auth.access;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      throw new NetworkError();
    }
    const data = await readJson(res);
    if (gen !== generation) throw new AuthEnded();
    if (res.status === 401 && auth.refresh) {
      if (!retried) {
        await refreshAccess();
        return api(method, path, body, true);
      }
      sessionEnded();
      throw new AuthEnded();
    }
    return { status: res.status, ok: res.ok, data, headers: res.headers };
  }

  // ------------------------------------------------------------------
  // Sign-in and sign-out
  // ------------------------------------------------------------------

  let me = null;

  function showSignIn(errorMessage) {
    $("users-view").hidden = true;
    $("session").hidden = true;
    $("signin-view").hidden = false;
    setAlert($("signin-error"), errorMessage || "");
    $("signin-username").focus();
  }

  /** Forgets the session here (no request). */
  function signOutLocal() {
    generation++;
    stopLive();
    forgetTokens();
    me = null;
    list.users.clear();
    $("users-body").replaceChildren();
    $("page-info").textContent = "";
    for (const d of document.querySelectorAll("dialog[open]")) d.close();
    editing = null;
  }

  /** The session ended on its own (refresh refused, account locked out). */
  function sessionEnded(message = "Your session has ended. Please sign in again.") {
    if (!auth.refresh && !me) return;
    signOutLocal();
    showSignIn(message);
  }

  /** Blacklists the refresh token, then forgets everything. */
  async function signOut(errorMessage) {
    const refresh = auth.refresh;
    signOutLocal();
    showSignIn(errorMessage);
    if (!refresh) return;
    try {
      await fetch("/api/token/blacklist", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ refresh }),
        cache: "no-store",
      });
    } catch {
      /* the token is forgotten here anyway; it expires on its own */
    }
  }

  async function onSignIn(ev) {
    ev.preventDefault();
    const errorEl = $("signin-error");
    setAlert(errorEl, "");
    const username = $("signin-username").value.trim();
    const password = $("signin-password").value;
    if (!username || !password) {
      setAlert(errorEl, "Enter your username and password.");
      (username ? $("signin-password") : $("signin-username")).focus();
      return;
    }
    const button = $("signin-submit");
    button.disabled = true;
    button.textContent = "Signing in…";
    try {
      let res;
      try {
        res = await fetch("/api/token", {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ username, password }),
          cache: "no-store",
        });
      } catch {
        throw new NetworkError();
      }
      const data = await readJson(res);
      if (res.status === 401) {
        setAlert(errorEl, (data && data.detail) || "No active account found with the given credentials");
        $("signin-password").select();
        return;
      }
      if (!res.ok || !data || !data.access) {
        setAlert(errorEl, errorText({ status: res.status, data }));
        return;
      }
      $("signin-password").value = "";
      setTokens(data.access, data.refresh);
      await enterAsStaff();
    } catch (err) {
      if (!(err instanceof AuthEnded)) {
        if (!me) signOutLocal(); // half signed in: forget the tokens
        setAlert(errorEl, failureText(err));
      }
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  }

  /** Checks that the signed-in user is staff; shows the users or refuses. */
  async function enterAsStaff() {
    const who = await api("GET", "/api/users/me");
    if (!who.ok || !who.data) {
      await signOut(errorText(who));
      return;
    }
    const acc = await api("GET", "/api/users/" + who.data.id + "/account");
    if (acc.status === 403 || (acc.ok && acc.data && acc.data.is_staff !== true)) {
      await signOut("This page is for staff accounts. “" + who.data.username + "” is not a staff account, so you have been signed out.");
      return;
    }
    if (!acc.ok) {
      await signOut("Could not check the account: " + errorText(acc));
      return;
    }
    me = who.data;
    $("whoami").textContent = me.username;
    $("session").hidden = false;
    $("signin-view").hidden = true;
    $("users-view").hidden = false;
    setAlert($("signin-error"), "");
    $("main").focus();
    loadUsers();
    startLive();
  }

  // ------------------------------------------------------------------
  // Users list
  // ------------------------------------------------------------------

  const list = { offset: 0, limit: 20, total: 0, seq: 0, users: new Map(), reloadTimer: 0 };
  const dateFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const STATUSES = ["online", "offline", "busy"];

  /** The page loads pictures over https only (its CSP: img-src 'self' https: data:). */
  function pictureAllowed(url) {
    return typeof url === "string" && /^https:\/\/[^\s]+$/i.test(url);
  }

  function setAvatar(el, username, url) {
    el.replaceChildren();
    const initial = () => {
      el.replaceChildren();
      el.textContent = (username || "?").charAt(0);
    };
    if (pictureAllowed(url)) {
      const img = document.createElement("img");
      img.alt = "";
      img.width = el.classList.contains("avatar-lg") ? 56 : 40;
      img.height = img.width;
      img.referrerPolicy = "no-referrer";
      img.decoding = "async";
      img.addEventListener("error", initial, { once: true });
      img.src = url;
      el.append(img);
      el.title = "";
    } else {
      initial();
      el.title = url ? "Picture not shown: this page only loads https:// pictures" : "";
    }
  }

  function formatDate(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso || "") : dateFormat.format(d);
  }

  function formatDateTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso || "") : dateTimeFormat.format(d);
  }

  function setBadge(el, status) {
    el.className = "badge badge-" + (STATUSES.includes(status) ? status : "offline");
    el.textContent = String(status);
  }

  function fillRow(tr, u) {
    tr.dataset.id = String(u.id);
    setAvatar(tr.querySelector(".avatar"), u.username, u.profilePicture);
    tr.querySelector(".col-username").textContent = u.username;
    tr.querySelector(".col-email").textContent = u.email;
    tr.querySelector(".col-level").textContent = String(u.level);
    setBadge(tr.querySelector(".badge"), u.status);
    const time = tr.querySelector("time");
    time.dateTime = u.created_at;
    time.textContent = formatDate(u.created_at);
    time.title = formatDateTime(u.created_at);
    const edit = tr.querySelector("[data-edit]");
    edit.dataset.id = String(u.id);
    edit.setAttribute("aria-label", "Edit " + u.username);
  }

  function rowFor(u) {
    const tr = $("row-template").content.firstElementChild.cloneNode(true);
    fillRow(tr, u);
    return tr;
  }

  function rowOf(id) {
    return $("users-body").querySelector('tr[data-id="' + Number(id) + '"]');
  }

  function flash(tr) {
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }

  function queryParams() {
    const p = new URLSearchParams();
    p.set("limit", String(list.limit));
    p.set("offset", String(list.offset));
    const search = $("search").value.trim();
    if (search) p.set("search", search);
    const status = $("status-filter").value;
    if (status) p.set("status", status);
    p.set("ordering", $("ordering").value);
    return p;
  }

  async function loadUsers() {
    const seq = ++list.seq;
    clearTimeout(list.reloadTimer);
    const table = $("users-table");
    table.setAttribute("aria-busy", "true");
    $("users-loading").hidden = $("users-body").children.length > 0;
    let r;
    try {
      r = await api("GET", "/api/users?" + queryParams().toString());
    } catch (err) {
      if (seq === list.seq) {
        table.removeAttribute("aria-busy");
        $("users-loading").hidden = true;
        reportFailure(err);
      }
      return;
    }
    if (seq !== list.seq) return;
    table.removeAttribute("aria-busy");
    $("users-loading").hidden = true;
    if (!r.ok || !Array.isArray(r.data)) {
      showMessage("Could not load users: " + errorText(r));
      return;
    }
    const total = parseInt(r.headers.get("X-Total-Count") || "", 10);
    list.total = Number.isNaN(total) ? list.offset + r.data.length : total;
    if (r.data.length === 0 && list.offset > 0 && list.total > 0) {
      // The page emptied (deletions): go to the last page that has users.
      list.offset = Math.floor((list.total - 1) / list.limit) * list.limit;
      loadUsers();
      return;
    }
    renderRows(r.data);
    renderPager(r.data.length);
  }

  function scheduleReload() {
    clearTimeout(list.reloadTimer);
    list.reloadTimer = setTimeout(loadUsers, 250);
  }

  function renderRows(users) {
    const body = $("users-body");
    const active = document.activeElement;
    const focusedId = active && active.matches && active.matches("[data-edit]") && body.contains(active)
      ? active.dataset.id : null;
    list.users = new Map(users.map((u) => [u.id, u]));
    body.replaceChildren(...users.map(rowFor));
    $("users-empty").hidden = users.length > 0;
    if (focusedId) {
      const again = body.querySelector('[data-edit][data-id="' + focusedId + '"]');
      (again || $("main")).focus();
    }
    const ordering = $("ordering").value;
    const field = ordering.replace(/^-/, "");
    for (const th of document.querySelectorAll("th[data-sort]")) {
      if (th.dataset.sort === field) th.setAttribute("aria-sort", ordering.startsWith("-") ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
  }

  function renderPager(count) {
    const info = $("page-info");
    if (list.total === 0 || count === 0) {
      info.textContent = list.total === 0 ? "No users" : "0 of " + list.total;
    } else {
      info.textContent = (list.offset + 1) + "–" + (list.offset + count) + " of " + list.total;
    }
    $("prev-page").disabled = list.offset === 0;
    $("next-page").disabled = list.offset + list.limit >= list.total;
  }

  function updateRow(u) {
    if (!u || typeof u.id !== "number") return;
    const before = list.users.get(u.id);
    if (before) {
      list.users.set(u.id, u);
      const tr = rowOf(u.id);
      if (tr) {
        fillRow(tr, u);
        if (before.updated_at !== u.updated_at) flash(tr);
      }
    }
    if (editing && editing.id === u.id) {
      editing.user = u;
      showEditMeta(u);
    }
  }

  let searchTimer = 0;

  function filtersChanged() {
    clearTimeout(searchTimer);
    list.offset = 0;
    loadUsers();
  }

  // ------------------------------------------------------------------
  // Live updates
  // ------------------------------------------------------------------

  const live = { es: null, lastId: "", failures: 0, timer: 0, connectedOnce: false };

  function setLiveState(state, text) {
    const el = $("live-state");
    el.dataset.state = state;
    el.textContent = text;
  }

  function stopLive() {
    clearTimeout(live.timer);
    if (live.es) live.es.close();
    live.es = null;
    live.lastId = "";
    live.failures = 0;
    live.connectedOnce = false;
    setLiveState("off", "Live updates off");
    $("reload").hidden = true;
  }

  function parseData(e) {
    try {
      return JSON.parse(e.data);
    } catch {
      return null;
    }
  }

  async function startLive() {
    clearTimeout(live.timer);
    if (live.es) live.es.close();
    live.es = null;
    const gen = generation;
    setLiveState("connecting", live.connectedOnce ? "Reconnecting…" : "Connecting…");
    let r;
    try {
      r = await api("POST", "/api/events/ticket");
    } catch (err) {
      if (!(err instanceof AuthEnded) && gen === generation) liveRetry();
      return;
    }
    if (gen !== generation) return;
    if (r.status !== 200 || !r.data || typeof r.data.ticket !== "string") {
      if (r.status === 429 || r.status >= 500) liveRetry();
      else liveUnavailable();
      return;
    }
    let url = "/api/events?presence=false&ticket=" + encodeURIComponent(r.data.ticket);
    if (live.lastId) url += "&last_event_id=" + encodeURIComponent(live.lastId);
    const es = new EventSource(url);
    live.es = es;
    const track = (e) => {
      if (e.lastEventId) live.lastId = e.lastEventId;
    };
    es.addEventListener("ready", () => {
      const again = live.connectedOnce;
      live.connectedOnce = true;
      live.failures = 0;
      setLiveState("on", "Live");
      $("reload").hidden = true;
      // Reconnected with nothing to resume from: changes may have been missed.
      if (again && !live.lastId) scheduleReload();
    });
    es.addEventListener("user.updated", (e) => {
      track(e);
      updateRow(parseData(e));
    });
    es.addEventListener("user.created", (e) => {
      track(e);
      scheduleReload();
    });
    es.addEventListener("user.deleted", (e) => {
      track(e);
      const d = parseData(e);
      if (d && editing && editing.id === d.id) {
        setAlert($("edit-error"), "This user has just been deleted.");
      }
      scheduleReload();
    });
    es.addEventListener("reset", (e) => {
      track(e);
      scheduleReload();
    });
    es.addEventListener("error", () => {
      if (live.es !== es) return;
      // Never let EventSource retry by itself: its ticket is used up.
      es.close();
      live.es = null;
      if (gen === generation) liveRetry();
    });
  }

  function liveRetry() {
    live.failures++;
    const delay = Math.min(30000, 1000 * 2 ** Math.min(live.failures - 1, 5)) + Math.floor(Math.random() * 500);
    if (live.failures >= 3) {
      setLiveState("off", "Live updates interrupted, retrying");
      $("reload").hidden = false;
    } else {
      setLiveState("connecting", "Reconnecting…");
    }
    clearTimeout(live.timer);
    live.timer = setTimeout(startLive, delay);
  }

  function liveUnavailable() {
    setLiveState("off", "Live updates unavailable");
    $("reload").hidden = false;
  }

  // ------------------------------------------------------------------
  // Dialogs: shared helpers
  // ------------------------------------------------------------------

  const FIELD_NAMES = {
    create: { username: "username", email: "email", password: "password" },
    edit: { username: "username", email: "email", level: "level", status: "status", profilePicture: "picture" },
  };

  function clearFieldErrors(form) {
    for (const p of form.querySelectorAll(".field-error")) {
      p.textContent = "";
      p.hidden = true;
    }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function setFieldError(inputId, messages) {
    const input = $(inputId);
    const p = $(inputId + "-error");
    p.textContent = Array.isArray(messages) ? messages.join(" ") : String(messages);
    p.hidden = false;
    input.setAttribute("aria-invalid", "true");
  }

  /** Puts a 400's field errors beside their fields; returns what is left. */
  function showFieldErrors(prefix, names, data) {
    const rest = [];
    let first = null;
    const entries = data && typeof data === "object" ? data : {};
    for (const [key, field] of Object.entries(names)) {
      // in the form's order, so focus goes to the first bad field
      if (!Object.prototype.hasOwnProperty.call(entries, key)) continue;
      setFieldError(prefix + "-" + field, entries[key]);
      if (!first) first = $(prefix + "-" + field);
    }
    for (const [key, messages] of Object.entries(entries)) {
      if (!Object.prototype.hasOwnProperty.call(names, key)) {
        rest.push(Array.isArray(messages) ? messages.join(" ") : String(messages));
      }
    }
    if (first) first.focus();
    return rest.join(" ");
  }

  async function busy(button, work) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      return await work();
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  // ------------------------------------------------------------------
  // Create
  // ------------------------------------------------------------------

  function openCreate() {
    const form = $("create-form");
    form.reset();
    clearFieldErrors(form);
    setAlert($("create-error"), "");
    $("create-dialog").showModal();
    $("create-username").focus();
  }

  async function onCreate(ev) {
    ev.preventDefault();
    const form = $("create-form");
    clearFieldErrors(form);
    setAlert($("create-error"), "");
    const body = {
      username: $("create-username").value.trim(),
      email: $("create-email").value.trim(),
      password: $("create-password").value,
    };
    await busy($("create-submit"), async () => {
      let r;
      try {
        r = await api("POST", "/api/users", body);
      } catch (err) {
        reportFailure(err, $("create-error"));
        return;
      }
      if (r.status === 201) {
        $("create-dialog").close();
        showMessage("Created user “" + r.data.username + "”.", "info");
        loadUsers();
      } else if (r.status === 400) {
        const rest = showFieldErrors("create", FIELD_NAMES.create, r.data);
        if (rest) setAlert($("create-error"), rest);
      } else {
        setAlert($("create-error"), errorText(r));
      }
    });
  }

  // ------------------------------------------------------------------
  // Edit
  // ------------------------------------------------------------------

  let editing = null; // {id, user, account, opener, dirty}

  function fillEditForm(u) {
    $("edit-username").value = u.username;
    $("edit-email").value = u.email;
    $("edit-level").value = String(u.level);
    $("edit-status").value = u.status;
    $("edit-picture").value = u.profilePicture || "";
    updatePreview();
    showEditMeta(u);
    $("edit-title").textContent = "Edit " + u.username;
  }

  function showEditMeta(u) {
    $("edit-meta").textContent = "ID " + u.id + " · created " + formatDateTime(u.created_at) +
      " · updated " + formatDateTime(u.updated_at);
  }

  function updatePreview() {
    const url = $("edit-picture").value.trim();
    setAvatar($("edit-preview"), $("edit-username").value || (editing && editing.user.username), url);
  }

  function showAccount(account) {
    const state = $("account-state");
    const toggle = $("toggle-active");
    state.replaceChildren();
    if (!account) {
      state.textContent = "Account state unknown.";
      toggle.disabled = true;
      return;
    }
    const own = me && account.id === me.id;
    if (account.is_active) {
      state.append("Account is active" + (account.is_staff ? " · staff" : "") + ".");
    } else {
      const strong = document.createElement("span");
      strong.className = "inactive";
      strong.textContent = "Account is deactivated";
      state.append(strong, (account.is_staff ? " · staff" : "") + ": this user cannot sign in.");
    }
    toggle.textContent = account.is_active ? "Deactivate" : "Activate";
    toggle.disabled = own;
    $("delete-user").disabled = own;
    if (own) state.append(" This is your own account: it cannot be deactivated or deleted here.");
  }

  async function openEdit(id, opener) {
    const u = list.users.get(id);
    if (!u) return;
    editing = { id, user: u, account: null, opener, dirty: false };
    const dialog = $("edit-dialog");
    clearFieldErrors(dialog);
    for (const el of ["edit-error", "account-error"]) setAlert($(el), "");
    $("edit-ok").textContent = "";
    $("account-ok").textContent = "";
    $("edit-password").value = "";
    $("edit-password-username").value = u.username;
    fillEditForm(u);
    $("account-state").textContent = "Checking account…";
    $("toggle-active").disabled = true;
    $("delete-user").disabled = false;
    dialog.showModal();
    $("edit-username").focus();

    const [ur, ar] = await Promise.allSettled([
      api("GET", "/api/users/" + id),
      api("GET", "/api/users/" + id + "/account"),
    ]);
    if (!editing || editing.id !== id) return;
    if (ur.status === "fulfilled" && ur.value.ok) {
      editing.user = ur.value.data;
      if (!editing.dirty) fillEditForm(editing.user);
      updateRow(editing.user);
    } else if (ur.status === "fulfilled" && ur.value.status === 404) {
      setAlert($("edit-error"), "This user no longer exists.");
    } else if (ur.status === "rejected") {
      reportFailure(ur.reason, $("edit-error"));
    }
    if (ar.status === "fulfilled" && ar.value.ok) {
      editing.account = ar.value.data;
      showAccount(editing.account);
    } else {
      showAccount(null);
      if (ar.status === "fulfilled" && ar.value.status !== 404) {
        setAlert($("account-error"), "Could not read the account: " + errorText(ar.value));
      } else if (ar.status === "rejected") {
        reportFailure(ar.reason, $("account-error"));
      }
    }
  }

  async function onEditSave(ev) {
    ev.preventDefault();
    if (!editing) return;
    const dialog = $("edit-form");
    clearFieldErrors(dialog);
    setAlert($("edit-error"), "");
    $("edit-ok").textContent = "";
    const u = editing.user;
    const changes = {};
    const username = $("edit-username").value.trim();
    if (username !== u.username) changes.username = username;
    const email = $("edit-email").value.trim();
    if (email !== u.email) changes.email = email;
    const levelInput = $("edit-level");
    const levelRaw = levelInput.value.trim();
    if (levelRaw === "") {
      setFieldError("edit-level", "A valid integer is required.");
      levelInput.focus();
      return;
    }
    const level = Number(levelRaw);
    if (!Number.isFinite(level)) changes.level = levelRaw; // the server says why
    else if (level !== u.level) changes.level = level;
    const status = $("edit-status").value;
    if (status !== u.status) changes.status = status;
    const picture = $("edit-picture").value.trim();
    if (picture !== (u.profilePicture || "")) changes.profilePicture = picture;
    if (Object.keys(changes).length === 0) {
      $("edit-ok").textContent = "No changes to save.";
      return;
    }
    const id = editing.id;
    await busy($("edit-submit"), async () => {
      let r;
      try {
        r = await api("PATCH", "/api/users/" + id, changes);
      } catch (err) {
        reportFailure(err, $("edit-error"));
        return;
      }
      if (!editing || editing.id !== id) return;
      if (r.ok && r.data) {
        editing.user = r.data;
        updateRow(r.data);
        $("edit-dialog").close();
        showMessage("Saved “" + r.data.username + "”.", "info");
      } else if (r.status === 400) {
        const rest = showFieldErrors("edit", FIELD_NAMES.edit, r.data);
        if (rest) setAlert($("edit-error"), rest);
      } else {
        setAlert($("edit-error"), errorText(r));
      }
    });
  }

  /** A POST on /api/users/{id}/{action}: 204 expected. */
  async function accountAction(action, body, button, done) {
    if (!editing) return;
    const id = editing.id;
    setAlert($("account-error"), "");
    $("account-ok").textContent = "";
    await busy(button, async () => {
      let r;
      try {
        r = await api("POST", "/api/users/" + id + "/" + action, body);
      } catch (err) {
        reportFailure(err, $("account-error"));
        return;
      }
      if (!editing || editing.id !== id) return;
      if (r.status === 204 || r.ok) done(r);
      else if (r.status === 400 && action === "password") {
        const rest = showFieldErrors("edit", { new_password: "password" }, r.data);
        if (rest) setAlert($("account-error"), rest);
      } else setAlert($("account-error"), errorText(r));
    });
    // busy() re-enabled the button; the own-account rule may disable it again
    if (editing && editing.id === id) showAccount(editing.account);
  }

  function onSetPassword(ev) {
    ev.preventDefault();
    if (!editing) return;
    const input = $("edit-password");
    clearFieldErrors($("password-form"));
    accountAction("password", { new_password: input.value }, $("password-submit"), () => {
      input.value = "";
      $("account-ok").textContent = "Password set. The user's sessions were ended.";
      if (me && editing.id === me.id) sessionEnded("Your password was changed. Please sign in again.");
    });
  }

  function onToggleActive() {
    if (!editing || !editing.account) return;
    const activate = !editing.account.is_active;
    accountAction(activate ? "activate" : "deactivate", undefined, $("toggle-active"), () => {
      editing.account = Object.assign({}, editing.account, { is_active: activate });
      $("account-ok").textContent = activate
        ? "Account activated: the user can sign in again."
        : "Account deactivated: the user is signed out and cannot sign in.";
    });
  }

  function onLogoutAll() {
    if (!editing) return;
    accountAction("logout-all", undefined, $("logout-all"), () => {
      $("account-ok").textContent = "Logged out everywhere: every token of this user is void.";
      if (me && editing.id === me.id) sessionEnded("You were logged out everywhere. Please sign in again.");
    });
  }

  // ------------------------------------------------------------------
  // Delete
  // ------------------------------------------------------------------

  function openDelete() {
    if (!editing) return;
    $("delete-name").textContent = editing.user.username;
    $("delete-confirm").value = "";
    $("delete-submit").disabled = true;
    $("delete-submit").textContent = "Delete " + editing.user.username;
    setAlert($("delete-error"), "");
    $("delete-dialog").showModal();
    $("delete-confirm").focus();
  }

  async function onDelete(ev) {
    ev.preventDefault();
    if (!editing || $("delete-confirm").value.trim() !== editing.user.username) return;
    const { id, user } = editing;
    await busy($("delete-submit"), async () => {
      let r;
      try {
        r = await api("DELETE", "/api/users/" + id);
      } catch (err) {
        reportFailure(err, $("delete-error"));
        return;
      }
      if (r.status === 204 || r.status === 404) {
        $("delete-dialog").close();
        $("edit-dialog").close();
        list.users.delete(id);
        const tr = rowOf(id);
        if (tr) tr.remove();
        showMessage(r.status === 204 ? "Deleted “" + user.username + "”." : "“" + user.username + "” was already deleted.", "info");
        loadUsers();
      } else {
        setAlert($("delete-error"), errorText(r));
      }
    });
    if ($("delete-dialog").open) {
      $("delete-submit").disabled = $("delete-confirm").value.trim() !== editing.user.username;
    }
  }

  // ------------------------------------------------------------------
  // Wiring
  // ------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", onSignIn);
    $("signout").addEventListener("click", () => signOut());

    $("filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      filtersChanged();
    });
    $("search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(filtersChanged, 300);
    });
    $("status-filter").addEventListener("change", filtersChanged);
    $("ordering").addEventListener("change", filtersChanged);
    $("page-size").addEventListener("change", () => {
      list.limit = Number($("page-size").value) || 20;
      filtersChanged();
    });
    $("prev-page").addEventListener("click", () => {
      list.offset = Math.max(0, list.offset - list.limit);
      loadUsers();
    });
    $("next-page").addEventListener("click", () => {
      if (list.offset + list.limit < list.total) {
        list.offset += list.limit;
        loadUsers();
      }
    });
    $("reload").addEventListener("click", () => {
      loadUsers();
      if (!live.es) startLive();
    });
    $("new-user").addEventListener("click", openCreate);
    $("users-body").addEventListener("click", (ev) => {
      const button = ev.target.closest("[data-edit]");
      if (button) openEdit(Number(button.dataset.id), button);
    });

    for (const button of document.querySelectorAll("dialog [data-close]")) {
      button.addEventListener("click", () => button.closest("dialog").close());
    }
    $("create-form").addEventListener("submit", onCreate);

    $("edit-form").addEventListener("submit", onEditSave);
    $("edit-form").addEventListener("input", () => {
      if (editing) editing.dirty = true;
    });
    $("edit-picture").addEventListener("input", updatePreview);
    $("edit-dialog").addEventListener("close", () => {
      const opener = editing && editing.opener;
      const id = editing && editing.id;
      editing = null;
      if ($("delete-dialog").open) $("delete-dialog").close();
      const again = opener && opener.isConnected ? opener
        : $("users-body").querySelector('[data-edit][data-id="' + Number(id) + '"]');
      if (again) again.focus();
      else if (me) $("main").focus();
    });
    $("password-form").addEventListener("submit", onSetPassword);
    $("toggle-active").addEventListener("click", onToggleActive);
    $("logout-all").addEventListener("click", onLogoutAll);
    $("delete-user").addEventListener("click", openDelete);

    $("delete-form").addEventListener("submit", onDelete);
    $("delete-confirm").addEventListener("input", () => {
      $("delete-submit").disabled = !editing || $("delete-confirm").value.trim() !== editing.user.username;
    });
    $("delete-dialog").addEventListener("close", () => {
      if ($("edit-dialog").open) $("delete-user").focus();
    });
  }

  async function start() {
    wire();
    let stored = null;
    try {
      stored = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
    } catch {
      stored = null;
    }
    if (stored && typeof stored.refresh === "string" && typeof stored.access === "string") {
      $("signin-view").hidden = true;
      setTokens(stored.access, stored.refresh);
      try {
        await enterAsStaff();
      } catch (err) {
        signOutLocal();
        showSignIn(err instanceof AuthEnded ? "" : failureText(err));
      }
      return;
    }
    showSignIn();
  }

  start();
})();
