// ultrascale dashboard: plain JavaScript, no library, no build step. Served by ultrascaled at
// /ui/static/dashboard.js. Reads the API's own endpoints (/fleet, /health, /alerts, /events as
// server-sent events, /ui/history, /ui/session); acts through its mutations with the bearer
// token the operator types (kept in this tab's sessionStorage). Every text that comes from the
// daemon is set with textContent, never parsed as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";
  const MIB = 1024 * 1024;
  const KEY = "ultrascale.token";
  const REFRESH_EVENTS = /^(instance|fleet|nginx|upstream|watchdog|alert|spec|daemon|deploy|autoscale|process|job|api\.request)/;
  const DASHES = ["", "6 3", "2 3", "10 3 2 3", "1 2", "12 4", "4 2 1 2", "8 2 2 2 2 2"];
  const MAX_EVENTS = 200;

  const st = {
    token: sessionStorage.getItem(KEY) || "",
    session: null,
    fleet: null,
    points: [],
    lastT: 0,
    seq: 0,
    historySeconds: 900,
    interval: 5,
    streamAbort: null,
    refreshTimer: null,
  };
  window.ultrascaleDashboard = st;  // for tests and the curious: the page's state, read-only use

  // ---- the API ------------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (st.token) h["Authorization"] = "Bearer " + st.token;
    return h;
  }

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body, okStatuses) {
    const opt = { method, headers: headers(), cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      opt.body = JSON.stringify(body);
      opt.headers["Content-Type"] = "application/json";
    }
    const r = await fetch(path, opt);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok && !(okStatuses || []).includes(r.status)) {
      const e = data && data.error;
      throw new ApiError(r.status, e ? e.code : "http_" + r.status,
                         e ? e.code + ": " + e.message : "HTTP " + r.status + " from " + path);
    }
    return data;
  }

  // ---- small helpers ------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  const mib = (b) => (b === null || b === undefined) ? "?" : (b / MIB).toFixed(b < 10 * MIB ? 1 : 0);
  function duration(s) {
    if (s === null || s === undefined) return "-";
    s = Math.floor(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

  function notice(text, isError) {
    const n = $("notice");
    n.hidden = false;
    n.className = isError ? "error" : "";
    n.setAttribute("role", isError ? "alert" : "status");
    n.textContent = text;
  }

  // ---- session: admin or viewer ---------------------------------------------------------------
  async function loadSession() {
    try {
      st.session = await api("GET", "/ui/session");
    } catch (e) {
      st.session = null;
      if (e.status === 401) {
        $("role").textContent = st.token ? "That token is refused: " + e.message
          : "This API needs a token even to read (it is not on loopback): enter it.";
        $("token-form").hidden = false;
        $("token").focus();
        return false;
      }
      throw e;
    }
    const s = st.session;
    if (s.history) { st.historySeconds = s.history.seconds; st.interval = s.history.interval; }
    const admin = s.role === "admin";
    document.body.dataset.role = s.role;
    $("role").textContent = admin
      ? (s.token_configured ? "Admin (token " + s.actor + ")" : "Admin (no api.token_file: loopback may act)")
      : "Viewer" + (s.actor ? " (token " + s.actor + ")" : "") + ": read only" +
        (s.token_configured ? " (enter the admin token to act)" : "");
    $("token-form").hidden = !s.token_configured;
    $("token-forget").hidden = !st.token;
    $("actions").hidden = !admin;
    for (const e of document.querySelectorAll(".admin-only")) e.hidden = !admin;
    if (st.token && !admin && !s.actor) {
      notice("That token is not in the daemon's token files: read only.", true);
    }
    return true;
  }

  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    st.token = $("token").value.trim();
    $("token").value = "";
    if (st.token) sessionStorage.setItem(KEY, st.token); else sessionStorage.removeItem(KEY);
    await start();
  });
  $("token-forget").addEventListener("click", async () => {
    st.token = "";
    sessionStorage.removeItem(KEY);
    await start();
  });

  // ---- the fleet table ------------------------------------------------------------------------
  const rows = new Map();  // port -> {tr, cells}
  const COLS = ["port", "pid", "state", "release", "uptime", "restarts", "upstream", "workers", "action"];
  const LABELS = { port: "Port", pid: "PID", state: "State", release: "Release", uptime: "Uptime",
                   restarts: "Restarts", upstream: "In upstream", workers: "Workers", action: "Action" };

  function makeRow(port) {
    const tr = el("tr", { "data-port": String(port) });
    const cells = {};
    for (const c of COLS) {
      const td = el("td", { "data-label": LABELS[c], "class": "col-" + c });
      if (c === "release") td.classList.add("release");
      if (c === "action") {
        td.classList.add("admin-only");
        const b = el("button", { type: "button", "class": "restart-one", "aria-label": "Restart instance " + port },
                     "Restart\u2026");
        b.addEventListener("click", () => confirmAction(
          "Restart instance " + port + "? It leaves the upstream, drains, and starts again.",
          () => api("POST", "/instances/" + port + "/restart"),
          (d) => "Restarting " + (d.restarting || [port]).join(", ")));
        td.appendChild(b);
      }
      cells[c] = td;
      tr.appendChild(td);
    }
    return { tr, cells };
  }

  function renderFleet(f) {
    st.fleet = f;
    $("fleet-name").textContent = f.fleet || "";
    document.title = "ultrascale " + (f.fleet || "") + ": " + f.ready + "/" + f.desired + " ready";
    const limit = f.memory ? f.memory.worker_limit_bytes : null;
    const hasRelease = f.instances.some((i) => "release" in i) || "release" in f;  // set once deploys exist
    for (const e of document.querySelectorAll(".release")) e.hidden = !hasRelease;
    const admin = st.session && st.session.role === "admin";
    const body = $("fleet-body");
    const seen = new Set();
    f.instances.forEach((inst, idx) => {
      seen.add(inst.port);
      let row = rows.get(inst.port);
      if (!row) { row = makeRow(inst.port); rows.set(inst.port, row); }
      if (body.children[idx] !== row.tr) body.insertBefore(row.tr, body.children[idx] || null);
      const tr = row.tr, c = row.cells;
      tr.dataset.pid = inst.pid === null ? "" : String(inst.pid);
      tr.dataset.state = inst.state;
      tr.dataset.inUpstream = inst.in_upstream ? "yes" : "no";
      tr.dataset.wanted = f.ports.includes(inst.port) ? "yes" : "no";
      c.port.textContent = inst.port;
      c.pid.textContent = inst.pid === null ? "-" : inst.pid;
      c.state.textContent = "";
      const s = el("span", { "class": "state state-" + inst.state }, inst.state);
      c.state.appendChild(s);
      if (inst.reason) c.state.appendChild(el("div", { "class": "muted" }, inst.reason));
      if (!f.ports.includes(inst.port)) c.state.appendChild(el("div", { "class": "muted" }, "leaving (scaled down)"));
      c.release.hidden = !hasRelease;
      c.release.textContent = inst.release === undefined || inst.release === null ? "-" : inst.release;
      c.uptime.textContent = duration(inst.uptime);
      c.restarts.textContent = inst.restarts + (inst.last_exit ? " (last exit: " + inst.last_exit + ")" : "");
      c.upstream.textContent = inst.in_upstream ? "yes" : "no";
      c.workers.textContent = "";
      if (!inst.workers.length) c.workers.textContent = inst.pid ? "sampling\u2026" : "-";
      for (const w of inst.workers) {
        const d = el("div", { "class": "worker" });
        d.appendChild(el("span", { "class": "muted" }, "pid " + w.pid));
        if (limit) {
          const m = el("meter", { min: "0", max: String(limit), low: String(limit * 0.7), high: String(limit * 0.9),
                                  optimum: "0", value: String(Math.min(w.rss, limit)),
                                  "aria-label": "worker " + w.pid + " memory" });
          d.appendChild(m);
        }
        const pct = limit ? Math.round(100 * w.rss / limit) : null;
        d.appendChild(el("span", { "class": pct !== null && pct >= 100 ? "over" : "" },
          mib(w.rss) + " of " + mib(limit) + " MiB" + (pct !== null ? " (" + pct + "%)" : "")));
        c.workers.appendChild(d);
      }
      c.action.hidden = !admin;
    });
    for (const [port, row] of rows) {
      if (!seen.has(port)) { row.tr.remove(); rows.delete(port); }
    }
    const m = f.memory || {};
    $("memory").textContent = "Memory: " + mib(m.total_rss_bytes) + " MiB of the " + mib(m.budget_bytes) +
      " MiB fleet budget" + (m.budget_bytes ? " (" + Math.round(100 * m.total_rss_bytes / m.budget_bytes) + "%)" : "") +
      "; per-worker limit " + mib(m.worker_limit_bytes) + " MiB." +
      (f.gunicorn && f.gunicorn.worker_class ? " Workers: " + f.gunicorn.workers + " x " +
        f.gunicorn.worker_class + " per instance." : "") + " Upstream: " +
      ((f.upstream.servers || []).join(", ") || "empty") +
      (f.upstream.ok === false ? " (last update FAILED: " + f.upstream.error + ")" : "");
    // warm spares (docs/spares.md): apart from the instances, never capacity nor in the upstream
    const sp = f.spares || [];
    $("spares").hidden = !sp.length;
    $("spares").textContent = sp.length ? "Warm spares (not capacity, never in the upstream): " + sp.map((s) =>
      s.port + " " + (s.pid === null ? "-" : "pid " + s.pid) + " " + s.state +
      (s.reason ? " (" + s.reason + ")" : "")).join("; ") + "." : "";
    const n = $("scale-n");
    n.min = String(f.min); n.max = String(f.max);
    if (document.activeElement !== n && !n.dataset.touched) n.value = String(f.desired);
  }

  // The types beside the web fleet (`processes:`), one row each; the web type is the table above.
  function renderRuns(td, t, runs) {
    // a job: when it is due next, then its recent runs (GET /jobs/NAME/runs), newest first
    const when = t.schedule ? "schedule " + t.schedule : "every " + t.every;
    td.appendChild(el("div", { "class": "muted" }, when + ", " + (t.concurrency || "forbid") +
      (t.next_run ? "; next " + clock(t.next_run) : "")));
    if (!runs.length) td.appendChild(el("div", { "class": "muted" }, "no run yet"));
    for (const r of runs) {
      const ok = r.outcome === "succeeded" || r.outcome === "running";
      const d = el("div", { "class": "run", "data-outcome": r.outcome });
      d.appendChild(el("span", { "class": "state state-" + (ok ? "running" : "fatal") },
        "run " + r.run + " " + r.outcome.replace("_", " ")));
      d.appendChild(el("span", { "class": "muted" }, " " + (r.started ? clock(r.started) : "-") + ", " +
        duration(r.duration) + (r.returncode === null || r.returncode === undefined ? "" : ", exit " + r.returncode) +
        (r.why && r.why !== "schedule" ? ", " + r.why.replace("_", " ") : "")));
      td.appendChild(d);
    }
  }

  function renderProcesses(p, runs) {
    const names = Object.keys(p || {}).filter((n) => p[n].kind !== "web");
    $("processes").hidden = !names.length;
    const body = $("processes-body");
    body.textContent = "";
    for (const name of names) {
      const t = p[name];
      const tr = el("tr", { "data-type": name });
      tr.appendChild(el("td", {}, name));
      tr.appendChild(el("td", {}, t.kind));
      tr.appendChild(el("td", {}, t.kind === "job" ? t.ready + " running" :
                                  (t.ready === undefined ? "-" : t.ready) + " / " +
                                  (t.desired === undefined ? "-" : t.desired)));
      const td = el("td", {});
      if (t.kind === "job") {
        renderRuns(td, t, (runs || {})[name] || []);
        tr.appendChild(td);
        body.appendChild(tr);
        continue;
      }
      if (!(t.instances || []).length) td.textContent = "none running";
      for (const i of t.instances || []) {
        const d = el("div", { "class": "process", "data-state": i.state });
        d.appendChild(el("span", { "class": "state state-" + i.state },
          "#" + i.index + " " + (i.pid === null || i.pid === undefined ? "-" : "pid " + i.pid) + " " + i.state));
        d.appendChild(el("span", { "class": "muted" }, " up " + duration(i.uptime) + ", restarts " + i.restarts +
          (i.reason ? "; " + i.reason : "")));
        td.appendChild(d);
      }
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function renderHealth(h) {
    $("summary").textContent = (h.status === "ok" ? "Healthy" : "Degraded") + ": " + h.ready + " of " +
      h.desired + " instances ready" + (st.fleet && st.fleet.shutting_down ? " (the daemon is stopping)" : "");
    document.body.dataset.health = h.status;
    $("health-reasons").textContent = h.reasons && h.reasons.length ? "Why degraded: " + h.reasons.join("; ") : "";
    const n = h.nginx || {};
    let text = "Mode " + (n.mode || "?");
    if (n.mode === "managed") text += n.running ? ", running (pid " + n.pid + ")" : ", NOT running";
    if (n.last_reload_at) {
      text += ". Last reload " + clock(n.last_reload_at) + ": " + (n.last_ok ? "ok" : "FAILED") +
        (n.last_result ? " (" + n.last_result + ")" : "") + (n.last_error ? ": " + n.last_error : "");
    } else {
      text += ". No reload yet";
    }
    text += ". Reloads " + (n.reload_count || 0) + ", failures " + (n.failure_count || 0) + ".";
    $("nginx-status").textContent = text;
  }

  function renderAlerts(a) {
    const ul = $("alert-list");
    ul.textContent = "";
    if (!a.enabled) { ul.appendChild(el("li", {}, "Alerting is off.")); return; }
    if (!a.firing.length) { ul.appendChild(el("li", {}, "None firing.")); return; }
    for (const x of a.firing) {
      ul.appendChild(el("li", { "class": "firing" },
        x.alert + (x.since ? " since " + clock(x.since) : "") + ": " + (x.message || "")));
    }
  }

  const JOB_RUNS_SHOWN = 5;
  let refreshing = null;
  async function refresh() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const [f, h, a, p] = await Promise.all([api("GET", "/fleet"), api("GET", "/health", undefined, [503]),
                                                api("GET", "/alerts"), api("GET", "/processes")]);
        const jobs = Object.keys(p || {}).filter((n) => p[n].kind === "job");
        const runs = {};   // each job's last runs, for the process types table
        await Promise.all(jobs.map(async (n) => {
          runs[n] = (await api("GET", "/jobs/" + encodeURIComponent(n) + "/runs?limit=" + JOB_RUNS_SHOWN)).runs;
        }));
        renderFleet(f); renderHealth(h); renderAlerts(a); renderProcesses(p, runs);
      } catch (e) {
        $("summary").textContent = "Cannot read the fleet: " + e.message;
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }
  function refreshSoon() {
    if (st.refreshTimer) return;
    st.refreshTimer = setTimeout(() => { st.refreshTimer = null; refresh(); }, 150);
  }

  // ---- events: server-sent events read with fetch (so the token can go in a header) ---------------
  function addEvent(e) {
    const ol = $("event-list");
    const li = el("li", { "data-event": e.event });
    li.appendChild(el("time", {}, clock(e.time)));
    li.appendChild(el("span", { "class": "lvl lvl-" + e.level }, e.level));
    li.appendChild(el("span", { "class": "name" }, e.event));
    const rest = Object.assign({}, e);
    for (const k of ["seq", "time", "event", "level"]) delete rest[k];
    const detail = JSON.stringify(rest);
    if (detail !== "{}") li.appendChild(el("span", { "class": "detail" }, detail.slice(0, 400)));
    ol.insertBefore(li, ol.firstChild);
    while (ol.children.length > MAX_EVENTS) ol.lastChild.remove();
  }

  function onBlock(block) {
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("data:")) data += line.slice(5).trimStart();
    }
    if (!data) return;
    let e;
    try { e = JSON.parse(data); } catch (err) { return; }
    if (typeof e.seq === "number") st.seq = Math.max(st.seq, e.seq);
    addEvent(e);
    if (REFRESH_EVENTS.test(e.event)) refreshSoon();
  }

  async function follow(abort) {
    let backoff = 500, first = true;
    while (!abort.signal.aborted) {
      try {
        if (!first) {
          // A restarted daemon numbers its events from 1 again: asking for those after our
          // last number would show nothing until it got that far.
          const ev = await api("GET", "/events?limit=1");
          const s = await api("GET", "/ui/session");
          const restarted = st.session && s.started !== st.session.started;
          if (restarted || ev.last < st.seq) {
            st.session = s;
            addEvent({ time: Date.now() / 1000, level: "info", event: "dashboard.daemon_restarted",
                       note: "the daemon restarted: its events are numbered from 1 again" });
            st.seq = restarted ? 0 : Math.max(0, ev.last - 50);
          }
        }
        first = false;
        const r = await fetch("/events?follow=1&since=" + st.seq, { headers: headers(), cache: "no-store",
                                                                    credentials: "omit", signal: abort.signal });
        if (!r.ok) throw new Error("HTTP " + r.status);
        $("conn").textContent = "Live (events streaming)";
        document.body.dataset.live = "yes";
        backoff = 500;
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) { onBlock(buf.slice(0, i)); buf = buf.slice(i + 2); }
        }
      } catch (e) {
        if (abort.signal.aborted) return;
      }
      document.body.dataset.live = "no";
      $("conn").textContent = "Reconnecting to the event stream\u2026";
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
      refreshSoon();
    }
  }

  // ---- charts: plain SVG --------------------------------------------------------------------------
  const W = 600, H = 170, L = 46, R = 8, T = 8, B = 22;

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "-";
    if (Math.abs(v) >= 100) return v.toFixed(0);
    if (Math.abs(v) >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  // series: [{name, values: [[t, v|null], ...], cls, dash}]; opts: {label, limit}
  function drawChart(id, series, opts) {
    const s = $("chart-" + id), legend = $("legend-" + id);
    s.textContent = "";
    legend.textContent = "";
    const now = st.points.length ? st.points[st.points.length - 1].t : Date.now() / 1000;
    const t0 = now - st.historySeconds;
    let max = 0;
    for (const se of series) for (const [, v] of se.values) if (v !== null && v > max) max = v;
    // A limit far above the data (a budget of GiB for a fleet of MiB) would flatten the data
    // into the axis: the axis follows the data then, and the legend says where the limit is.
    const limitShown = opts.limit && opts.limit <= Math.max(max, 1e-9) * 4;
    if (limitShown) max = Math.max(max, opts.limit);
    max = niceMax(max * 1.05);
    const x = (t) => L + (W - L - R) * (t - t0) / st.historySeconds;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    s.appendChild(svg("line", { "class": "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    s.appendChild(svg("line", { "class": "axis", x1: L, y1: T, x2: L, y2: H - B }));
    for (const frac of [0, 0.5, 1]) {
      const ty = svg("text", { x: L - 4, y: y(max * frac) + 4, "text-anchor": "end" });
      ty.textContent = fmt(max * frac);
      s.appendChild(ty);
    }
    const mins = st.historySeconds / 60;
    for (const m of [mins, mins * 2 / 3, mins / 3, 0]) {
      const tx = svg("text", { x: x(now - m * 60), y: H - 6, "text-anchor": m === mins ? "start" : (m === 0 ? "end" : "middle") });
      tx.textContent = m === 0 ? "now" : "-" + Math.round(m) + " min";
      s.appendChild(tx);
    }
    if (limitShown) {
      s.appendChild(svg("line", { "class": "limit", x1: L, y1: y(opts.limit), x2: W - R, y2: y(opts.limit) }));
    }
    const summary = [];
    let points = 0;
    series.forEach((se) => {
      let d = "", pen = false, last = null;
      for (const [t, v] of se.values) {
        if (v === null || v === undefined || t < t0) { pen = false; continue; }
        d += (pen ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1);
        pen = true; last = v;
      }
      if (se.cls === "fleet") points = se.values.filter(([, v]) => v !== null && v !== undefined).length;
      const path = svg("path", { d: d || "M0 0", "class": "series " + (se.cls || ""), "data-name": se.name,
                                 stroke: se.color || "currentColor" });
      if (se.dash) path.setAttribute("stroke-dasharray", se.dash);
      s.appendChild(path);
      const li = el("li", {});
      const sample = svg("svg", { viewBox: "0 0 28 8", "aria-hidden": "true" });
      const ln = svg("line", { x1: 0, y1: 4, x2: 28, y2: 4, stroke: se.color || "currentColor",
                               "stroke-width": se.cls === "fleet" ? 3 : 1.5 });
      if (se.dash) ln.setAttribute("stroke-dasharray", se.dash);
      sample.appendChild(ln);
      li.appendChild(sample);
      li.appendChild(document.createTextNode(se.name + ": " + fmt(last)));
      legend.appendChild(li);
      summary.push(se.name + " " + fmt(last));
    });
    if (opts.limit) {
      const vals = series[0].values, lastVal = vals.length ? vals[vals.length - 1][1] : null;
      const used = lastVal === null ? "" : ", " + Math.round(100 * lastVal / opts.limit) + "% used";
      legend.appendChild(el("li", {}, (limitShown ? "dotted: " : "") + opts.limitName + " " + fmt(opts.limit) +
                                      (limitShown ? used : " (above the chart" + used + ")")));
    }
    s.dataset.points = String(points);
    s.setAttribute("aria-label", opts.label + ", last " + Math.round(st.historySeconds / 60) +
      " minutes, latest values: " + (summary.join(", ") || "none yet"));
  }

  const COLORS = ["#0a58ca", "#b42318", "#1a7f37", "#8250df", "#8a5a00", "#0e7490", "#be185d", "#4d7c0f"];

  function perPort(field, scale) {
    const ports = new Set();
    for (const p of st.points) for (const port of Object.keys(p.ports)) ports.add(port);
    const idx = { rps: 0, p95: 1, err: 2 }[field];
    return [...ports].sort((a, b) => a - b).map((port, i) => ({
      name: port, dash: DASHES[(i + 1) % DASHES.length], color: COLORS[(i + 1) % COLORS.length],
      values: st.points.map((p) => {
        const v = p.ports[port] ? p.ports[port][idx] : null;
        return [p.t, v === null || v === undefined ? null : v * scale];
      }),
    }));
  }
  function fleetSeries(field, scale, name) {
    return { name: name || "fleet", cls: "fleet", color: "#1b1f23",
             values: st.points.map((p) => [p.t, p.fleet[field] === null || p.fleet[field] === undefined
               ? null : p.fleet[field] * scale]) };
  }

  function drawCharts() {
    drawChart("rps", [fleetSeries("rps", 1)].concat(perPort("rps", 1)), { label: "Requests per second" });
    drawChart("p95", [fleetSeries("p95", 1000)].concat(perPort("p95", 1000)), { label: "p95 latency in ms" });
    drawChart("err", [fleetSeries("err", 100)].concat(perPort("err", 100)), { label: "5xx percent" });
    const last = st.points[st.points.length - 1];
    const budget = last && last.fleet.budget ? last.fleet.budget / MIB : null;
    drawChart("mem", [fleetSeries("mem", 1 / MIB, "fleet RSS")],
              { label: "Fleet memory in MiB", limit: budget, limitName: "budget" });
    const count = [fleetSeries("instances", 1, "running"),
                   { name: "ready", dash: "6 3", color: COLORS[2], values: st.points.map((p) => [p.t, p.fleet.ready]) },
                   { name: "desired", dash: "2 3", color: COLORS[3], values: st.points.map((p) => [p.t, p.fleet.desired]) }];
    // The autoscaler's target: history points carry fleet.target (null while autoscaling is off).
    if (st.points.some((p) => p.fleet.target !== null && p.fleet.target !== undefined)) {
      count.push({ name: "autoscaler target", dash: "10 3 2 3", color: COLORS[1],
                   values: st.points.map((p) => [p.t, p.fleet.target]) });
    }
    drawChart("count", count, { label: "Instances" });
  }

  async function loadHistory() {
    try {
      const h = await api("GET", "/ui/history?since=" + st.lastT);
      if (!h.enabled) {
        $("history-note").textContent = "History is off (dashboard.enabled is false in the spec).";
        return;
      }
      st.historySeconds = h.seconds;
      st.interval = h.interval;
      $("history-span").textContent = Math.round(h.seconds / 60) + " minutes";
      for (const p of h.points) { if (p.t > st.lastT) { st.points.push(p); st.lastT = p.t; } }
      const cut = st.lastT - st.historySeconds;
      while (st.points.length && st.points[0].t < cut) st.points.shift();
      $("history-note").textContent = (st.points.length < 2 ? "Collecting: one point every " + st.interval + " s. " : "") +
        "Requests as measured by: " + (h.traffic_source || "?") + ".";
      drawCharts();
    } catch (e) {
      $("history-note").textContent = "Cannot read the history: " + e.message;
    }
  }

  // ---- actions (admin only; the API refuses them from anyone else anyway) ----------------------------
  let pending = null;
  function confirmAction(text, run, describe) {
    const dlg = $("confirm");
    $("confirm-text").textContent = text;
    pending = { run, describe };
    dlg.showModal();
    $("confirm-cancel").focus();
  }
  $("confirm-cancel").addEventListener("click", () => { pending = null; $("confirm").close(); });
  $("confirm").addEventListener("cancel", () => { pending = null; });
  $("confirm-ok").addEventListener("click", async () => {
    const p = pending;
    pending = null;
    $("confirm").close();
    if (!p) return;
    try {
      const d = await p.run();
      notice(p.describe(d), false);
    } catch (e) {
      notice(e.message, true);
    }
    refreshSoon();
  });
  $("scale-n").addEventListener("input", () => { $("scale-n").dataset.touched = "1"; });
  $("scale-btn").addEventListener("click", () => {
    const raw = $("scale-n").value.trim();
    const n = Number(raw);
    const from = st.fleet ? st.fleet.desired : "?";
    confirmAction("Scale fleet " + (st.fleet ? st.fleet.fleet : "") + " from " + from + " to " + raw + " instances?",
      () => {
        if (!/^[0-9]+$/.test(raw)) throw new ApiError(0, "bad_request", "bad_request: instances must be a whole number, got " + JSON.stringify(raw));
        return api("POST", "/fleet/scale", { instances: n });
      },
      (d) => { delete $("scale-n").dataset.touched; return "Scaling to " + d.desired + " instances (ports " + d.ports.join(", ") + ")"; });
  });
  // Deploys from the browser pick a release already in the releases folder (`ultrascalectl deploy
  // DIR` puts one there); a folder path is the CLI's business, not a web form's.
  async function loadReleases() {
    const pick = $("release-pick");
    let list = [];
    try { list = (await api("GET", "/fleet/releases")).releases || []; } catch (e) { /* shown on use */ }
    const keep = pick.value;
    pick.textContent = "";
    for (const r of list) {
      // app.directory itself, and the copy of it kept for the first rollback: reached by
      // rolling back, not deploying
      if (r.id === null || (r.base && !r.current && !r.previous)) continue;
      const o = document.createElement("option");
      o.value = r.id;
      o.textContent = r.id + (r.current ? " (current)" : r.previous ? " (previous)" : "");
      pick.appendChild(o);
    }
    if (!pick.options.length) {
      const o = document.createElement("option");
      o.value = "";
      o.textContent = "no release deployed yet";
      pick.appendChild(o);
    }
    if (keep) pick.value = keep;
  }
  $("deploy-btn").addEventListener("click", () => {
    const id = $("release-pick").value;
    confirmAction("Deploy release " + (id || "(none)") + " to every instance, canary first?",
      () => {
        if (!id) throw new ApiError(0, "bad_request", "bad_request: no release to deploy; `ultrascalectl deploy DIR` adds one");
        return api("POST", "/fleet/deploy", { release: id });
      },
      (d) => "Deploying release " + ((d.rollout && d.rollout.release) || id) + ", canary on port " +
        ((d.rollout && d.rollout.canary) || "?"));
  });
  $("rollback-btn").addEventListener("click", () => confirmAction(
    "Roll the fleet back to the previous release, canary first?",
    () => api("POST", "/fleet/rollback"),
    (d) => "Rolling back to " + ((d.rollout && d.rollout.release) || "app.directory")));
  $("restart-all").addEventListener("click", () => confirmAction(
    "Rolling restart of every instance, one at a time?",
    () => api("POST", "/fleet/restart"),
    (d) => "Rolling restart of " + (d.restarting || []).join(", ")));

  // ---- start ----------------------------------------------------------------------------------------
  let timers = [];
  async function start() {
    if (st.streamAbort) st.streamAbort.abort();
    for (const t of timers) clearInterval(t);
    timers = [];
    let ok;
    try { ok = await loadSession(); } catch (e) { $("summary").textContent = "Cannot reach the daemon: " + e.message; ok = false; }
    if (!ok) { setTimeout(() => { if (!st.session) start(); }, 5000); return; }
    try {
      const ev = await api("GET", "/events?limit=50");
      $("event-list").textContent = "";
      for (const e of ev.events) addEvent(e);
      st.seq = ev.last;
    } catch (e) { /* the stream will fill it */ }
    await Promise.all([refresh(), loadHistory(), st.session && st.session.role === "admin" ? loadReleases() : null]);
    st.streamAbort = new AbortController();
    follow(st.streamAbort);
    timers.push(setInterval(refresh, Math.max(2000, Math.min(5000, st.interval * 1000))));
    timers.push(setInterval(loadHistory, Math.max(1000, st.interval * 1000)));
    document.body.dataset.ready = "yes";
  }
  start();
})();
