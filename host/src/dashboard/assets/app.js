// Tensorlet dashboard. Reads GET /admin/v1/dashboard every second and draws it; counters are
// totals since the node started, so rates, error shares and latency percentiles come from the
// difference between consecutive reads. Buttons are plain admin API calls. Everything from the
// API is inserted as text (never as HTML): names, messages and log lines are untrusted.
"use strict";

const POLL_MS = 1000;
const HISTORY = 60; // points kept per series (a minute at one a second)
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

const state = {
  token: localStorage.getItem("tensorlet-token") || "",
  previous: null, // the last overview read
  series: new Map(), // "function|version" -> [{t, rate, errors, p50, p99}]
  models: new Map(), // model -> [{t, rate, p50, p99, q50, q99}]
  logFunction: "",
};

// --- The API -----------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch("/admin/v1/" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!r.ok) {
    const err = new Error((json && json.error && json.error.message) || r.status + " " + r.statusText);
    err.status = r.status;
    throw err;
  }
  return json;
}

// --- Small DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toFixed(digits === undefined ? 1 : digits);
}

// --- Numbers from consecutive reads ------------------------------------------------------------

/// The `q` quantile (upper bucket bound, ms) of per-bucket counts; null without observations.
function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const want = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= want) return bounds[Math.min(i, bounds.length - 1)];
  }
  return bounds[bounds.length - 1];
}

function delta(now, before) {
  return now.map((c, i) => Math.max(0, c - ((before && before[i]) || 0)));
}

function push(map, key, point) {
  let s = map.get(key);
  if (!s) { s = []; map.set(key, s); }
  s.push(point);
  while (s.length > HISTORY) s.shift();
}

function record(overview) {
  const prev = state.previous;
  const t = Date.now() / 1000;
  const bounds = overview.buckets_ms;
  if (prev) {
    const dt = Math.max(0.001, t - prev.t);
    const before = new Map();
    for (const f of prev.overview.functions)
      for (const v of f.versions) if (v.totals) before.set(f.name + "|" + v.version, v.totals);
    for (const f of overview.functions) {
      for (const v of f.versions) {
        if (!v.totals) continue;
        const key = f.name + "|" + v.version;
        const b = before.get(key) || { requests: v.totals.requests, errors: v.totals.errors, buckets: v.totals.buckets };
        const requests = Math.max(0, v.totals.requests - b.requests);
        const errors = Math.max(0, v.totals.errors - b.errors);
        const buckets = delta(v.totals.buckets, b.buckets);
        push(state.series, key, {
          t,
          rate: requests / dt,
          errors: requests ? (100 * errors) / requests : 0,
          p50: quantile(bounds, buckets, 0.5),
          p99: quantile(bounds, buckets, 0.99),
        });
      }
    }
    const mbefore = new Map(prev.overview.models.map((m) => [m.name, m]));
    for (const m of overview.models) {
      const b = mbefore.get(m.name) || m;
      const inf = delta(m.inference_buckets, b.inference_buckets);
      const queue = delta(m.queue_buckets, b.queue_buckets);
      push(state.models, m.name, {
        t,
        rate: Math.max(0, m.inferences - b.inferences) / dt,
        p50: quantile(bounds, inf, 0.5),
        p99: quantile(bounds, inf, 0.99),
        q50: quantile(bounds, queue, 0.5),
        q99: quantile(bounds, queue, 0.99),
      });
    }
  }
  state.previous = { t, overview };
}

// --- Charts ------------------------------------------------------------------------------------

/// A line chart of `lines` ([{label, points: [{t, y}]}]) with its title and unit.
function chart(metric, title, unit, lines) {
  const W = 320, H = 110, PAD = 26;
  const all = lines.flatMap((l) => l.points.filter((p) => p.y !== null));
  const max = Math.max(1e-9, ...all.map((p) => p.y));
  const now = Date.now() / 1000;
  const box = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" });
  box.append(svg("line", { x1: PAD, y1: H - 14, x2: W - 4, y2: H - 14, class: "axis" }));
  const top = svg("text", { x: 2, y: 12, class: "tick" });
  top.textContent = fmt(max, max < 10 ? 2 : 0);
  box.append(top);
  lines.forEach((l, i) => {
    const pts = l.points
      .filter((p) => p.y !== null)
      .map((p) => {
        const x = PAD + ((W - PAD - 4) * (HISTORY - (now - p.t))) / HISTORY;
        const y = H - 14 - ((H - 26) * p.y) / max;
        return `${Math.max(PAD, x).toFixed(1)},${y.toFixed(1)}`;
      });
    if (!pts.length) return;
    const color = COLORS[i % COLORS.length];
    box.append(svg("polyline", { points: pts.join(" "), stroke: color, class: "line" }));
    const [x, y] = pts[pts.length - 1].split(",");
    box.append(svg("circle", { cx: x, cy: y, r: 2.2, fill: color }));
  });
  const legend = el("div", { class: "legend" },
    lines.map((l, i) => {
      const last = l.points.length ? l.points[l.points.length - 1].y : null;
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = COLORS[i % COLORS.length];
      return el("span", {}, swatch, `${l.label} ${fmt(last, 1)}`);
    }));
  const highest = all.length ? Math.max(...all.map((p) => p.y)) : 0;
  return el("figure", { class: "chart", "data-metric": metric, "data-points": all.length, "data-max": highest },
    el("figcaption", {}, `${title} (${unit})`), box, legend);
}

