// kitaru web UI: one page script, no build step, no dependencies.
//
// Every value that came from the server is put in the page as text (textContent, attributes),
// never as HTML: flow output, questions and artifact previews are data, not markup.
// Every request that changes something carries the session's CSRF token (X-CSRF-Token, and a
// csrf_token field in each form), which GET /api/v1/session gives.
"use strict";

const POLL_MS = 2000;
const PREVIEW_BYTES = 2 * 1024 * 1024;
let session = null; // {name, scopes, csrf_token}
let timers = []; // intervals and streams of the page on screen, stopped when it changes

// -- small helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function statusBadge(status) {
  return el("span", { class: `status ${status}`, "data-status": status, text: status.replace("_", " ") });
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "—";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 1) return `${Math.max(1, Math.round(seconds * 1000))} ms`;
  if (seconds < 120) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function errorBox(message) {
  return el("div", { class: "error", role: "alert", text: message });
}

function can(scope) {
  if (!session) return false;
  const implies = { read: ["read", "answer", "invoke", "admin"], answer: ["answer", "admin"], invoke: ["invoke", "admin"] };
  return session.scopes.some((s) => (implies[scope] || [scope]).includes(s));
}

function stopTimers() {
  for (const t of timers) (typeof t === "function" ? t() : clearInterval(t));
  timers = [];
}

