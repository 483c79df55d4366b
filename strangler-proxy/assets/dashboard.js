// The admin dashboard: polls this listener's JSON documents and draws them. Read-only; every
// value from a document is set as text (never parsed as HTML), since diffs carry response data.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const SAFE = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v; // CSSOM: allowed by the page's CSP
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(x < 0.1 && x > 0 ? 2 : 1)}%`);
function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const m = seconds * 1000;
  return m >= 1000 ? `${(m / 1000).toFixed(2)} s` : `${m < 10 ? m.toFixed(2) : m.toFixed(0)} ms`;
}
function rate(x) {
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}
function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
const clock = (iso) => new Date(iso).toISOString().slice(11, 19) + " UTC";

// What a route moved to its service (`moved` in /routes: the proxy's rule).
function moved(route, defaultName) {
  const list = route.methods ? `: ${route.methods.join(" ")}` : "";
  switch (route.moved) {
    case "reads_and_writes": return { text: `reads and writes moved${list}`, cls: "good" };
    case "reads": return { text: `reads only${list} · writes stay on ${defaultName}`, cls: "warn" };
    default: return { text: route.shadow ? "nothing moved · mirrored for comparison" : "nothing moved", cls: "" };
  }
}

function stageBadge(route) {
  if (route.stage === "live" && route.moved === "reads") {
    return el("span", { class: "badge live-reads", "data-stage": "live-reads", text: "live · reads only" });
  }
  return el("span", { class: `badge ${route.stage}`, "data-stage": route.stage, text: route.stage });
}

// Stacked steps of requests per second (default under service) and a line of errors per
// second, one step per bucket over the history's 15 minutes; the newest step is the bucket
// still open, as wide as the seconds it covers.
function trafficChart(hist, interval) {
  const W = 600, H = 110, L = 34, B = 16, T = 6, SLOTS = 91;
  const slot = (W - L) / SLOTS;
  const points = hist ? hist.points : [];
  const n = points.length;
  const right = (i) => W - (n - 1 - i) * slot;
  const left = (i) => right(i) - slot * Math.min(1, Math.max(0.15, points[i].seconds / interval));
  const per = (p, v) => (p.seconds > 0 ? v / p.seconds : 0);
  const svc = points.map((p) => per(p, p.service.requests));
  const def = points.map((p) => per(p, p.default.requests));
  const err = points.map((p) => per(p, p.service.errors + p.default.errors));
  let max = Math.max(1, ...svc.map((s, i) => s + def[i]), ...err);
  const mag = Math.pow(10, Math.floor(Math.log10(max)));
  max = Math.ceil(max / mag) * mag;
  const y = (v) => H - B - ((H - B - T) * v) / max;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(max * frac);
    root.append(svg("line", { class: "grid", x1: L, x2: W, y1: yy, y2: yy }));
    root.append(svg("text", { class: "axis", x: L - 4, y: yy + 3, "text-anchor": "end", text: rate(max * frac) }));
  }
  [["-15m", 0], ["-10m", 30], ["-5m", 60], ["now", 91]].forEach(([label, at]) => {
    const anchor = at === 0 ? "start" : at === 91 ? "end" : "middle";
    root.append(svg("text", { class: "axis", x: L + slot * at, y: H - 3, "text-anchor": anchor, text: label }));
  });
  const steps = (top, bottom) => {
    let d = "";
    for (let i = 0; i < n; i++) {
      if (top[i] <= bottom[i]) continue;
      d += `M ${left(i)} ${y(bottom[i])} L ${left(i)} ${y(top[i])} L ${right(i)} ${y(top[i])} L ${right(i)} ${y(bottom[i])} Z `;
    }
    return d || "M 0 0";
  };
  const zero = points.map(() => 0);
  root.append(svg("path", { class: "default", d: steps(def, zero) }));
  root.append(svg("path", { class: "service", d: steps(def.map((d, i) => d + svc[i]), def) }));
  let line = "";
  for (let i = 0; i < n; i++) line += `${line ? "L" : "M"} ${left(i)} ${y(err[i])} L ${right(i)} ${y(err[i])} `;
  root.append(svg("path", { class: "errors", d: line || "M 0 0" }));
  return root;
}

function sideBox(kind, name, side, inFlight) {
  return el("div", { class: `side ${kind}` },
    el("h4", { text: `${kind} · ${name}` }),
    el("div", { class: "nums" },
      el("div", { class: "num" }, el("b", { text: side ? String(side.requests) : "0" }), el("small", { text: "requests" })),
      el("div", { class: "num" }, el("b", { text: pct(side && side.error_ratio) }), el("small", { text: "errors" })),
      el("div", { class: "num" }, el("b", { text: ms(side && side.p99_seconds) }), el("small", { text: "p99" })),
      el("div", { class: "num" }, el("b", { text: String(inFlight || 0) }), el("small", { text: "in flight" }))));
}

function shadowBar(route, win, hist) {
  const c = route.shadow_counts || { results: {} };
  const r = c.results || {};
  const m = r.match || 0, x = r.mismatch || 0;
  const other = (r.error || 0) + (r.skipped || 0) + (r.dropped || 0);
  const all = m + x + other;
  if (!route.shadow && all === 0) return null;
  const bar = el("div", { class: "bar" });
  if (all > 0) {
    bar.append(el("span", { class: "m", style: `width:${(100 * m) / all}%` }));
    bar.append(el("span", { class: "x", style: `width:${(100 * x) / all}%` }));
    bar.append(el("span", { class: "o", style: `width:${(100 * other) / all}%` }));
  }
  const verdicts = shadowChart(hist);
  const recent = win && (win.shadow_match + win.shadow_mismatch) > 0
    ? ` · 15 min: ${win.shadow_match} ✓ ${win.shadow_mismatch} ✗` : "";
  return el("div", { class: "shadow-block" },
    el("div", { class: "shadowbar", "data-shadow": route.name },
      el("span", { text: "shadow" }), bar,
      el("span", { text: `${m} match · ${x} mismatch · coverage ${pct(c.coverage)}${recent}` })),
    verdicts);
}

// Shadow verdicts per bucket over the 15 minutes: matches up, mismatches down from the middle.
function shadowChart(hist) {
  const points = hist ? hist.points : [];
  if (!points.some((p) => p.shadow_match + p.shadow_mismatch + p.shadow_other > 0)) return null;
  const W = 600, H = 34, L = 34, SLOTS = 91, mid = H / 2;
  const slot = (W - L) / SLOTS;
  const n = points.length;
  const max = Math.max(1, ...points.map((p) => Math.max(p.shadow_match, p.shadow_mismatch + p.shadow_other)));
  const root = svg("svg", { class: "chart verdicts", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  root.append(svg("line", { class: "grid", x1: L, x2: W, y1: mid, y2: mid }));
  root.append(svg("text", { class: "axis", x: L - 4, y: 9, "text-anchor": "end", text: "✓" }));
  root.append(svg("text", { class: "axis", x: L - 4, y: H - 2, "text-anchor": "end", text: "✗" }));
  points.forEach((p, i) => {
    const x = W - (n - i) * slot + 0.5;
    const w = Math.max(1, slot - 1);
    const up = ((mid - 1) * p.shadow_match) / max;
    const down = ((mid - 1) * p.shadow_mismatch) / max;
    const other = ((mid - 1) * p.shadow_other) / max;
    if (up > 0) root.append(svg("rect", { class: "match", x, y: mid - up, width: w, height: up }));
    if (down > 0) root.append(svg("rect", { class: "mismatch", x, y: mid, width: w, height: down }));
    if (other > 0) root.append(svg("rect", { class: "other", x, y: mid + down, width: w, height: other }));
  });
  return root;
}

function routeCard(route, doc, hist, interval) {
  const defaultName = doc.default;
  const win = hist && hist.window;
  const mv = moved(route, defaultName);
  const tags = [el("span", { class: `tag ${mv.cls}`, "data-moved": route.name, text: mv.text })];
  tags.push(el("span", { class: "tag", text: route.sticky ? `sticky ${route.sticky}` : "not sticky" }));
  if (route.shadow) {
    const extra = route.shadow_headers.length ? ` · +headers ${route.shadow_headers.join(", ")}` : "";
    tags.push(el("span", { class: "tag", text: `shadow on${extra}` }));
  } else tags.push(el("span", { class: "tag", text: "shadow off" }));
  if (route.fallback) tags.push(el("span", { class: "tag", text: "fallback" }));
  if (route.hold_writes) tags.push(el("span", { class: "tag bad", text: `write fence up · ${route.held} held` }));
  else if (route.held > 0) tags.push(el("span", { class: "tag warn", text: `${route.held} held` }));
  const near = win ? win.near_misses : 0;
  tags.push(el("span", { class: `tag ${near > 0 ? "warn" : ""}`, title: "requests the default served that match this route when letter case is ignored", text: `${near} near-misses` }));
  if (win && win.fallbacks > 0) tags.push(el("span", { class: "tag warn", text: `${win.fallbacks} fallbacks` }));
  const svc = doc.services.find((s) => s.name === route.service);
  if (svc && svc.outlier && svc.outlier !== "closed") tags.push(el("span", { class: "tag bad", text: `${svc.name} ${svc.outlier}` }));

  return el("article", { class: "route", "data-route": route.name, "data-weight": route.weight },
    el("div", { class: "head" },
      el("span", { class: "name", text: route.name }), stageBadge(route),
      el("span", { class: "path", text: `${route.prefix} → ${route.service}` })),
    el("div", { class: "weight" },
      el("div", { class: "bar", title: `${route.weight}% to ${route.service}` }, el("span", { style: `width:${route.weight}%` })),
      el("span", { class: "pct", "data-weight-text": route.name, text: `${route.weight}% service` })),
    el("div", { class: "tags" }, tags),
    trafficChart(hist, interval),
    el("div", { class: "sides" },
      sideBox("service", route.service, win && win.service, route.in_flight[route.service]),
      sideBox("default", defaultName, win && win.default, route.in_flight[defaultName])),
    shadowBar(route, win, hist));
}

function renderHeader(doc) {
  document.getElementById("file").textContent = doc.file;
  document.getElementById("revision").textContent = String(doc.revision);
  const sha = document.getElementById("sha256");
  sha.textContent = doc.sha256.slice(0, 12);
  sha.title = doc.sha256;
  document.getElementById("loaded").textContent = `${clock(doc.loaded_at)} (${ago(doc.loaded_at)})`;
  document.getElementById("default").textContent = doc.default;
  const banner = document.getElementById("reload-banner");
  if (doc.last_reload_error) {
    banner.replaceChildren(
      el("strong", { text: `The last edit of ${doc.file} was refused at ${clock(doc.last_reload_error.at)}; revision ${doc.revision} keeps serving.` }),
      el("ul", {}, doc.last_reload_error.errors.map((e) => el("li", { text: e }))));
    banner.hidden = false;
  } else banner.hidden = true;
}

function renderServices(doc) {
  document.getElementById("services").replaceChildren(...doc.services.map((s) => {
    const state = s.name === doc.default ? "default" : s.outlier || "unused";
    const cls = state === "default" ? "default-svc" : state;
    let detail = "";
    if (s.outlier === "ejected" && s.ejected_until) detail = ` until ${clock(s.ejected_until)}`;
    if (s.outlier === "closed" && s.consecutive_failures > 0) detail = ` · ${s.consecutive_failures} failures in a row`;
    return el("div", { class: "svc", "data-service": s.name },
      el("div", {}, el("span", { class: "name", text: s.name }), " ", el("span", { class: `badge ${cls}`, text: state })),
      el("div", { class: "url", text: s.url + detail }));
  }));
}

function renderRoutes(doc, history) {
  const byName = new Map((history ? history.routes : []).map((h) => [h.name, h]));
  const interval = history ? history.interval_seconds : 10;
  const cards = doc.routes.map((r) => routeCard(r, doc, byName.get(r.name), interval));
  const box = document.getElementById("routes");
  if (cards.length === 0) box.replaceChildren(el("p", { class: "empty", text: "No routes: everything goes to the default." }));
  else box.replaceChildren(...cards);
}

function diffGroup(g) {
  const m = g.latest;
  const rows = m.differences.length
    ? m.differences.map((d) => el("tr", {},
        el("td", { class: "at", text: d.at || "(whole)" }),
        el("td", { class: "d", text: d.default }),
        el("td", { class: "s", text: d.service })))
    : [el("tr", {}, el("td", { colspan: 3, text: m.diff }))];
  return el("div", { class: "diff-group", "data-shape": `${g.method} ${g.shape}` },
    el("div", { class: "gh" },
      el("span", { class: "shape", text: `${g.method} ${g.shape}` }),
      el("span", { class: "count", text: `× ${g.count}${g.count > 1 ? ` (${g.same_diff} identical to the latest)` : ""}` }),
      el("span", { class: "count", text: `status ${m.default_status} vs ${m.service_status} · latest ${clock(m.at)} · ${m.path} · ${m.request_id}` })),
    el("table", { class: "sbs" },
      el("thead", {}, el("tr", {}, el("th", { text: "field" }), el("th", { text: "default" }), el("th", { text: "service" }))),
      el("tbody", {}, rows)));
}

function renderDiffs(diffs) {
  const parts = diffs.filter((d) => d.groups.length > 0).map((d) =>
    el("div", { class: "diff-route", "data-diffs": d.route },
      el("h3", { text: `${d.route}${d.learned_noise.length ? ` · learned noise: ${d.learned_noise.join(", ")}` : ""}` }),
      d.groups.map(diffGroup)));
  const box = document.getElementById("diffs");
  if (parts.length === 0) box.replaceChildren(el("p", { class: "empty", text: "No shadow mismatches recorded." }));
  else box.replaceChildren(...parts);
}

function reloadChart(reloads, width) {
  const W = Math.max(300, width), H = 34;
  const times = reloads.map((r) => Date.parse(r.at));
  const now = Date.now();
  const start = Math.min(now - 60000, ...times);
  const x = (t) => 8 + ((W - 16) * (t - start)) / Math.max(1, now - start);
  const root = svg("svg", { class: "chart strip", viewBox: `0 0 ${W} ${H}`, role: "img" });
  root.append(svg("line", { class: "grid", x1: 8, x2: W - 8, y1: H / 2 - 4, y2: H / 2 - 4 }));
  root.append(svg("text", { class: "axis", x: 8, y: H - 1, text: clock(new Date(start).toISOString()) }));
  root.append(svg("text", { class: "axis", x: W - 8, y: H - 1, "text-anchor": "end", text: "now" }));
  reloads.forEach((r, i) => {
    root.append(svg("circle", {
      cx: x(times[i]), cy: H / 2 - 4, r: 5,
      fill: r.result === "applied" ? "var(--ok)" : "var(--error)",
    }, svg("title", { text: `${r.at} ${r.result} revision ${r.revision}` })));
  });
  return root;
}

function renderReloads(doc) {
  const strip = document.getElementById("reload-chart");
  strip.replaceChildren(reloadChart(doc.reloads, strip.clientWidth));
  document.getElementById("reloads").replaceChildren(...doc.reloads.map((r) =>
    el("tr", { "data-result": r.result },
      el("td", { text: `${clock(r.at)} (${ago(r.at)})` }),
      el("td", {}, el("span", { class: `badge ${r.result}`, text: r.result })),
      el("td", { text: String(r.revision) }),
      el("td", { class: "mono", title: r.sha256 || "", text: r.sha256 ? r.sha256.slice(0, 12) : "unreadable" }),
      el("td", { class: "errors reload-errors" },
        r.errors.map((e) => el("div", { class: "reload-error", text: `line ${e.line}, column ${e.column}: ${e.message}` }))))));
}

async function refresh() {
  const conn = document.getElementById("conn");
  try {
    const [doc, history, reloads] = await Promise.all([getJson("/routes"), getJson("/history"), getJson("/reloads")]);
    const diffs = await Promise.all(doc.routes.map((r) =>
      getJson(`/diffs?route=${encodeURIComponent(r.name)}`).catch(() => ({ route: r.name, groups: [], learned_noise: [] }))));
    renderHeader(doc);
    renderServices(doc);
    renderRoutes(doc, history);
    renderDiffs(diffs);
    renderReloads(reloads);
    conn.dataset.state = "ok";
    conn.textContent = "live";
    document.getElementById("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  } catch (e) {
    conn.dataset.state = "down";
    conn.textContent = `proxy unreachable: ${e.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  setInterval(refresh, POLL_MS);
});