// --- Drawing -----------------------------------------------------------------------------------

function drawAnomalies(list) {
  const box = document.getElementById("anomalies");
  box.replaceChildren();
  if (!list.length) { box.append(el("p", { class: "muted" }, "none")); return; }
  for (const a of list) {
    const subject = a.function ? `function ${a.function}@${a.version}` : `model ${a.model}@${a.version}`;
    box.append(el("div", { class: "anomaly", "data-kind": a.kind },
      el("span", { class: "badge bad" }, a.kind), " ", el("strong", {}, subject),
      ` score ${fmt(a.score, 3)} since ${a.since}: `, a.message));
  }
}

async function act(button, method, path, body) {
  button.disabled = true;
  try {
    await api(method, path, body);
    button.classList.add("done");
    await refresh();
  } catch (e) {
    alertLine(`${button.textContent}: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

function alertLine(text) {
  document.getElementById("status").textContent = text;
}

function drawRollout(f) {
  const r = f.rollout;
  if (!r) return null;
  const last = r.decisions && r.decisions.length ? r.decisions[r.decisions.length - 1] : null;
  const share = r.phase === "shadow" && r.shadow ? `shadowing ${r.shadow.percent}%` : `${r.percent}% of traffic`;
  const running = r.state === "running";
  const enc = encodeURIComponent(f.name);
  return el("div", { class: "rollout", "data-state": r.state },
    el("span", { class: "badge" + (running ? " warn" : "") }, `rollout ${r.state}`), " ",
    `candidate ${r.candidate} against ${r.stable}: ${share}, step ${r.step + 1} of ${r.steps.length}`,
    last ? el("div", { class: "muted" }, `last decision: ${last.decision}, ${last.reason}`) : null,
    running ? el("span", { class: "buttons" },
      el("button", { type: "button", "data-action": "promote", "data-function": f.name,
        onclick: (e) => act(e.currentTarget, "POST", `functions/${enc}/rollout/promote`) }, "Promote"),
      el("button", { type: "button", "data-action": "abort", "data-function": f.name,
        onclick: (e) => act(e.currentTarget, "POST", `functions/${enc}/rollout/abort`) }, "Abort")) : null);
}

function drawFunction(f) {
  const enc = encodeURIComponent(f.name);
  const aliasesOf = (v) => Object.entries(f.aliases || {}).filter(([, id]) => id === v).map(([a]) => a);
  const rows = f.versions.map((v) => el("tr", { class: v.live ? "live" : "" },
    el("td", { class: "mono" }, v.version),
    el("td", {}, v.live ? el("span", { class: "badge ok" }, "live") : "", " ",
      aliasesOf(v.version).map((a) => el("span", { class: "badge" }, a))),
    el("td", {}, v.created_at),
    el("td", { class: "mono" }, (v.models || []).join(", ")),
    el("td", { class: "num" }, v.totals ? v.totals.requests : "–"),
    el("td", { class: "num" }, v.totals ? v.totals.errors : "–")));
  const served = f.versions.filter((v) => v.totals && (v.totals.requests > 0 || v.live));
  const lines = (pick) => served.map((v) => ({
    label: v.version.slice(0, 8) + (v.live ? " (live)" : ""),
    points: (state.series.get(f.name + "|" + v.version) || []).map((p) => ({ t: p.t, y: pick(p) })),
  }));
  return el("article", { class: "function", "data-name": f.name },
    el("div", { class: "title" },
      el("h3", {}, f.name), el("span", { class: "badge ok live-version", "data-version": f.live }, `live ${f.live}`),
      el("span", { class: "spacer" }),
      f.versions.length > 1 ? el("button", { type: "button", "data-action": "rollback", "data-function": f.name,
        onclick: (e) => act(e.currentTarget, "POST", `functions/${enc}/rollback`, {}) }, "Rollback") : null),
    drawRollout(f),
    el("div", { class: "charts" },
      chart("rate", "requests", "per second", lines((p) => p.rate)),
      chart("errors", "errors", "% of requests", lines((p) => p.errors)),
      chart("latency", "latency p99", "ms", lines((p) => p.p99))),
    el("table", { class: "versions" },
      el("thead", {}, el("tr", {}, ["version", "", "deployed", "models", "requests", "errors"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

function drawModels(models) {
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const m of models) {
    const s = state.models.get(m.name) || [];
    const last = s.length ? s[s.length - 1] : {};
    body.append(el("tr", { "data-model": m.name },
      el("td", { class: "mono" }, m.name),
      el("td", { class: "num" }, fmt(last.rate, 1)),
      el("td", { class: "num" }, m.errors),
      el("td", { class: "num" }, `${fmt(last.p50, 2)} / ${fmt(last.p99, 2)} ms`),
      el("td", { class: "num" }, `${fmt(last.q50, 2)} / ${fmt(last.q99, 2)} ms`),
      el("td", {}, chart("inference", "p99", "ms", [{ label: "p99", points: s.map((p) => ({ t: p.t, y: p.p99 })) }]))));
  }
  if (!models.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no models")));
}

function drawLogSelect(functions) {
  const select = document.getElementById("log-function");
  const names = functions.map((f) => f.name);
  const current = Array.from(select.options).map((o) => o.value);
  if (names.join("\n") !== current.join("\n")) {
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(state.logFunction)) select.value = state.logFunction;
  }
  state.logFunction = select.value;
}

async function refreshLogs() {
  const pre = document.getElementById("logs");
  if (!state.logFunction) { pre.textContent = ""; return; }
  try {
    const logs = await api("GET", `functions/${encodeURIComponent(state.logFunction)}/logs`);
    const lines = (logs.lines || []).slice(-50);
    pre.textContent = lines.length
      ? lines.map((l) => `${l.time} ${l.version} ${l.request_id} ${l.stream}: ${l.line}`).join("\n")
      : "no output yet";
  } catch (e) {
    pre.textContent = e.message;
  }
}

function draw(overview) {
  drawAnomalies(overview.anomalies || []);
  const box = document.getElementById("functions");
  box.replaceChildren();
  if (!overview.functions.length) box.append(el("p", { class: "muted" }, "no functions deployed"));
  for (const f of overview.functions) box.append(drawFunction(f));
  drawModels(overview.models || []);
  drawLogSelect(overview.functions);
  alertLine(`updated ${overview.time}`);
}

// --- The loop ----------------------------------------------------------------------------------

function showLogin(message) {
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  alertLine("signed out");
}

async function refresh() {
  try {
    const overview = await api("GET", "dashboard");
    record(overview);
    document.getElementById("login").hidden = true;
    document.getElementById("main").hidden = false;
    document.getElementById("forget-token").hidden = !state.token;
    draw(overview);
    return true;
  } catch (e) {
    if (e.status === 401) showLogin(state.token ? e.message : "");
    else alertLine("cannot reach the node: " + e.message);
    return false;
  }
}

let ticks = 0;
async function loop() {
  if (await refresh() && ticks++ % 5 === 0) await refreshLogs();
  setTimeout(loop, POLL_MS);
}

/// A token may also come in the fragment (never sent to the server): /ui/#token=...
function tokenFromFragment() {
  const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (!m) return false;
  state.token = decodeURIComponent(m[1]);
  localStorage.setItem("tensorlet-token", state.token);
  history.replaceState(null, "", location.pathname);
  state.previous = null;
  return true;
}

window.addEventListener("hashchange", () => {
  if (tokenFromFragment()) refresh();
});

document.addEventListener("DOMContentLoaded", () => {
  tokenFromFragment();
  document.getElementById("login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = document.getElementById("token").value.trim();
    localStorage.setItem("tensorlet-token", state.token);
    state.previous = null;
    refresh();
  });
  document.getElementById("forget-token").addEventListener("click", () => {
    localStorage.removeItem("tensorlet-token");
    state.token = "";
    showLogin("");
  });
  document.getElementById("log-function").addEventListener("change", (e) => {
    state.logFunction = e.target.value;
    refreshLogs();
  });
  loop();
});