// -- the API ------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function messageOf(body, status) {
  if (body && body.error && body.error.message) return body.error.message;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: ${d.msg}`).join("\n");
  }
  if (body && typeof body.detail === "string") return body.detail;
  return `the server answered HTTP ${status}`;
}

async function api(path, { method = "GET", body, form } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET") headers["X-CSRF-Token"] = session ? session.csrf_token || "" : "";
  if (form) {
    init.body = new URLSearchParams(form);
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (response.status === 401 && path !== "/login") {
    toLogin();
    throw new ApiError(401, messageOf(data, 401));
  }
  if (!response.ok) throw new ApiError(response.status, messageOf(data, response.status));
  return data;
}

async function loadSession() {
  session = await api("/api/v1/session");
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = `${session.name} (${session.scopes.join(", ")})`;
}

function csrfField() {
  return el("input", { type: "hidden", name: "csrf_token", value: session ? session.csrf_token || "" : "" });
}

// -- routing ------------------------------------------------------------------------------

function go(path, replace) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function toLogin() {
  const here = location.pathname + location.search;
  if (!location.pathname.startsWith("/ui/login")) {
    go(`/ui/login?next=${encodeURIComponent(here)}`, true);
  }
}

document.addEventListener("click", (event) => {
  const a = event.target.closest && event.target.closest("a[data-link]");
  if (a && a.origin === location.origin && !event.ctrlKey && !event.metaKey && event.button === 0) {
    event.preventDefault();
    go(a.pathname + a.search);
  }
});
window.addEventListener("popstate", () => render());

async function render() {
  stopTimers();
  const app = document.getElementById("app");
  const path = location.pathname.replace(/^\/ui\/?/, "");
  const params = new URLSearchParams(location.search);
  try {
    if (path === "login") return loginPage(app, params);
    if (!session) await loadSession();
    if (path === "" || path === "executions") return await listPage(app, params);
    if (path.startsWith("executions/")) return await executionPage(app, decodeURIComponent(path.slice(11)));
    if (path === "diff") return await diffPage(app, params);
    if (path === "deployments") return await deploymentsPage(app);
    if (path.startsWith("deployments/")) return await flowDeploymentsPage(app, decodeURIComponent(path.slice(12)));
    app.replaceChildren(el("h1", { text: "Not found" }), el("p", {}, el("a", { href: "/ui/", "data-link": true, text: "Executions" })));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    app.replaceChildren(errorBox(err.message || String(err)));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin" });
    session = null;
    document.getElementById("nav").hidden = true;
    go("/ui/login", true);
  });
  render();
});

// -- login --------------------------------------------------------------------------------

function loginPage(app, params) {
  document.getElementById("nav").hidden = true;
  const problem = el("div");
  const key = el("input", { id: "key", name: "key", type: "password", autocomplete: "current-password", required: true, size: 48 });
  const form = el(
    "form",
    { class: "card", id: "login-form", method: "post", action: "/login" },
    el("h1", { text: "Log in to kitaru" }),
    el("label", { for: "key", text: "API key" }),
    key,
    el("p", { class: "hint", text: "An operator creates one with: kitaru server keys create NAME --scope answer" }),
    problem,
    el("div", { class: "actions" }, el("button", { type: "submit", text: "Log in" })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    try {
      const who = await api("/login", { method: "POST", form: { key: key.value } });
      session = { name: who.name, scopes: who.scopes, csrf_token: who.csrf_token };
      key.value = "";
      const next = params.get("next") || "/ui/";
      await loadSession();
      go(next.startsWith("/ui/") && !next.startsWith("/ui/login") ? next : "/ui/", true);
    } catch (err) {
      problem.replaceChildren(errorBox(err.message));
    }
  });
  app.replaceChildren(form);
  key.focus();
}

// -- executions list ----------------------------------------------------------------------

const STATUSES = ["", "running", "waiting", "completed", "failed", "cancelled"];

async function listPage(app, params) {
  const flow = el("input", { id: "flow", name: "flow", value: params.get("flow") || "", placeholder: "any flow" });
  const status = el("select", { id: "status", name: "status" }, STATUSES.map((s) => el("option", { value: s, text: s || "any status" })));
  status.value = params.get("status") || "";
  const filters = el(
    "form",
    { class: "card row", id: "filters" },
    el("div", {}, el("label", { for: "flow", text: "Flow" }), flow),
    el("div", {}, el("label", { for: "status", text: "Status" }), status),
    el("div", {}, el("button", { type: "submit", text: "Filter" })),
  );
  const apply = (event) => {
    if (event) event.preventDefault();
    const q = new URLSearchParams();
    if (flow.value.trim()) q.set("flow", flow.value.trim());
    if (status.value) q.set("status", status.value);
    go(`/ui/${q.toString() ? "?" + q : ""}`);
  };
  filters.addEventListener("submit", apply);
  status.addEventListener("change", apply);

  const body = el("tbody");
  const more = el("div", { class: "actions" });
  const problem = el("div");
  const table = el(
    "table",
    { class: "list", id: "executions" },
    el("thead", {}, el("tr", {}, ["Execution", "Flow", "Status", "Started", "Updated"].map((h) => el("th", { text: h })))),
    body,
  );
  app.replaceChildren(el("h1", { text: "Executions" }), filters, el("div", { class: "card" }, problem, table, more));

  const query = new URLSearchParams();
  if (params.get("flow")) query.set("flow", params.get("flow"));
  if (params.get("status")) query.set("status", params.get("status"));
  let pages = 1; // how many pages the user has asked for; the poll refreshes them all

  const row = (e) =>
    el(
      "tr",
      { "data-exec-id": e.id, "data-status": e.status },
      el("td", { "data-label": "Execution" }, el("a", { href: `/ui/executions/${encodeURIComponent(e.id)}`, "data-link": true, class: "mono", text: e.id })),
      el("td", { "data-label": "Flow", text: e.flow }),
      el("td", { "data-label": "Status" }, statusBadge(e.status)),
      el("td", { "data-label": "Started", text: when(e.created_at) }),
      el("td", { "data-label": "Updated", text: when(e.updated_at) }),
    );

  const refresh = async () => {
    const rows = [];
    let cursor = null;
    let next = null;
    for (let i = 0; i < pages; i++) {
      const q = new URLSearchParams(query);
      q.set("limit", "50");
      if (cursor) q.set("cursor", cursor);
      const page = await api(`/api/v1/executions?${q}`);
      rows.push(...page.items.map(row));
      next = page.next_cursor;
      if (!next) break;
      cursor = next;
    }
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No executions match." })));
    more.replaceChildren(next ? el("button", { class: "secondary", type: "button", text: "Older executions", onclick: () => { pages += 1; refresh(); } }) : "");
    problem.replaceChildren();
  };
  await refresh();
  timers.push(setInterval(() => refresh().catch((err) => problem.replaceChildren(errorBox(err.message))), POLL_MS));
}

// -- one execution ------------------------------------------------------------------------

async function executionPage(app, id) {
  const base = `/api/v1/executions/${encodeURIComponent(id)}`;
  const head = el("div", { class: "card", id: "summary" });
  const waits = el("div", { id: "waits" });
  const timeline = el("div", { class: "card", id: "timeline" });
  const logs = el("pre", { class: "logs", id: "logs" });
  const artifacts = el("div", { class: "card", id: "artifacts" });
  const graph = el("div", { class: "card graph", id: "graph" });
  const steer = el("div", { class: "card", id: "steer" });
  app.replaceChildren(
    el("h1", {}, "Execution ", el("span", { class: "mono", text: id })),
    head,
    waits,
    timeline,
    el("div", { class: "card" }, el("h2", { text: "Logs" }), logs),
    el("div", { class: "grid2" }, artifacts, steer),
    graph,
  );

  let last = null; // the execution as last drawn
  let artifactList = [];
  const openForms = new Set(); // waits whose form is on screen: redrawing would lose what was typed

  const draw = async () => {
    const execution = await api(base);
    const changed = !last || last.status !== execution.status || last.updated_at !== execution.updated_at;
    if (changed) {
      artifactList = (await api(`${base}/artifacts`)).items;
      drawSummary(head, execution);
      drawWaits(waits, execution, base, openForms, () => draw());
      drawTimeline(timeline, execution, artifactList);
      drawArtifacts(artifacts, base, artifactList);
      if (!last || last.status !== execution.status) drawSteer(steer, execution, base);
      drawGraph(graph, id).catch((err) => graph.replaceChildren(el("h2", { text: "Lineage" }), errorBox(err.message)));
    } else if (execution.status === "running" || execution.status === "waiting") {
      drawTimeline(timeline, execution, artifactList); // open bars grow with the clock
    }
    last = execution;
    return execution;
  };
  await draw();
  followLogs(logs, base, () => last && (last.status === "running" || last.status === "waiting"));
  timers.push(
    setInterval(() => {
      if (last && ["completed", "failed", "cancelled"].includes(last.status)) return;
      draw().catch((err) => head.append(errorBox(err.message)));
    }, POLL_MS),
  );
}

function drawSummary(node, e) {
  const items = [
    ["Flow", e.flow],
    ["Status", statusBadge(e.status)],
    ["Started", when(e.created_at)],
    ["Updated", when(e.updated_at)],
    ["Code", el("span", { class: "mono", text: e.target })],
  ];
  if (e.original_exec_id) {
    items.push(["Replay of", el("a", { href: `/ui/executions/${encodeURIComponent(e.original_exec_id)}`, "data-link": true, class: "mono", text: e.original_exec_id })]);
  }
  if (e.result_artifact) items.push(["Result", el("span", { class: "mono", text: e.result_artifact })]);
  node.replaceChildren(
    el("dl", { class: "kv" }, items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)])),
    e.error ? errorBox(e.error) : "",
  );
  node.dataset.status = e.status;
}

// -- the timeline -------------------------------------------------------------------------

function drawTimeline(node, e, artifacts) {
  const now = Date.now() / 1000;
  const active = e.status === "running" || e.status === "waiting";
  const calls = e.checkpoints;
  const answeredAt = {};
  for (const a of artifacts) if (a.type === "answer" && a.call_id) answeredAt[a.call_id] = a.created_at;
  // The API gives a wait no opening time: it is drawn from the last checkpoint that ended before
  // it was answered (a flow waits right after the work it asks about) to its answer, or to now.
  const ends = calls.map((c) => c.ended_at).filter((t) => t);
  const waitRows = e.waits.map((w) => {
    const to = w.status === "open" ? (active ? now : e.updated_at) : answeredAt[w.name] || e.updated_at;
    const before = ends.filter((t) => t <= to);
    return { w, from: before.length ? Math.max(...before) : e.created_at, to };
  });
  const t0 = Math.min(e.created_at, ...calls.map((c) => c.started_at || e.created_at));
  const t1 = Math.max(active ? now : e.updated_at, ...ends, ...waitRows.map((r) => r.to), t0 + 0.001);
  const span = t1 - t0;
  // Placed through the CSSOM: the page's policy forbids inline style attributes.
  const bar = (cls, from, to) => {
    const node = el("div", { class: `bar ${cls}` });
    node.style.left = `${(((from - t0) / span) * 100).toFixed(3)}%`;
    node.style.width = `${Math.max(0.3, ((to - from) / span) * 100).toFixed(3)}%`;
    return node;
  };

  const rows = [];
  for (const c of calls) {
    const from = c.started_at || c.ended_at || e.created_at;
    const to = c.ended_at || (active ? now : e.updated_at);
    const notes = [duration(c.started_at ? to - from : null)];
    if (c.attempts > 1) notes.push(`${c.attempts} attempts`);
    if (c.interrupted) notes.push(`${c.interrupted} interrupted`);
    if (c.reused_from) notes.push(c.overridden ? "overridden" : `reused from ${c.reused_from}`);
    if (c.status !== "completed") notes.push(c.status);
    const title = `${c.call_id} (${c.function}): ${c.status}` + (c.error ? `\n${c.error}` : "");
    rows.push(
      el("div", { class: "label", text: c.call_id, title: c.function }),
      el(
        "div",
        { class: "track checkpoint-row", "data-call-id": c.call_id, "data-status": c.status, title },
        bar(c.reused_from ? "reused" : c.status, from, to),
        el("span", { class: "meta", text: notes.filter(Boolean).join(" · ") }),
      ),
    );
  }
  for (const { w, from, to } of waitRows) {
    const notes = [`wait: ${w.status.replace("_", " ")}`, duration(to - from)];
    if (w.deadline) notes.push(`deadline ${when(w.deadline)}`);
    rows.push(
      el("div", { class: "label", text: w.name }),
      el(
        "div",
        { class: "track wait-row", "data-wait": w.name, "data-status": w.status, title: w.question || w.name },
        bar(`wait ${w.status}`, from, to),
        el("span", { class: "meta", text: notes.filter(Boolean).join(" · ") }),
      ),
    );
  }
  node.replaceChildren(
    el("h2", { text: "Timeline" }),
    rows.length
      ? el("div", { class: "timeline" }, rows, el("div", { class: "axis" }, el("span", { text: when(t0) }), el("span", { text: duration(span) })))
      : el("p", { class: "muted", text: "No checkpoint has run yet." }),
  );
}

// -- logs (server-sent events, followed while the execution may still print) ---------------

function followLogs(pre, base, stillActive) {
  let after = 0;
  let source = null;
  const empty = el("span", { class: "muted empty", text: "No output yet." });
  pre.replaceChildren(empty);
  let stopped = false;
  const open = () => {
    if (stopped) return;
    source = new EventSource(`${base}/logs?follow=true&after=${after}`, { withCredentials: true });
    source.addEventListener("log", (event) => {
      const entry = JSON.parse(event.data);
      after = Math.max(after, entry.seq || 0);
      empty.remove();
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(
        el("span", { class: "src", text: entry.call_id ? `[${entry.call_id}] ` : "[flow] " }),
        el("span", { class: entry.stream, text: entry.text.endsWith("\n") ? entry.text : entry.text + "\n" }),
      );
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    });
    // The stream ends when the execution stops running; a waiting one may run again after an
    // answer, so look again a little later while it is not finished.
    const again = () => {
      source.close();
      if (stillActive()) setTimeout(open, POLL_MS);
    };
    source.addEventListener("end", again);
    source.onerror = again;
  };
  open();
  timers.push(() => {
    stopped = true;
    if (source) source.close();
  });
}

// -- artifacts and their previews -------------------------------------------------------

function drawArtifacts(node, base, items) {
  node.replaceChildren(
    el("h2", { text: "Artifacts" }),
    items.length ? "" : el("p", { class: "muted", text: "None yet." }),
    ...items.map((a) => {
      const box = el("div", { class: "preview", hidden: true });
      const details = el(
        "details",
        { class: "artifact", "data-artifact": a.name },
        el(
          "summary",
          {},
          el("strong", { text: a.name }),
          ` v${a.version} · ${a.type} · `,
          el("span", { class: "mono", text: a.data_type }),
          ` · ${size(a.size)}`,
          a.call_id ? el("span", { class: "muted", text: ` · ${a.call_id}` }) : "",
        ),
        box,
        el("div", { class: "actions" }, el("a", { href: `${base}/artifacts/${encodeURIComponent(a.id)}/content`, download: `${a.name}-v${a.version}`, text: "Download" })),
      );
      details.addEventListener("toggle", () => {
        if (details.open && !box.dataset.loaded) {
          box.dataset.loaded = "1";
          box.hidden = false;
          preview(box, base, a).catch((err) => box.replaceChildren(errorBox(err.message)));
        }
      });
      return details;
    }),
  );
}

const IMAGE_SIGNATURES = [
  ["image/png", [0x89, 0x50, 0x4e, 0x47]],
  ["image/jpeg", [0xff, 0xd8, 0xff]],
  ["image/gif", [0x47, 0x49, 0x46, 0x38]],
  ["image/webp", [0x52, 0x49, 0x46, 0x46]],
];

async function preview(box, base, a) {
  const url = `${base}/artifacts/${encodeURIComponent(a.id)}`;
  const shown = await api(`${url}/preview`);
  if (shown.kind === "json") {
    const text = typeof shown.value === "string" ? shown.value : JSON.stringify(shown.value, null, 2);
    box.replaceChildren(el("pre", { class: "preview-text", text }));
    return;
  }
  // Raw bytes (the `bytes` serializer) are safe to look at: fetched as they are, never decoded
  // by the server. An image is shown from a blob of them; UTF-8 text as text. Anything else
  // (pickles, arrays) is only described: the preview endpoint never unpickles.
  if (a.serializer === "bytes" && a.size <= PREVIEW_BYTES) {
    const response = await fetch(`${url}/content`, { credentials: "same-origin" });
    if (!response.ok) throw new ApiError(response.status, `the content could not be read (HTTP ${response.status})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const match = IMAGE_SIGNATURES.find(([, sig]) => sig.every((b, i) => bytes[i] === b));
    if (match) {
      const src = URL.createObjectURL(new Blob([bytes], { type: match[0] }));
      timers.push(() => URL.revokeObjectURL(src));
      box.replaceChildren(el("img", { src, alt: a.name, class: "preview-image" }));
      return;
    }
    try {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      box.replaceChildren(el("pre", { class: "preview-text", text }));
      return;
    } catch (_) {
      /* binary: described below */
    }
  }
  box.replaceChildren(el("p", { class: "muted", text: `${a.data_type}, ${size(a.size)}, stored by the ${a.serializer} serializer: not previewed (download it, or load it with kitaru artifacts get ${a.id}).` }));
}

