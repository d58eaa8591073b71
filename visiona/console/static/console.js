// visionA console: the little JavaScript the server-rendered pages need.
// Every change goes through the JSON API (/api/v1) with the session cookie; the
// browser adds the Origin header the API's same-origin check looks for.
// Text from users is only ever set with textContent, never as HTML.
"use strict";

(function () {
  const API = "/api/v1";
  const POLL_MS = 3000;
  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));
  // The organisation the page acts in (the switcher's); every API call names it.
  const ORG = document.body ? document.body.dataset.org || "" : "";

  // -- helpers -----------------------------------------------------------------

  // A JSON request to a URL of this server; resolves to {ok, status, data}.
  async function request(method, url, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (ORG && url.startsWith(API + "/")) init.headers["X-Visiona-Org"] = ORG;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      return { ok: false, status: 0, data: null };
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch (err) {
        data = null;
      }
    }
    return { ok: response.ok, status: response.status, data, date: response.headers.get("Date") };
  }

  // A call of the JSON API (path relative to /api/v1).
  function api(method, path, body) {
    return request(method, API + path, body);
  }

  const FIELD_NAMES = { name: "Name", email: "Email", password: "Password", target_chip: "Target chip", labels: "Labels", file: "File", model_id: "Model", scopes: "Scopes", expires_in_days: "Expiry (days)", url: "URL", events: "Events", description: "Description" };

  function errorText(result, fallback) {
    if (result.status === 0) return "The server cannot be reached. Check your connection and try again.";
    const error = result.data && result.data.error;
    if (!error) return fallback || "Something went wrong (HTTP " + result.status + ").";
    if (Array.isArray(error.fields) && error.fields.length) {
      // One readable sentence per field (the first problem of each), one per line.
      const seen = new Set();
      const lines = [];
      for (const f of error.fields) {
        const loc = Array.isArray(f.loc) ? f.loc.filter((p) => p !== "body") : [];
        const key = String(loc[0] || "");
        if (seen.has(key)) continue;
        seen.add(key);
        const name = FIELD_NAMES[key] || (key ? key.charAt(0).toUpperCase() + key.slice(1).replace(/_/g, " ") : "");
        lines.push(name ? name + " " + fieldProblem(f.message) : sentence(f.message));
      }
      return lines.join("\n");
    }
    return error.message;
  }

  function sentence(text) {
    const t = String(text || "").replace(/^Value error, /, "").trim();
    return t ? t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".") : "";
  }

  // pydantic's wording → "Password must be at least 8 characters long."
  function fieldProblem(message) {
    const m = String(message || "").replace(/^Value error, /, "").trim();
    let found = /^String should have at least (\d+) characters?$/.exec(m);
    if (found) return "must be at least " + found[1] + " characters long.";
    found = /^String should have at most (\d+) characters?$/.exec(m);
    if (found) return "must be at most " + found[1] + " characters long.";
    if (/not a valid email address/i.test(m)) return "is not a valid email address.";
    found = /^Input should be greater than or equal to (\d+)$/.exec(m);
    if (found) return "must be at least " + found[1] + ".";
    found = /^Input should be less than or equal to (\d+)$/.exec(m);
    if (found) return "must be at most " + found[1] + ".";
    if (/^Input should be a valid integer/.test(m)) return "must be a whole number.";
    if (/^List should have at least 1 item/.test(m)) return "must include at least one.";
    if (/^Field required$/i.test(m)) return "is required.";
    const low = m.charAt(0).toLowerCase() + m.slice(1);
    return (/^(must|is|should) /.test(low) ? low : "is not valid: " + low) + (/[.!?]$/.test(low) ? "" : ".");
  }

  function showError(form, text) {
    const slot = $("[data-form-error]", form);
    if (!slot) return;
    slot.textContent = text || "";
    slot.hidden = !text;
  }

  let toastTimer = null;
  function toast(text) {
    const el = $("#toast");
    if (!el) return;
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  // Relative times ("3 minutes ago"); the exact time stays in the title (hover).
  const UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const rtf = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
  function relative(iso) {
    const seconds = (Date.parse(iso) - Date.now()) / 1000;
    if (Math.abs(seconds) < 10) return seconds <= 0 ? "just now" : "in a few seconds";
    for (const [unit, size] of UNITS) {
      if (Math.abs(seconds) >= size || unit === "second") return rtf.format(Math.round(seconds / size), unit);
    }
    return iso;
  }
  function refreshTimes(root) {
    for (const el of $$("time[data-relative]", root)) el.textContent = relative(el.getAttribute("datetime"));
  }

  // A confirmation in a modal <dialog>: resolves true when the user confirms.
  function confirmAction(title, message, okLabel) {
    const dialog = $("#confirm-dialog");
    $("#confirm-title").textContent = title;
    $("#confirm-message").textContent = message;
    $("#confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    dialog.showModal();
    $("#confirm-ok").focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    });
  }

  // Re-read the current page and swap the given regions (keeps scripts' state, no reload).
  async function refreshRegions(names) {
    let response;
    try {
      response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
    } catch (err) {
      return false;
    }
    if (response.redirected && new URL(response.url).pathname === "/sign-in") {
      location.assign(response.url);
      return false;
    }
    if (!response.ok) return false;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const name of names) {
      const fresh = $('[data-region="' + name + '"]', doc);
      const current = $('[data-region="' + name + '"]');
      if (fresh && current) {
        current.replaceWith(document.adoptNode(fresh));
      }
    }
    refreshTimes(document);
    return true;
  }

  async function copyText(text, statusEl) {
    try {
      await navigator.clipboard.writeText(text);
      if (statusEl) statusEl.textContent = "Copied.";
      else toast("Copied.");
    } catch (err) {
      if (statusEl) statusEl.textContent = "Select the text and press Ctrl+C to copy.";
      else toast("Copying is not allowed here: select the text and copy it.");
    }
  }

  function visible() {
    return document.visibilityState === "visible";
  }

  // A poll that runs only while the tab is visible, and at once when it becomes visible.
  function poll(fn, interval) {
    let timer = null;
    let running = false;
    async function tick() {
      if (running || !visible()) return;
      running = true;
      try {
        await fn();
      } finally {
        running = false;
      }
    }
    timer = setInterval(tick, interval);
    document.addEventListener("visibilitychange", () => { if (visible()) tick(); });
    return { stop: () => clearInterval(timer), now: tick };
  }

  // -- live events (GET /api/v1/events, Server-Sent Events) -------------------------

  // The event types each page follows (the stream sends `event: <action>`).
  const DEVICE_EVENTS = ["device.created", "device.paired", "device.enrolled", "device.renamed", "device.tagged", "device.unpaired"];
  const TUNNEL_EVENTS = ["tunnel.connected", "tunnel.disconnected", "tunnel.superseded", "tunnel.conflict", "tunnel.closed_revoked"];
  const DEPLOYMENT_EVENTS = ["deployment.requested", "deployment.succeeded", "deployment.stored", "deployment.failed"];
  const ROLLOUT_EVENTS = ["rollout.created", "rollout.batch_started", "rollout.batch_finished", "rollout.paused", "rollout.resumed", "rollout.cancelled", "rollout.completed", "rollout.failed"];

  // Follow the organisation's events of `types`: onEvent(action, item) per event, onSync()
  // after a `reset` and on every (re)connection (what happened while away). The browser
  // reconnects by itself and resumes with Last-Event-ID. Without EventSource, or once
  // the stream is refused for good (signed out), `fallback()` polls instead.
  function liveEvents(types, onEvent, onSync, fallback) {
    if (!("EventSource" in window)) {
      fallback();
      return null;
    }
    const params = new URLSearchParams();
    if (ORG) params.set("org", ORG);  // EventSource cannot send the X-Visiona-Org header
    // the families of the types (the server filters; the listeners below pick)
    for (const family of new Set(types.map((type) => type.split(".")[0] + ".*"))) params.append("type", family);
    const source = new EventSource(API + "/events?" + params.toString());
    let opened = false;
    for (const type of types) {
      source.addEventListener(type, (event) => {
        let item = null;
        try {
          item = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        onEvent(type, item);
      });
    }
    source.addEventListener("reset", () => onSync());
    source.addEventListener("open", () => {
      if (opened) onSync();  // a reconnection: catch up on what the page shows
      opened = true;
      document.body.dataset.live = "on";
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        document.body.dataset.live = "off";
        fallback();
      }
    });
    window.addEventListener("pagehide", () => source.close());
    return source;
  }

  // fn() at most once per `wait` ms, trailing (a burst of events → one refresh).
  function debounce(fn, wait) {
    let timer = null;
    return () => {
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        fn();
      }, wait);
    };
  }

  // -- sign in / sign up / sign out ------------------------------------------------

  function setupSignIn() {
    const form = $("#sign-in-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const button = $("button[type=submit]", form);
      button.disabled = true;
      const result = await api("POST", "/auth/login", { email: form.email.value.trim(), password: form.password.value });
      button.disabled = false;
      if (result.ok) {
        location.assign(form.dataset.next || "/devices");
        return;
      }
      const text = result.status === 401 ? "Wrong email or password." : errorText(result);
      showError(form, text);
      form.password.value = "";
      form.password.focus();
    });
  }

  function setupSignUp() {
    const form = $("#sign-up-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const button = $("button[type=submit]", form);
      button.disabled = true;
      const email = form.email.value.trim();
      const password = form.password.value;
      const created = await api("POST", "/auth/register", { name: form.name.value.trim(), email, password });
      if (!created.ok) {
        button.disabled = false;
        showError(form, errorText(created));
        return;
      }
      const login = await api("POST", "/auth/login", { email, password });
      button.disabled = false;
      if (!login.ok) {
        showError(form, "Your account was created, but signing in failed: " + errorText(login));
        return;
      }
      location.assign(form.dataset.next || "/devices");
    });
  }

  async function signOut() {
    await api("POST", "/auth/logout");
    location.assign("/sign-in");
  }

  // -- devices list ------------------------------------------------------------------

  function selectedIds() {
    return $$("input[data-select]:checked").map((box) => box.value);
  }

  function updateSelection() {
    const button = $('[data-action="bulk-unpair"]');
    if (!button) return;
    const ids = selectedIds();
    const all = $$("input[data-select]");
    button.disabled = ids.length === 0;
    const count = $("[data-selection-count]");
    if (count) count.textContent = ids.length ? ids.length + " selected" : "";
    const selectAll = $("[data-select-all]");
    if (selectAll) {
      selectAll.checked = all.length > 0 && ids.length === all.length;
      selectAll.indeterminate = ids.length > 0 && ids.length < all.length;
    }
  }

  let devicesPoll = null;

  async function refreshDevices() {
    const table = $("[data-live-devices]");
    if (!table) return;
    const result = await request("GET", "/devices.json?" + table.dataset.query);
    if (result.status === 401) {
      location.assign("/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
      return;
    }
    if (!result.ok || !result.data) return;
    const checked = new Set(selectedIds());
    const body = $("[data-rows]", table);
    const template = document.createElement("template");
    template.innerHTML = result.data.rows_html;
    body.replaceChildren(template.content);
    for (const box of $$("input[data-select]", body)) box.checked = checked.has(box.value);
    const total = result.data.total;
    for (const el of $$("[data-when-devices]")) el.hidden = total === 0;
    const empty = $("[data-empty-state]");
    if (empty) empty.hidden = total > 0;
    const noMatch = $("[data-no-match]");
    if (noMatch) noMatch.hidden = result.data.devices.length > 0;
    refreshTimes(body);
    updateSelection();
  }

  function setupDevices() {
    if (!$("[data-live-devices]")) return;
    document.addEventListener("change", (event) => {
      if (event.target.matches("[data-select-all]")) {
        for (const box of $$("input[data-select]")) box.checked = event.target.checked;
      }
      if (event.target.matches("[data-select], [data-select-all]")) updateSelection();
    });
    const later = debounce(refreshDevices, 1500);
    liveEvents(
      [...TUNNEL_EVENTS, ...DEVICE_EVENTS],
      (action, item) => {
        // The status badge at once; then the rows again (a device this list does not
        // show yet, its last-seen time, the filters), once per burst of events.
        const row = item.device_id && $('tr[data-device-id="' + item.device_id + '"]');
        const badge = TUNNEL_BADGES[action];
        if (row && badge) setBadge($("[data-status]", row), badge[0], badge[1]);
        later();
      },
      refreshDevices,
      () => { devicesPoll = poll(refreshDevices, POLL_MS); }
    );
    updateSelection();
  }

  // What a tunnel event makes of a device's status badge: [label, kind].
  const TUNNEL_BADGES = {
    "tunnel.connected": ["Online", "online"],
    "tunnel.disconnected": ["Offline", "offline"],
    "tunnel.closed_revoked": ["Offline", "offline"],
  };

  function setBadge(cell, label, kind) {
    if (!cell) return;
    const badge = document.createElement("span");
    badge.className = "badge badge-" + kind;
    badge.textContent = label;
    cell.replaceChildren(badge);
  }

  async function bulkUnpair() {
    const ids = selectedIds();
    if (!ids.length) return;
    const names = ids.map((id) => ($('tr[data-device-id="' + id + '"]') || {}).dataset?.name || id);
    const what = ids.length === 1 ? "“" + names[0] + "”" : ids.length + " devices";
    const ok = await confirmAction(
      "Unpair " + what + "?",
      "Unpairing removes " + (ids.length === 1 ? "the device" : "these devices: " + names.join(", ")) +
        ", revokes " + (ids.length === 1 ? "its" : "their") + " tokens and disconnects " + (ids.length === 1 ? "its agent" : "their agents") + ". This cannot be undone.",
      "Unpair"
    );
    if (!ok) return;
    const failures = [];
    for (const id of ids) {
      const result = await api("DELETE", "/devices/" + encodeURIComponent(id));
      if (!result.ok && result.status !== 404) failures.push(errorText(result));
    }
    for (const box of $$("input[data-select]")) box.checked = false;
    await refreshDevices();
    toast(failures.length ? "Some devices were not unpaired: " + failures[0] : (ids.length === 1 ? "Device unpaired." : ids.length + " devices unpaired."));
  }

  // -- connect dialog ------------------------------------------------------------------

  const connect = { token: null, id: null, expiresAt: 0, timer: null, poller: null, paired: false };

  function connectCommand() {
    const code = $("#connect-command");
    const port = $("#connect-port").value || "PORT";
    return "visiona agent --server " + code.dataset.server + " --token " + (connect.token || "…") + " --forward 127.0.0.1:" + port;
  }

  function renderCommand() {
    $("#connect-command").textContent = connectCommand();
  }

  function stopConnectTimers() {
    clearInterval(connect.timer);
    clearInterval(connect.poller);
    connect.timer = connect.poller = null;
  }

  function tickExpiry() {
    const left = Math.max(0, Math.round((connect.expiresAt - Date.now()) / 1000));
    const minutes = Math.floor(left / 60);
    const seconds = String(left % 60).padStart(2, "0");
    $("#connect-expiry").textContent = minutes + ":" + seconds;
    if (left === 0 && !connect.paired) {
      stopConnectTimers();
      const status = $("#connect-status");
      status.textContent = "This token has expired. Create a new one.";
      status.className = "expired";
      $("#connect-new").hidden = false;
    }
  }

  async function checkPaired() {
    if (!connect.id || connect.paired) return;
    const result = await request("GET", "/pairing-tokens/" + encodeURIComponent(connect.id) + ".json");
    if (!result.ok || !result.data || !result.data.used) return;
    connect.paired = true;
    stopConnectTimers();
    const status = $("#connect-status");
    const name = result.data.device ? result.data.device.name : "The device";
    status.textContent = "Paired: " + name + " is connected and now in your device list.";
    status.className = "paired";
    $("#connect-expiry-label").textContent = "Token:";
    $("#connect-expiry").textContent = "Used";
    if (devicesPoll) devicesPoll.now();
  }

  async function newToken() {
    stopConnectTimers();
    connect.token = connect.id = null;
    connect.paired = false;
    $("#connect-new").hidden = true;
    $("#connect-expiry-label").textContent = "Expires in";
    const status = $("#connect-status");
    status.textContent = "Creating a pairing token…";
    status.className = "waiting";
    $("#connect-copied").textContent = "";
    renderCommand();
    const result = await api("POST", "/pairing-tokens", {});
    if (!result.ok) {
      status.textContent = "No token: " + errorText(result);
      status.className = "expired";
      $("#connect-new").hidden = false;
      return;
    }
    connect.token = result.data.token;
    connect.id = result.data.id;
    // Count down from the server's clock (its Date header), not this computer's.
    const serverNow = Date.parse(result.date || "") || Date.now();
    connect.expiresAt = Date.now() + (Date.parse(result.data.expires_at) - serverNow);
    renderCommand();
    status.textContent = "Waiting for the agent to pair…";
    tickExpiry();
    connect.timer = setInterval(tickExpiry, 1000);
    connect.poller = setInterval(() => { if (visible()) checkPaired(); }, 1500);
  }

  function setupConnect() {
    const dialog = $("#connect-dialog");
    if (!dialog) return;
    $("#connect-port").addEventListener("input", renderCommand);
    $("#connect-copy").addEventListener("click", () => {
      const port = $("#connect-port");
      if (!port.value || !port.checkValidity()) {
        $("#connect-copied").textContent = "Enter the local port of the device's service first.";
        port.focus();
        return;
      }
      copyText(connectCommand(), $("#connect-copied"));
    });
    $("#connect-new").addEventListener("click", newToken);
    $("#connect-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      stopConnectTimers();
      connect.token = null; // shown once: gone with the dialog
      renderCommand();
      if (document.body.dataset.page === "pairing-tokens") refreshRegions(["tokens"]);
    });
  }

  function openConnect() {
    const dialog = $("#connect-dialog");
    if (!dialog) return;
    dialog.showModal();
    newToken();
  }

  // -- device page ---------------------------------------------------------------------

  function setupDevice() {
    const heading = $("h1[data-device-id]");
    if (!heading) return;
    const id = heading.dataset.deviceId;
    const form = $("#rename-form");
    if (form) form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const result = await api("PATCH", "/devices/" + id, { name: form.name.value.trim() });
      if (!result.ok) {
        showError(form, errorText(result));
        return;
      }
      $("[data-device-name]").textContent = result.data.name;
      document.title = result.data.name + " · visionA";
      const unpair = $('[data-action="unpair"]');
      if (unpair) unpair.dataset.name = result.data.name;
      toast("Renamed to " + result.data.name + ".");
    });
    const tags = $("#tags-form");
    if (tags) {
      tags.addEventListener("submit", async (event) => {
        event.preventDefault();
        showError(tags, "");
        const wanted = {};
        for (const word of tags.tags.value.split(/[\s,]+/).filter(Boolean)) {
          const at = word.indexOf("=");
          if (at < 1) {
            showError(tags, "Tags: write each one as key=value (" + word + ").");
            return;
          }
          wanted[word.slice(0, at)] = word.slice(at + 1);
        }
        const result = await api("PUT", "/devices/" + id + "/tags", { tags: wanted });
        if (!result.ok) {
          showError(tags, errorText(result));
          return;
        }
        await refreshRegions(["tag-list"]);
        toast("Tags saved.");
      });
    }
    const deploy = $("#deploy-form");
    if (deploy) {
      deploy.addEventListener("submit", async (event) => {
        event.preventDefault();
        showError(deploy, "");
        const button = $("button[type=submit]", deploy);
        const spinner = $("progress", deploy);
        button.disabled = true;
        spinner.hidden = false;
        const result = await api("POST", "/devices/" + id + "/deployments", { model_id: deploy.model_id.value });
        button.disabled = false;
        spinner.hidden = true;
        const failed = !result.ok && result.data && result.data.error && result.data.error.code === "deployment_failed";
        if (failed) showError(deploy, "Deployment failed: " + result.data.error.message);
        else if (!result.ok) showError(deploy, errorText(result));
        else if (result.data && result.data.status === "stored") toast("Stored on the PC; no deploy hook is configured there, so nothing loaded it.");
        else toast("Deployment succeeded.");
        await refreshRegions(["deployments"]);
      });
    }
    const regions = ["device-details", "remote-access", "deployments", "session-tokens", "history"];
    const refresh = () => refreshRegions(regions);
    const later = debounce(refresh, 500);
    liveEvents(
      [...TUNNEL_EVENTS, ...DEVICE_EVENTS, ...DEPLOYMENT_EVENTS, "session_token.issued", "session_token.renewed", "session_token.revoked"],
      (action, item) => { if (item.device_id === id) later(); },
      refresh,
      () => poll(() => refreshRegions(["device-details"]), POLL_MS)
    );
  }

  async function unpairOne(button) {
    const name = button.dataset.name;
    const ok = await confirmAction(
      "Unpair “" + name + "”?",
      "Unpairing removes “" + name + "”, revokes its tokens and disconnects its agent. This cannot be undone.",
      "Unpair"
    );
    if (!ok) return;
    const result = await api("DELETE", "/devices/" + button.dataset.deviceId);
    if (!result.ok && result.status !== 404) {
      toast("Not unpaired: " + errorText(result));
      return;
    }
    location.assign("/devices");
  }

  async function revokeSession(button) {
    const result = await api("DELETE", "/session-tokens/" + encodeURIComponent(button.dataset.tokenId));
    if (!result.ok) {
      toast("Not revoked: " + errorText(result));
      return;
    }
    toast("Session token revoked.");
    await refreshRegions(["session-tokens", "device-details"]);
  }

  async function revokePairing(button) {
    const result = await api("DELETE", "/pairing-tokens/" + encodeURIComponent(button.dataset.tokenId));
    if (!result.ok) {
      toast("Not revoked: " + errorText(result));
      return;
    }
    toast("Pairing token revoked.");
    await refreshRegions(["tokens"]);
  }

  // -- models page ---------------------------------------------------------------------

  // Decimal (SI) units, as the server-rendered pages and the CLI: 1 kB = 1000 bytes.
  function formatBytes(n) {
    if (n < 1000) return n === 1 ? "1 byte" : n + " bytes";
    const units = ["kB", "MB", "GB", "TB"];
    let i = -1;
    while ((i < 0 || n >= 999.95) && i < units.length - 1) { n /= 1000; i += 1; }
    return n.toFixed(1) + " " + units[i];
  }

  function setupUpload() {
    const form = $("#upload-form");
    if (!form) return;
    const progress = $("#upload-progress");
    const percent = $("#upload-percent");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      showError(form, "");
      const file = form.file.files[0];
      if (!file) return showError(form, "File: choose a .nef file to upload.");
      if (!form.target_chip.value) return showError(form, "Target chip: choose the chip the model is built for.");
      const max = Number(form.dataset.maxBytes);
      if (max && file.size > max) return showError(form, "File: " + formatBytes(file.size) + " is too large; the limit is " + formatBytes(max) + ".");
      const data = new FormData();
      data.append("target_chip", form.target_chip.value);
      if (form.name.value.trim()) data.append("name", form.name.value.trim());
      for (const label of form.labels.value.split(",").map((l) => l.trim()).filter(Boolean)) data.append("labels", label);
      data.append("file", file);
      const xhr = new XMLHttpRequest();
      const button = $("button[type=submit]", form);
      button.disabled = true;
      progress.hidden = false;
      progress.value = 0;
      percent.textContent = "0%";
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        progress.value = Math.floor((e.loaded / e.total) * 100);
        percent.textContent = progress.value + "% of " + formatBytes(e.total);
      });
      xhr.addEventListener("loadend", async () => {
        button.disabled = false;
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
        const result = { ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, data: body };
        if (!result.ok) {
          progress.hidden = true;
          percent.textContent = "";
          showError(form, result.status === 413 ? "File: too large for this server." : errorText(result));
          return;
        }
        progress.value = 100;
        percent.textContent = "Uploaded " + body.name + ".";
        form.reset();
        await refreshRegions(["models-list"]);
      });
      xhr.open("POST", API + "/models");
      xhr.setRequestHeader("Accept", "application/json");
      if (ORG) xhr.setRequestHeader("X-Visiona-Org", ORG);
      xhr.send(data);
    });

  }

  // The rename dialog lives in a <template> until needed (its labels stay out of the page).
  function renameModel(button) {
    const template = $("#rename-template");
    document.body.append(template.content.cloneNode(true));
    const dialog = $("#rename-dialog");
    const form = $("#rename-model-form");
    form.name.value = button.dataset.name;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const result = await api("PATCH", "/models/" + button.dataset.modelId, { name: form.name.value.trim() });
      if (!result.ok) return showError(form, errorText(result));
      dialog.close();
      toast("Renamed to " + result.data.name + ".");
      await refreshRegions(["models-list"]);
    });
    $("[data-close]", dialog).addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => dialog.remove());
    dialog.showModal();
    form.name.select();
  }

  async function deleteModel(button) {
    const name = button.dataset.name;
    const ok = await confirmAction("Delete “" + name + "”?", "The model “" + name + "” and its file are deleted. Models already on devices stay there.", "Delete");
    if (!ok) return;
    const result = await api("DELETE", "/models/" + button.dataset.modelId);
    if (!result.ok && result.status !== 404) return toast("Not deleted: " + errorText(result));
    toast("Model deleted.");
    await refreshRegions(["models-list"]);
  }


  // -- members -------------------------------------------------------------------------

  function setupMembers() {
    const form = $("#invite-form");
    if (form) {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        showError(form, "");
        const email = form.email.value.trim();
        if (!email) return showError(form, "Email is required.");
        const orgId = form.dataset.orgId;
        const result = await api("POST", "/orgs/" + orgId + "/invitations", { email, role: form.role.value });
        if (!result.ok) return showError(form, errorText(result));
        const link = location.origin + "/invitations/accept?token=" + encodeURIComponent(result.data.token);
        const box = $("[data-invite-link]");
        $("[data-invite-email]", box).textContent = result.data.email + " (" + result.data.role + ")";
        $("[data-invite-url]", box).textContent = link;
        $("[data-copy-invite]", box).dataset.copy = link;
        box.hidden = false;
        form.reset();
        await refreshRegions(["members"]);
      });
    }
    document.addEventListener("change", async (event) => {
      const select = event.target.closest("select[data-role-select]");
      if (!select) return;
      const slot = $("[data-members-error]");
      slot.hidden = true;
      const result = await api("PATCH", "/orgs/" + select.dataset.orgId + "/members/" + select.dataset.memberId, { role: select.value });
      if (!result.ok) {
        select.value = select.dataset.current;
        slot.textContent = "Role not changed: " + errorText(result);
        slot.hidden = false;
        return;
      }
      select.dataset.current = result.data.role;
      toast(result.data.email + " is now " + result.data.role + ".");
    });
  }

  function membersError(result, what) {
    const slot = $("[data-members-error]");
    if (!slot) return toast(what + errorText(result));
    slot.textContent = what + errorText(result);
    slot.hidden = false;
  }

  async function removeMember(button) {
    const ok = await confirmAction("Remove " + button.dataset.name + "?", button.dataset.name + " loses access to this organisation's devices and models at once.", "Remove");
    if (!ok) return;
    const result = await api("DELETE", "/orgs/" + button.dataset.orgId + "/members/" + button.dataset.memberId);
    if (!result.ok) return membersError(result, "Not removed: ");
    toast(button.dataset.name + " removed.");
    await refreshRegions(["members"]);
  }

  async function leaveOrg(button) {
    const ok = await confirmAction("Leave " + button.dataset.name + "?", "You lose access to its devices and models; someone must invite you again to come back.", "Leave");
    if (!ok) return;
    const result = await api("DELETE", "/orgs/" + button.dataset.orgId + "/members/" + button.dataset.memberId);
    if (!result.ok) return membersError(result, "You did not leave: ");
    location.assign("/devices");  // the stale choice falls back to your personal organisation
  }

  async function revokeInvitation(button) {
    const ok = await confirmAction("Revoke the invitation of " + button.dataset.name + "?", "Its link stops working.", "Revoke");
    if (!ok) return;
    const result = await api("DELETE", "/orgs/" + button.dataset.orgId + "/invitations/" + button.dataset.invitationId);
    if (!result.ok && result.status !== 404) return membersError(result, "Not revoked: ");
    toast("Invitation revoked.");
    await refreshRegions(["members"]);
  }

  // Act in an organisation from now on: the switcher's form (same origin, a real POST).
  function switchTo(orgId, next) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = "/org";
    for (const [name, value] of [["org_id", orgId], ["next", next]]) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.append(input);
    }
    document.body.append(form);
    form.submit();
  }

  function setupAccept() {
    const form = $("#accept-form");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const result = await api("POST", "/invitations/accept", { token: form.dataset.token });
      if (!result.ok) return showError(form, errorText(result));
      switchTo(result.data.id, "/members");
    });
  }

  // -- API keys ------------------------------------------------------------------------

  function setupApiKeys() {
    const form = $("#api-key-form");
    if (!form) return;
    const box = $("[data-new-key]");
    $("[data-copy-key]", box).addEventListener("click", () => {
      copyText($("[data-new-key-value]", box).textContent, $("[data-copy-status]", box));
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const name = form.name.value.trim();
      const scopes = $$("input[name=scopes]:checked", form).map((input) => input.value);
      const max = Number(form.dataset.maxDays) || 365;
      const raw = form.expires_in_days.value.trim();
      const days = Number(raw);
      const problems = [];
      if (!name) problems.push("Name is required: say what the key is for.");
      if (!scopes.length) problems.push("Scopes: choose at least one.");
      if (!/^\d+$/.test(raw) || days < 1 || days > max) problems.push("Expiry: enter a whole number of days from 1 to " + max + ".");
      if (problems.length) return showError(form, problems.join("\n"));
      const button = $("button[type=submit]", form);
      button.disabled = true;
      const result = await api("POST", "/api-keys", { name, scopes, expires_in_days: days });
      button.disabled = false;
      if (!result.ok) return showError(form, "The key was not created: " + errorText(result));
      // Shown once: it lives only in this box, until the page is left.
      $("[data-new-key-name]", box).textContent = result.data.name;
      $("[data-new-key-value]", box).textContent = result.data.key;
      $("[data-copy-status]", box).textContent = "";
      box.hidden = false;
      form.reset();
      await refreshRegions(["keys"]);
    });
  }

  async function revokeApiKey(button) {
    const name = button.dataset.name;
    const ok = await confirmAction("Revoke “" + name + "”?", "Scripts using “" + name + "” are refused from now on. This cannot be undone.", "Revoke");
    if (!ok) return;
    const result = await api("DELETE", "/api-keys/" + encodeURIComponent(button.dataset.keyId));
    if (!result.ok && result.status !== 404) return toast("Not revoked: " + errorText(result));
    toast("API key “" + name + "” revoked.");
    await refreshRegions(["keys"]);
  }

  // -- webhooks ------------------------------------------------------------------------

  const WEBHOOK_REGIONS = ["webhooks", "endpoint", "deliveries"];

  function setupWebhooks() {
    // The endpoint page follows its delivery log (and the endpoint's state).
    if ($("[data-live-deliveries]")) poll(() => refreshRegions(["endpoint", "deliveries"]), POLL_MS);
    const form = $("#webhook-form");
    if (!form) return;
    const box = $("[data-new-secret]");
    $("[data-copy-secret]", box).addEventListener("click", () => {
      copyText($("[data-new-secret-value]", box).textContent, $("[data-copy-status]", box));
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const url = form.url.value.trim();
      const description = form.description.value.trim();
      const events = $$("input[name=events]:checked", form).map((input) => input.value);
      for (const word of form.more_events.value.split(/[\s,]+/)) {
        if (word && !events.includes(word)) events.push(word);
      }
      const problems = [];
      if (!/^https?:\/\/[^\s]+$/i.test(url)) problems.push("URL: enter the http:// or https:// address of your receiver.");
      if (!events.length) problems.push("Events: choose at least one.");
      if (problems.length) return showError(form, problems.join("\n"));
      const body = { url, events };
      if (description) body.description = description;
      const button = $("button[type=submit]", form);
      button.disabled = true;
      const result = await api("POST", "/webhooks", body);
      button.disabled = false;
      if (!result.ok) return showError(form, "The endpoint was not created: " + errorText(result));
      // Shown once: it lives only in this box, until the page is left.
      $("[data-new-secret-url]", box).textContent = result.data.url;
      $("[data-new-secret-value]", box).textContent = result.data.secret;
      $("[data-copy-status]", box).textContent = "";
      box.hidden = false;
      form.reset();
      await refreshRegions(["webhooks"]);
    });
  }

  function webhookPath(button) {
    return "/webhooks/" + encodeURIComponent(button.dataset.webhookId);
  }

  async function testWebhook(button) {
    button.disabled = true;
    const result = await api("POST", webhookPath(button) + "/test");
    button.disabled = false;
    if (!result.ok) return toast("No test event sent: " + errorText(result));
    toast("Test event queued (delivery " + result.data.delivery_id + ").");
    await refreshRegions(WEBHOOK_REGIONS);
  }

  async function setWebhookEnabled(button, enabled) {
    const url = button.dataset.url;
    if (!enabled) {
      const ok = await confirmAction("Disable “" + url + "”?", "Nothing is sent to it until it is enabled again; its events wait in its queue.", "Disable");
      if (!ok) return;
    }
    button.disabled = true;
    const result = await api("PATCH", webhookPath(button), { enabled });
    button.disabled = false;
    if (!result.ok) return toast("Not changed: " + errorText(result));
    toast(enabled ? "“" + url + "” enabled again: its queued events are on their way." : "“" + url + "” disabled.");
    await refreshRegions(WEBHOOK_REGIONS);
  }

  async function deleteWebhook(button) {
    const url = button.dataset.url;
    const ok = await confirmAction("Delete “" + url + "”?", "Its delivery log and the events waiting in its queue are deleted with it. This cannot be undone.", "Delete");
    if (!ok) return;
    const result = await api("DELETE", webhookPath(button));
    if (!result.ok && result.status !== 404) return toast("Not deleted: " + errorText(result));
    if (button.dataset.leave) return location.assign(button.dataset.leave);
    toast("“" + url + "” deleted.");
    await refreshRegions(["webhooks"]);
  }

  // -- rollouts ------------------------------------------------------------------------

  function setupRolloutForm() {
    const form = $("#rollout-form");
    if (!form) return;
    const showTarget = () => {
      for (const part of $$("[data-target]", form)) part.hidden = part.dataset.target !== form.aim.value;
    };
    form.addEventListener("change", (event) => { if (event.target.name === "aim") showTarget(); });
    showTarget();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(form, "");
      const body = {
        model_id: form.model_id.value,
        canary: Number(form.canary.value || 0),
        max_failure_percent: Number(form.max_failure_percent.value || 0),
      };
      const batch = form.batch.value.trim() || "100%";
      body.batch = /^\d+$/.test(batch) ? Number(batch) : batch;
      if (form.aim.value === "selector") {
        body.selector = form.selector.value.trim();
        if (!body.selector) return showError(form, "Tag selector: write one (chip=kl520 selects every device of that chip), or choose devices.");
      } else {
        body.device_ids = $$("input[name=device_ids]:checked", form).map((box) => box.value);
        if (!body.device_ids.length) return showError(form, "Devices: choose at least one.");
      }
      if (form.deadline.value) {
        const moment = new Date(form.deadline.value);  // the browser's local time
        if (isNaN(moment.getTime())) return showError(form, "Deadline is not a valid date and time.");
        body.deadline = moment.toISOString();
      }
      const button = $("button[type=submit]", form);
      button.disabled = true;
      const result = await api("POST", "/rollouts", body);
      button.disabled = false;
      if (!result.ok) return showError(form, errorText(result));
      location.assign("/rollouts/" + result.data.id);
    });
  }

  let rolloutPoll = null;

  async function refreshRollout() {
    const heading = $("h1[data-rollout-id]");
    const table = $("[data-live-rollout]");
    if (!heading || !table) return;
    const url = "/rollouts/" + encodeURIComponent(heading.dataset.rolloutId) + "/progress.json?" + table.dataset.query;
    const result = await request("GET", url);
    if (result.status === 401) return location.assign("/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
    if (!result.ok || !result.data) return;
    const panel = $("[data-rollout-progress]");
    panel.innerHTML = result.data.progress_html;  // rendered (and escaped) by the server
    $("tbody[data-rows]", table).innerHTML = result.data.rows_html;
    for (const option of $$("#filter-state option")) {
      const n = option.value ? result.data.counts[option.value] : Object.values(result.data.counts).reduce((a, b) => a + b, 0);
      const label = option.value ? option.value.charAt(0).toUpperCase() + option.value.slice(1) : "All";
      option.textContent = label + " (" + n + ")";
    }
    refreshTimes(document);
  }

  function setupRollout() {
    // The rollout pages refresh at once on the rollout and deployment events of the
    // stream, and keep their poll: a device's own state in a rollout (waiting,
    // transferring) changes without an audit event.
    if ($('[data-region="rollouts"]')) {
      const refresh = () => refreshRegions(["rollouts"]);
      poll(refresh, POLL_MS);
      liveEvents(ROLLOUT_EVENTS, debounce(refresh, 300), refresh, () => {});
    }
    if (!$("[data-live-rollout]")) return;
    rolloutPoll = poll(refreshRollout, POLL_MS);
    const rolloutId = $("h1[data-rollout-id]").dataset.rolloutId;
    const later = debounce(refreshRollout, 300);
    // this rollout's steps, and deployments to the devices it lists
    const ours = (action, item) => action.startsWith("rollout.")
      ? item.target_id === rolloutId
      : Boolean(item.device_id && $('table.rollout-devices tr[data-device-id="' + item.device_id + '"]'));
    liveEvents([...ROLLOUT_EVENTS, ...DEPLOYMENT_EVENTS], (action, item) => { if (ours(action, item)) later(); }, refreshRollout, () => {});
  }

  function rolloutAction(verb, done) {
    return async (button) => {
      const id = button.dataset.rolloutId;
      if (verb === "cancel") {
        const ok = await confirmAction("Cancel this rollout?", "Devices that have not received the model yet (queued or waiting) are cancelled; transfers already running finish. A cancelled rollout cannot be resumed.", "Cancel rollout");
        if (!ok) return;
      }
      if (verb === "rollback") {
        const ok = await confirmAction("Roll this rollout back?", "A new rollout returns each device that received the model to its previous model, in batches of the same size.", "Roll back");
        if (!ok) return;
      }
      button.disabled = true;
      const result = await api("POST", "/rollouts/" + encodeURIComponent(id) + "/" + verb);
      button.disabled = false;
      if (!result.ok) return toast("Not done: " + errorText(result));
      if (verb === "rollback") return location.assign("/rollouts/" + result.data.id);
      toast(done);
      if (rolloutPoll) await rolloutPoll.now();
    };
  }

  // -- wiring --------------------------------------------------------------------------

  const ACTIONS = {
    "sign-out": signOut,
    connect: openConnect,
    "bulk-unpair": bulkUnpair,
    unpair: unpairOne,
    "revoke-session": revokeSession,
    "revoke-pairing": revokePairing,
    "rename-model": renameModel,
    "delete-model": deleteModel,
    "remove-member": removeMember,
    "leave-org": leaveOrg,
    "revoke-invitation": revokeInvitation,
    "revoke-api-key": revokeApiKey,
    "webhook-test": testWebhook,
    "webhook-enable": (button) => setWebhookEnabled(button, true),
    "webhook-disable": (button) => setWebhookEnabled(button, false),
    "webhook-delete": deleteWebhook,
    "rollout-pause": rolloutAction("pause", "Rollout paused: no new transfer starts."),
    "rollout-resume": rolloutAction("resume", "Rollout resumed."),
    "rollout-cancel": rolloutAction("cancel", "Rollout cancelled."),
    "rollout-rollback": rolloutAction("rollback", ""),
  };

  document.addEventListener("click", (event) => {
    const copy = event.target.closest("[data-copy]");
    if (copy) {
      copyText(copy.dataset.copy);
      return;
    }
    const button = event.target.closest("[data-action]");
    if (button && ACTIONS[button.dataset.action]) {
      event.preventDefault();
      ACTIONS[button.dataset.action](button);
    }
  });

  document.addEventListener("change", (event) => {
    if (event.target.matches("select[data-autosubmit]")) event.target.form.requestSubmit();
  });

  document.addEventListener("DOMContentLoaded", () => {
    refreshTimes(document);
    setInterval(() => refreshTimes(document), 30000);
    setupSignIn();
    setupSignUp();
    setupDevices();
    setupConnect();
    setupDevice();
    setupUpload();
    setupMembers();
    setupAccept();
    setupApiKeys();
    setupWebhooks();
    setupRolloutForm();
    setupRollout();
  });
})();