// -- lineage graph (SVG) ----------------------------------------------------------------

async function drawGraph(node, id) {
  const g = await api(`/ui/data/executions/${encodeURIComponent(id)}/graph`);
  const title = el("h2", { text: "Lineage" });
  if (!g.nodes.length) {
    node.replaceChildren(title, el("p", { class: "muted", text: "Nothing recorded yet." }));
    return;
  }
  // Layers by longest path from a source: each edge goes left to right.
  const layer = Object.fromEntries(g.nodes.map((n) => [n.id, 0]));
  for (let i = 0; i < g.nodes.length; i++) {
    let moved = false;
    for (const e of g.edges) {
      if (e.source in layer && e.target in layer && layer[e.target] < layer[e.source] + 1) {
        layer[e.target] = layer[e.source] + 1;
        moved = true;
      }
    }
    if (!moved) break;
  }
  const columns = [];
  for (const n of g.nodes) (columns[layer[n.id]] = columns[layer[n.id]] || []).push(n);
  const W = 170, H = 34, DX = 230, DY = 62, PAD = 34;
  const at = {};
  columns.forEach((col, x) => col.forEach((n, y) => (at[n.id] = { x: PAD + x * DX, y: PAD + y * DY })));
  const width = PAD * 2 + (columns.length - 1) * DX + W;
  const height = PAD * 2 + (Math.max(...columns.map((c) => c.length)) - 1) * DY + H;
  const picture = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "lineage graph" });
  picture.append(
    svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a94a6" }))),
  );
  for (const e of g.edges) {
    const a = at[e.source], b = at[e.target];
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    // An edge that skips a column would run under the nodes between: it arcs over them instead.
    const skip = Math.round((b.x - a.x) / DX) > 1;
    const lift = skip ? Math.min(a.y, b.y) - PAD + 4 : null;
    const d = skip
      ? `M ${a.x + W / 2} ${a.y} C ${a.x + W / 2} ${lift}, ${b.x + W / 2} ${lift}, ${b.x + W / 2} ${b.y}`
      : `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`;
    const path = svg("path", { class: "edge", d, "marker-end": "url(#arrow)", "data-source": e.source, "data-target": e.target });
    path.append(svg("title", {}, `${e.name} (${e.data_type}, ${size(e.size)})`));
    const ly = skip ? lift + 10 : (y1 + y2) / 2 - 4;
    picture.append(path, svg("text", { class: "edge-label", x: skip ? (a.x + b.x + W) / 2 : mx, y: ly, "text-anchor": "middle" }, e.name));
  }
  for (const n of g.nodes) {
    const p = at[n.id];
    const label = n.label.length > 22 ? n.label.slice(0, 21) + "…" : n.label;
    const group = svg("g", { class: `node ${n.kind}`, "data-node": n.id, transform: `translate(${p.x},${p.y})` });
    group.append(svg("title", {}, `${n.kind}: ${n.label}`), svg("rect", { width: W, height: H, rx: 6 }), svg("text", { x: 10, y: H / 2 + 4 }, label));
    picture.append(group);
  }
  node.replaceChildren(title, picture);
}

// -- answer forms from a wait's JSON Schema ---------------------------------------------

function resolve(schema, root) {
  let s = schema || {};
  for (let i = 0; i < 20 && s.$ref; i++) {
    const parts = s.$ref.replace(/^#\//, "").split("/");
    let target = root;
    for (const p of parts) target = target && target[p.replace(/~1/g, "/").replace(/~0/g, "~")];
    s = { ...(target || {}), ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== "$ref")) };
  }
  return s;
}

class FieldError extends Error {}

// One field: returns {node, get} where get() gives the value (undefined: left empty).
function field(schema, root, name, required, idPrefix) {
  const s = resolve(schema, root);
  const id = `${idPrefix}-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const title = s.title || name;
  const hint = s.description ? el("p", { class: "hint", text: s.description }) : "";
  const variants = s.anyOf || s.oneOf;
  let types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  let nullable = types.includes("null");
  types = types.filter((t) => t !== "null");

  if (variants && !s.type) {
    const real = variants.filter((v) => resolve(v, root).type !== "null");
    nullable = real.length < variants.length;
    if (real.length === 1) {
      const inner = field({ ...real[0], title: s.title || real[0].title, description: s.description }, root, name, required && !nullable, idPrefix);
      return inner;
    }
    return jsonField(s, id, title, hint, required);
  }
  if (s.enum) {
    const select = el("select", { id, name }, el("option", { value: "", text: required ? "choose…" : "(none)" }), s.enum.map((v, i) => el("option", { value: String(i), text: typeof v === "string" ? v : JSON.stringify(v) })));
    return {
      node: el("div", { class: "field" }, el("label", { for: id, text: title }), hint, select),
      get: () => (select.value === "" ? undefined : s.enum[Number(select.value)]),
    };
  }
  if ("const" in s) {
    return { node: el("div", { class: "field" }, el("label", { text: title }), el("code", { text: JSON.stringify(s.const) })), get: () => s.const };
  }
  const type = types[0];
  if (type === "boolean") {
    const yes = el("input", { type: "radio", name: id, id: `${id}-true`, value: "true" });
    const no = el("input", { type: "radio", name: id, id: `${id}-false`, value: "false" });
    return {
      node: el("fieldset", { class: "field", "data-field": name }, el("legend", { text: title }), hint, el("label", { for: `${id}-true` }, yes, " Yes (true)"), el("label", { for: `${id}-false` }, no, " No (false)")),
      get: () => (yes.checked ? true : no.checked ? false : undefined),
    };
  }
  if (type === "integer" || type === "number") {
    const input = el("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", inputmode: "decimal" });
    if (s.minimum !== undefined) input.min = s.minimum;
    if (s.maximum !== undefined) input.max = s.maximum;
    return {
      node: el("div", { class: "field" }, el("label", { for: id, text: title }), hint, input),
      get: () => {
        if (input.value.trim() === "") return nullable ? null : undefined;
        const n = Number(input.value);
        if (!isFinite(n)) throw new FieldError(`${title}: ${input.value} is not a number`);
        return n;
      },
    };
  }
  if (type === "string") {
    const long = (s.maxLength || 0) > 200 || s.format === "textarea";
    const input = long ? el("textarea", { id, name }) : el("input", { id, name, type: s.format === "email" ? "email" : "text" });
    if (s.default !== undefined) input.value = String(s.default);
    return {
      node: el("div", { class: "field" }, el("label", { for: id, text: title }), hint, input),
      get: () => (input.value === "" && nullable ? null : input.value === "" && !required ? undefined : input.value),
    };
  }
  if (type === "object" && s.properties) {
    const need = new Set(s.required || []);
    const children = Object.entries(s.properties).map(([key, sub]) => [key, field(sub, root, key, need.has(key), id)]);
    return {
      node: el("fieldset", { class: "field", "data-field": name }, el("legend", { text: title }), hint, children.map(([, f]) => f.node)),
      get: () => {
        const value = {};
        for (const [key, f] of children) {
          const v = f.get();
          if (v !== undefined) value[key] = v;
        }
        return value;
      },
    };
  }
  if (type === "array" && s.items && !Array.isArray(s.items)) {
    const list = el("div", { class: "items" });
    const entries = [];
    let counter = 0;
    const add = () => {
      const f = field(s.items, root, `${counter++}`, true, id);
      const item = el("div", { class: "item row" }, f.node);
      const entry = { f, item };
      item.append(el("button", { type: "button", class: "secondary", text: "Remove", onclick: () => { entries.splice(entries.indexOf(entry), 1); item.remove(); } }));
      entries.push(entry);
      list.append(item);
    };
    return {
      node: el("fieldset", { class: "field", "data-field": name }, el("legend", { text: title }), hint, list, el("button", { type: "button", class: "secondary", text: "Add item", onclick: add })),
      get: () => entries.map((e) => e.f.get()),
    };
  }
  return jsonField(s, id, title, hint, required);
}

// Anything the form cannot draw (mixed unions, tuples, free objects, no schema) is typed as JSON.
function jsonField(s, id, title, hint, required) {
  const area = el("textarea", { id, name: id, placeholder: "a JSON value" });
  return {
    node: el("div", { class: "field" }, el("label", { for: id, text: `${title} (JSON)` }), hint, area),
    get: () => {
      if (area.value.trim() === "") return required ? undefined : undefined;
      try {
        return JSON.parse(area.value);
      } catch (err) {
        throw new FieldError(`${title}: not valid JSON (${err.message})`);
      }
    },
  };
}

function drawWaits(node, e, base, openForms, redraw) {
  const open = e.waits.filter((w) => w.status === "open");
  for (const name of [...openForms]) if (!open.some((w) => w.name === name)) openForms.delete(name);
  // A form being filled in stays as it is; only new waits get a form. The form of a wait that
  // closed goes (the notice an answer left stays, saying what happened).
  for (const child of [...node.children]) if (child.dataset.wait && !openForms.has(child.dataset.wait)) child.remove();
  for (const w of open) {
    if (openForms.has(w.name)) continue;
    openForms.add(w.name);
    node.append(answerForm(w, e, base, openForms, redraw));
  }
}

function answerForm(w, e, base, openForms, redraw) {
  const schema = w.json_schema || {};
  const fields = field(schema, schema, "value", true, `answer-${w.name}`);
  const raw = el("textarea", { id: `raw-${w.name}`.replace(/[^A-Za-z0-9_-]/g, "_"), name: "raw", class: "raw-answer", placeholder: "the answer as JSON, e.g. true" });
  const rawBox = el("div", { hidden: true }, el("label", { for: raw.id, text: "Answer as JSON" }), raw);
  const toggle = el("button", { type: "button", class: "link raw-toggle", text: "Type the answer as JSON instead" });
  toggle.addEventListener("click", () => {
    rawBox.hidden = !rawBox.hidden;
    fields.node.hidden = !rawBox.hidden;
    toggle.textContent = rawBox.hidden ? "Type the answer as JSON instead" : "Use the form";
  });
  const problem = el("div", { class: "answer-error" });
  const submit = el("button", { type: "submit", text: "Answer" });
  const form = el(
    "form",
    { class: "card answer", "data-wait": w.name, method: "post", action: `${base}/waits/${encodeURIComponent(w.name)}` },
    csrfField(),
    el("h2", {}, "Waiting for an answer: ", el("span", { class: "mono", text: w.name })),
    w.question ? el("pre", { class: "question", text: w.question }) : "",
    el("p", { class: "hint" }, "Expected: ", el("span", { class: "mono", text: w.schema })),
    w.deadline ? el("p", { class: "hint", text: `Deadline: ${when(w.deadline)}` }) : "",
    fields.node,
    rawBox,
    toggle,
    problem,
    el("div", { class: "actions" }, submit),
  );
  if (!can("answer")) {
    submit.disabled = true;
    problem.replaceChildren(el("p", { class: "hint", text: "Your key cannot answer waits (it needs the answer scope)." }));
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    let value;
    try {
      if (!rawBox.hidden) {
        try {
          value = JSON.parse(raw.value);
        } catch (err) {
          throw new FieldError(`not valid JSON: ${err.message}`);
        }
      } else {
        value = fields.get();
        if (value === undefined) throw new FieldError("give an answer first");
      }
    } catch (err) {
      problem.replaceChildren(errorBox(err.message));
      return;
    }
    submit.disabled = true;
    try {
      await api(`${base}/waits/${encodeURIComponent(w.name)}`, { method: "POST", body: { value } });
      openForms.delete(w.name);
      form.replaceWith(el("div", { class: "notice", role: "status", "data-answered": w.name, text: `Answer to ${w.name} accepted; the execution goes on.` }));
      redraw().catch(() => {});
    } catch (err) {
      // A refused answer leaves the wait open: the message is shown here, the form stays.
      problem.replaceChildren(errorBox(err.message));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

// -- steering: cancel, retry, resume, replay ------------------------------------------------

function drawSteer(node, e, base) {
  const problem = el("div");
  const act = (label, path, cls, confirmText) =>
    el("button", {
      type: "button",
      class: cls || "secondary",
      text: label,
      onclick: async () => {
        if (confirmText && !window.confirm(confirmText)) return;
        problem.replaceChildren();
        try {
          await api(`${base}/${path}`, { method: "POST", body: {} });
          problem.replaceChildren(el("div", { class: "notice", role: "status", text: `${label}: accepted.` }));
        } catch (err) {
          problem.replaceChildren(errorBox(err.message));
        }
      },
    });
  if (!can("invoke")) {
    node.replaceChildren(
      el("h2", { text: "Steer" }),
      el("p", { class: "hint", text: "Your key cannot cancel, retry, resume or replay (it needs the invoke scope)." }),
      el("p", {}, el("a", { href: `/ui/diff?a=${encodeURIComponent(e.id)}`, "data-link": true, text: "Compare with another execution" })),
    );
    return;
  }
  const buttons = [];
  if (e.status === "running" || e.status === "waiting") buttons.push(act("Cancel", "cancel", "danger", `Cancel ${e.id}? A cancelled execution never runs again.`));
  if (e.status === "failed") buttons.push(act("Retry", "retry"));
  if (e.status === "running" || e.status === "waiting") buttons.push(act("Resume", "resume"));

  const from = el("select", { id: "replay-from", name: "from", required: true }, e.checkpoints.map((c) => el("option", { value: c.call_id, text: c.call_id })));
  const first = e.checkpoints.length ? e.checkpoints[0].call_id : "call";
  const overrides = el("textarea", { id: "replay-overrides", name: "overrides", placeholder: `{"${first}": "its new output"}` });
  const args = el("textarea", { id: "replay-args", name: "args", placeholder: '{"argument": "a new value"}' });
  const replayProblem = el("div");
  const replay = el(
    "form",
    { id: "replay", method: "post", action: `${base}/replay` },
    csrfField(),
    el("h2", { text: "Replay from a checkpoint" }),
    el("p", { class: "hint", text: "Calls before it reuse this execution's outputs; it and everything after run again." }),
    el("label", { for: "replay-from", text: "From" }),
    from,
    el("label", { for: "replay-overrides", text: "Overrides (JSON: call id → value)" }),
    overrides,
    el("label", { for: "replay-args", text: "Changed inputs (JSON: argument → value)" }),
    args,
    replayProblem,
    el("div", { class: "actions" }, el("button", { type: "submit", text: "Replay", disabled: !e.checkpoints.length })),
  );
  replay.addEventListener("submit", async (event) => {
    event.preventDefault();
    replayProblem.replaceChildren();
    const body = { from: from.value };
    try {
      for (const [key, area] of [["overrides", overrides], ["args", args]]) {
        if (area.value.trim()) {
          try {
            body[key] = JSON.parse(area.value);
          } catch (err) {
            throw new FieldError(`${key}: not valid JSON (${err.message})`);
          }
        }
      }
      const made = await api(`${base}/replay`, { method: "POST", body });
      go(`/ui/executions/${encodeURIComponent(made.id)}`);
    } catch (err) {
      replayProblem.replaceChildren(errorBox(err.message));
    }
  });
  node.replaceChildren(
    el("h2", { text: "Steer" }),
    buttons.length ? el("div", { class: "actions" }, buttons) : "",
    problem,
    el("p", {}, el("a", { href: `/ui/diff?a=${encodeURIComponent(e.id)}${e.original_exec_id ? "&b=" + encodeURIComponent(e.original_exec_id) : ""}`, "data-link": true, text: "Compare with another execution" })),
    replay,
  );
}

// -- diff of two executions -------------------------------------------------------------

async function diffPage(app, params) {
  const a = el("input", { id: "diff-a", name: "a", value: params.get("a") || "", required: true, class: "mono", size: 30 });
  const b = el("input", { id: "diff-b", name: "b", value: params.get("b") || "", required: true, class: "mono", size: 30 });
  const form = el(
    "form",
    { class: "card row", id: "diff-form" },
    el("div", {}, el("label", { for: "diff-a", text: "Execution A" }), a),
    el("div", {}, el("label", { for: "diff-b", text: "Execution B" }), b),
    el("div", {}, el("button", { type: "submit", text: "Compare" })),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(`/ui/diff?a=${encodeURIComponent(a.value.trim())}&b=${encodeURIComponent(b.value.trim())}`);
  });
  const out = el("div", { class: "card diff", id: "diff" });
  app.replaceChildren(el("h1", { text: "Diff" }), form, out);
  if (!params.get("a") || !params.get("b")) {
    out.replaceChildren(el("p", { class: "muted", text: "Give two execution ids (a replay and its original, say)." }));
    return;
  }
  try {
    const d = await api(`/api/v1/executions/${encodeURIComponent(params.get("a"))}/diff/${encodeURIComponent(params.get("b"))}`);
    const changed = d.entries.filter((x) => x.status !== "same").length;
    out.replaceChildren(
      el("p", {}, `${changed} of ${d.entries.length} items differ.`),
      el(
        "table",
        { class: "list" },
        el("thead", {}, el("tr", {}, ["Kind", "Name", "Status", "Detail"].map((h) => el("th", { text: h })))),
        el(
          "tbody",
          {},
          d.entries.map((x) =>
            el(
              "tr",
              { class: x.status, "data-diff": `${x.kind}:${x.name}`, "data-status": x.status },
              el("td", { "data-label": "Kind", text: x.kind }),
              el("td", { "data-label": "Name", class: "mono", text: x.name }),
              el("td", { "data-label": "Status" }, statusBadge(x.status)),
              el("td", { "data-label": "Detail" }, x.detail ? el("pre", { text: x.detail }) : ""),
            ),
          ),
        ),
      ),
    );
  } catch (err) {
    out.replaceChildren(errorBox(err.message));
  }
}

// -- deployments: flows, versions, tags; promote, rollback, invoke -----------------------------

function tagChip(t) {
  const label = t.weight !== null && t.weight !== undefined ? `${t.tag} (${t.weight}%)` : t.tag;
  return el("span", { class: `tag${t.tag === "default" ? " default" : ""}`, "data-tag": t.tag, "data-weight": t.weight ?? "", text: label });
}

async function deploymentsPage(app) {
  const data = await api("/api/v1/deployments");
  const flows = new Map();
  for (const v of data.versions) {
    if (!flows.has(v.flow)) flows.set(v.flow, { versions: [], tags: [] });
    flows.get(v.flow).versions.push(v);
  }
  for (const t of data.tags) if (flows.has(t.flow)) flows.get(t.flow).tags.push(t);
  const rows = [...flows.entries()].map(([flow, f]) => {
    const latest = f.versions[f.versions.length - 1];
    return el(
      "tr",
      { "data-flow": flow },
      el("td", { "data-label": "Flow" }, el("a", { href: `/ui/deployments/${encodeURIComponent(flow)}`, "data-link": true, text: flow })),
      el("td", { "data-label": "Versions", text: String(f.versions.length) }),
      el("td", { "data-label": "Latest", text: `${latest.version} (${when(latest.created_at)})` }),
      el("td", { "data-label": "Tags" }, f.tags.map((t) => el("span", { class: "tag-at" }, tagChip(t), ` → ${t.version}`))),
    );
  });
  app.replaceChildren(
    el("h1", { text: "Deployments" }),
    el(
      "div",
      { class: "card" },
      rows.length
        ? el(
            "table",
            { class: "list", id: "deployments" },
            el("thead", {}, el("tr", {}, ["Flow", "Versions", "Latest", "Tags"].map((h) => el("th", { text: h })))),
            el("tbody", {}, rows),
          )
        : el("p", { class: "muted", id: "deployments", text: "Nothing is deployed yet: flow.deploy() freezes a flow into version 1." }),
    ),
  );
}

async function flowDeploymentsPage(app, flow) {
  const base = `/api/v1/deployments/${encodeURIComponent(flow)}`;
  const versionsBox = el("div", { class: "card", id: "versions" });
  const manage = el("div", { class: "card", id: "manage" });
  const invokeBox = el("div", { class: "card", id: "invoke" });
  const historyBox = el("div", { class: "card", id: "history" });
  app.replaceChildren(
    el("h1", {}, "Deployments of ", el("span", { class: "mono", text: flow })),
    versionsBox,
    el("div", { class: "grid2" }, manage, invokeBox),
    historyBox,
  );

  const draw = async () => {
    const data = await api(`/api/v1/deployments?flow=${encodeURIComponent(flow)}`);
    const moves = (await api(`${base}/history`)).items;
    if (!data.versions.length) throw new Error(`flow ${flow} has no deployed versions.`);
    const tagsOf = (n) => data.tags.filter((t) => t.version === n);
    versionsBox.replaceChildren(
      el("h2", { text: "Versions" }),
      el(
        "table",
        { class: "list" },
        el("thead", {}, el("tr", {}, ["Version", "Tags", "Deployed", "By", "Image", "Message"].map((h) => el("th", { text: h })))),
        el(
          "tbody",
          {},
          data.versions
            .slice()
            .reverse()
            .map((v) =>
              el(
                "tr",
                { "data-version": v.version },
                el("td", { "data-label": "Version", text: String(v.version) }),
                el("td", { "data-label": "Tags" }, tagsOf(v.version).map(tagChip)),
                el("td", { "data-label": "Deployed", text: when(v.created_at) }),
                el("td", { "data-label": "By", text: v.created_by }),
                el("td", { "data-label": "Image", class: "mono", text: v.image || "—" }),
                el("td", { "data-label": "Message", text: v.message || "" }),
              ),
            ),
        ),
      ),
    );
    drawManage(manage, flow, base, data, draw);
    drawInvoke(invokeBox, flow, base, data);
    historyBox.replaceChildren(
      el("h2", { text: "History" }),
      el(
        "table",
        { class: "list" },
        el("thead", {}, el("tr", {}, ["When", "Tag", "From", "To", "Weight", "Action", "Who"].map((h) => el("th", { text: h })))),
        el(
          "tbody",
          {},
          moves
            .slice()
            .reverse()
            .map((m) =>
              el(
                "tr",
                { "data-move": m.id ?? "", "data-tag": m.tag, "data-action": m.action, "data-version": m.version ?? "" },
                el("td", { "data-label": "When", text: when(m.ts) }),
                el("td", { "data-label": "Tag", text: m.tag }),
                el("td", { "data-label": "From", text: m.previous ?? "—" }),
                el("td", { "data-label": "To", text: m.version ?? "removed" }),
                el("td", { "data-label": "Weight", text: m.weight ?? "" }),
                el("td", { "data-label": "Action", text: m.action }),
                el("td", { "data-label": "Who", text: m.who }),
              ),
            ),
        ),
      ),
    );
    const current = data.tags.find((t) => t.tag === "default");
    app.dataset.default = current ? String(current.version) : "";
  };
  await draw();
}

function drawManage(node, flow, base, data, redraw) {
  const allowed = can("admin");
  const problem = el("div", { class: "manage-result" });
  const others = data.tags.filter((t) => t.tag !== "default");
  const promoteTag = el(
    "select",
    { id: "promote-tag", name: "tag", disabled: !allowed || !others.length },
    others.map((t) => el("option", { value: t.tag, text: `${t.tag} (version ${t.version})` })),
  );
  const rollbackTo = el(
    "select",
    { id: "rollback-to", name: "to", disabled: !allowed },
    el("option", { value: "", text: "the version before" }),
    data.versions.map((v) => el("option", { value: String(v.version), text: `version ${v.version}` })),
  );
  const act = async (path, body, what) => {
    problem.replaceChildren();
    try {
      const move = await api(`${base}/${path}`, { method: "POST", body });
      await redraw();
      // Redrawn: the new result box is the one on screen now.
      node.querySelector(".manage-result").replaceChildren(
        el("div", { class: "notice", role: "status", text: `${what}: ${flow}@default → version ${move.version} (was ${move.previous ?? "—"}).` }),
      );
    } catch (err) {
      problem.replaceChildren(errorBox(err.message));
    }
  };
  const promote = el("form", { id: "promote-form", method: "post", action: `${base}/promote` }, csrfField());
  promote.append(
    el("label", { for: "promote-tag", text: "Promote: move default to the version of tag" }),
    promoteTag,
    el("div", { class: "actions" }, el("button", { type: "submit", id: "promote", text: "Promote", disabled: !allowed || !others.length })),
  );
  promote.addEventListener("submit", (event) => {
    event.preventDefault();
    act("promote", { tag: promoteTag.value }, "Promoted");
  });
  const rollback = el("form", { id: "rollback-form", method: "post", action: `${base}/rollback` }, csrfField());
  rollback.append(
    el("label", { for: "rollback-to", text: "Roll back default to" }),
    rollbackTo,
    el("div", { class: "actions" }, el("button", { type: "submit", id: "rollback", class: "danger", text: "Roll back", disabled: !allowed })),
  );
  rollback.addEventListener("submit", (event) => {
    event.preventDefault();
    act("rollback", rollbackTo.value ? { to: Number(rollbackTo.value) } : {}, "Rolled back");
  });
  node.replaceChildren(
    el("h2", { text: "Promote and roll back" }),
    allowed ? "" : el("p", { class: "hint", text: "Your key cannot move tags (it needs the admin scope)." }),
    promote,
    rollback,
    problem,
  );
}

function drawInvoke(node, flow, base, data) {
  const allowed = can("invoke");
  const tag = el(
    "select",
    { id: "invoke-tag", name: "tag", disabled: !allowed },
    data.tags.map((t) => el("option", { value: t.tag, text: `${t.tag} (version ${t.version})` })),
  );
  tag.value = "default";
  const args = el("textarea", { id: "invoke-args", name: "args", placeholder: '{"topic": "a value"}', disabled: !allowed });
  const id = el("input", { id: "invoke-id", name: "execution_id", class: "mono", placeholder: "optional idempotency key", disabled: !allowed });
  const problem = el("div");
  const form = el(
    "form",
    { id: "invoke-form", method: "post", action: `${base}/invoke` },
    csrfField(),
    el("h2", { text: "Invoke" }),
    el("p", { class: "hint", text: "Starts an execution of the tag's version (default routes canaries by weight); the server drives it." }),
    el("label", { for: "invoke-tag", text: "Tag" }),
    tag,
    el("label", { for: "invoke-args", text: "Arguments (JSON object: parameter → value)" }),
    args,
    el("label", { for: "invoke-id", text: "Execution id" }),
    id,
    allowed ? "" : el("p", { class: "hint", text: "Your key cannot invoke (it needs the invoke scope)." }),
    problem,
    el("div", { class: "actions" }, el("button", { type: "submit", text: "Invoke", disabled: !allowed })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    try {
      let parsed = {};
      if (args.value.trim()) {
        try {
          parsed = JSON.parse(args.value);
        } catch (err) {
          throw new Error(`arguments: not valid JSON (${err.message})`);
        }
        if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
          throw new Error('arguments: must be a JSON object of parameter names, e.g. {"topic": "x"}');
        }
      }
      const body = { tag: tag.value, args: parsed };
      if (id.value.trim()) body.execution_id = id.value.trim();
      const made = await api(`${base}/invoke`, { method: "POST", body });
      go(`/ui/executions/${encodeURIComponent(made.id)}`);
    } catch (err) {
      problem.replaceChildren(errorBox(err.message));
    }
  });
  node.replaceChildren(form);
}
