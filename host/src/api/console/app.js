// Troupe console: pages over the JSON API (the same one the CLI uses).
// No framework and no build step. Data is only ever put in the page as
// text (`textContent`, attributes), never as HTML.
"use strict";

// ---------------------------------------------------------------- helpers

/** An element: h("a", {href: "#/"}, "text", child, ...). */
function h(tag, attrs, ...children) {
  const svg = ["svg", "g", "rect", "text", "path", "title", "marker", "defs"].includes(tag);
  const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** The API, as the console: the session cookie with the console's header. */
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-Troupe-Console": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) { location.href = "/ui"; throw new ApiError(401, "signed out"); }
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = text; }
  if (!r.ok) throw new ApiError(r.status, (v && v.error) || r.statusText);
  return v;
}

const main = () => document.getElementById("main");
const badge = (state) => h("span", { class: `badge s-${state}` }, String(state).replace(/_/g, " "));
const when = (t) => (t ? new Date(t).toLocaleString() : "");
const ms = (n) => (n === undefined || n === null ? "" : n < 1000 ? `${n} ms` : `${(n / 1000).toFixed(2)} s`);
const table = (caption, heads, rows, cls) => h("div", { class: "scroll" },
  h("table", { class: cls },
    h("caption", { class: "note" }, caption),
    h("thead", {}, h("tr", {}, heads.map((x) => h("th", { scope: "col", class: x.num ? "num" : null }, x.num ? x.t : x)))),
    h("tbody", {}, rows)));
const num = (n) => h("td", { class: "num" }, n === undefined || n === null ? "–" : String(n));
function message(text, error) {
  return h("p", { class: error ? "message error" : "message", role: error ? "alert" : "status" }, text);
}
function show(title, ...content) {
  const m = main();
  m.replaceChildren(h("h2", {}, title), ...content.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  document.title = `${title} · ${document.querySelector("header .app").textContent} · Troupe`;
}
function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
/** A filter form: its fields' values go to the hash route `base`. */
function filters(base, fields, values) {
  const form = h("form", { class: "filters", role: "search", onsubmit: (ev) => {
    ev.preventDefault();
    const p = {};
    for (const f of fields) p[f.name] = form.elements[f.name].value.trim();
    location.hash = `${base}${query(p)}`;
  } });
  for (const f of fields) {
    const id = `f-${f.name}`;
    const input = f.options
      ? h("select", { id, name: f.name }, h("option", { value: "" }, "any"),
          f.options.map((o) => h("option", { value: o, selected: values[f.name] === o }, o)))
      : h("input", { id, name: f.name, value: values[f.name] || "", placeholder: f.placeholder || "", size: f.size || 14 });
    form.append(h("label", { for: id }, f.label, input));
  }
  form.append(h("button", { type: "submit" }, "Apply"));
  return form;
}

// ---------------------------------------------------------------- the app

let timer = null;
function every(ms, f) { timer = setInterval(f, ms); }

async function appPage() {
  const app = await api("GET", "/v1/app");
  const counts = h("div", {});
  const graph = h("div", { class: "graph", role: "img", "aria-label": "The app's steps and the event types between them (the table below says the same)" }, drawGraph(app));
  const flows = app.flows.length
    ? app.flows.map((f) => h("section", {}, h("h3", {}, `Flow ${f.name}`),
        h("p", { class: "note" }, `input ${f.input}; times out after ${ms(f.timeout_ms)}. `, h("a", { href: `#/runs${query({ flow: f.name })}` }, "Its runs")),
        table(`The steps of flow ${f.name}, in the order they may run`, ["step", "does", "input", "after", "compensation"],
          f.steps.map((s) => h("tr", {}, h("td", {}, h("code", {}, s.id)),
            h("td", {}, does(s)),
            h("td", {}, s.input), h("td", {}, s.after.join(", ")), h("td", {}, s.compensate || ""))))))
    : [h("p", { class: "note" }, "No flows.")];
  const render = (a) => counts.replaceChildren(table(`Steps of deployment ${a.deployment}, with live counters`,
    ["step", "consumes", "produces", { t: "handled", num: 1 }, { t: "emitted", num: 1 }, { t: "retried", num: 1 }, { t: "dead-lettered", num: 1 }, { t: "contract violations", num: 1 }, "state"],
    a.steps.map((s) => h("tr", {},
      h("th", { scope: "row" }, h("code", {}, s.name), s.choreography ? "" : h("span", { class: "note" }, " (commands only)")),
      h("td", {}, s.consumes.join(", ")), h("td", {}, s.produces.join(", ")),
      num(s.counters && s.counters.handled), num(s.counters && s.counters.emitted), num(s.counters && s.counters.retried),
      num(s.counters && s.counters.dead_lettered), num(s.counters && s.counters.contract_violations),
      h("td", {}, s.buckets.map((b, i) => [i ? ", " : "", h("a", { href: `#/state/${encodeURIComponent(b)}` }, b)])))), "counters"));
  render(app);
  const active = h("p", { class: "note" }, app.runs_active === null ? "" : `${app.runs_active} runs active.`);
  show(`App ${app.name}`, active, graph, h("h3", {}, "Steps"), counts, ...flows);
  every(2000, async () => {
    const a = await api("GET", "/v1/app");
    render(a);
    active.textContent = a.runs_active === null ? "" : `${a.runs_active} runs active.`;
    for (const s of a.steps) {
      const t = document.getElementById(`counts-${s.name}`);
      if (t) t.textContent = countsLine(s);
    }
  });
}

function countsLine(s) {
  const c = s.counters || {};
  return `${c.handled || 0} handled · ${c.dead_lettered || 0} dead`;
}

/** What a flow step does, in words. */
function does(s) {
  if (s.kind === "command") {
    return s.for_each ? `command to ${s.target} for each of ${s.for_each.over}, ${s.for_each.max_parallel} at once` : `command to ${s.target}`;
  }
  if (s.kind === "hybrid") return `publish ${s.target.publish}, await ${s.target.await}`;
  if (s.kind === "sleep") return s.target.sleep_ms !== undefined ? `sleep ${ms(s.target.sleep_ms)}` : `sleep until ${s.target.until}`;
  return `await signal ${s.target}`;
}

/** The steps as boxes in columns (a step after every step whose output it
 * consumes), an edge per event type from producer to consumer; types no
 * step produces come from outside (a dashed box). */
function drawGraph(app) {
  const steps = app.steps.filter((s) => s.choreography);
  const producers = {};
  for (const s of steps) for (const t of s.produces) (producers[t] ||= []).push(s.name);
  const outside = new Set();
  for (const s of steps) for (const t of s.consumes) if (!producers[t]) outside.add(t);
  const nodes = {};
  for (const t of outside) nodes[`in:${t}`] = { id: `in:${t}`, label: t, external: true, depth: 0 };
  for (const s of steps) nodes[s.name] = { id: s.name, label: s.name, step: s, depth: 1 };
  const edges = [];
  for (const s of steps) for (const t of s.consumes) {
    for (const p of producers[t] || [`in:${t}`]) edges.push({ from: p, to: s.name, label: t });
  }
  // Longest path, bounded (a cycle stops growing after as many rounds as nodes).
  for (let round = 0; round < Object.keys(nodes).length; round++) {
    let changed = false;
    for (const e of edges) {
      if (e.from !== e.to && nodes[e.to].depth < nodes[e.from].depth + 1) { nodes[e.to].depth = nodes[e.from].depth + 1; changed = true; }
    }
    if (!changed) break;
  }
  const columns = {};
  for (const n of Object.values(nodes)) (columns[n.depth] ||= []).push(n);
  // Boxes as wide as the longest name, gaps as wide as the longest type.
  const longest = (xs) => Math.max(0, ...xs.map((x) => x.length));
  const W = Math.max(170, 20 + 7.5 * longest(Object.values(nodes).map((n) => (n.external ? `from outside: ${n.label}` : n.label))));
  const GX = Math.max(90, 24 + 6.5 * longest(edges.map((e) => e.label)));
  const H = 52, GY = 28;
  let maxRows = 1;
  for (const [d, col] of Object.entries(columns)) {
    col.sort((a, b) => a.label.localeCompare(b.label));
    col.forEach((n, i) => { n.x = 10 + Number(d) * (W + GX); n.y = 10 + i * (H + GY); });
    maxRows = Math.max(maxRows, col.length);
  }
  const width = 20 + (Object.keys(columns).length) * (W + GX) - GX;
  const height = 20 + maxRows * (H + GY) - GY;
  const svg = h("svg", { viewBox: `0 0 ${Math.max(width, 200)} ${Math.max(height, 60)}`, width: Math.max(width, 200), "aria-hidden": "true" },
    h("defs", {}, h("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      h("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "currentColor" }))));
  for (const e of edges) {
    const a = nodes[e.from], b = nodes[e.to];
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const mx = (x1 + x2) / 2;
    svg.append(h("g", { class: "edge" },
      h("path", { d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }),
      h("text", { x: mx, y: (y1 + y2) / 2 - 4, "text-anchor": "middle" }, e.label)));
  }
  for (const n of Object.values(nodes)) {
    svg.append(h("g", { class: n.external ? "node external" : "node" },
      h("rect", { x: n.x, y: n.y, width: W, height: H, rx: 6 }),
      h("text", { x: n.x + 10, y: n.y + 20 }, n.external ? `from outside: ${n.label}` : n.label),
      n.step ? h("text", { class: "counts", id: `counts-${n.id}`, x: n.x + 10, y: n.y + 38 }, countsLine(n.step)) : null));
  }
  return svg;
}

// ---------------------------------------------------------------- runs

const RUN_STATES = ["running", "compensating", "completed", "compensated", "failed", "timed_out", "cancelled"];

async function runsPage(params) {
  const app = await api("GET", "/v1/app");
  const page = await api("GET", `/v1/runs${query({ flow: params.flow, status: params.status, since: params.since, cursor: params.cursor, limit: 50 })}`);
  const form = filters("#/runs", [
    { name: "flow", label: "Flow", options: app.flows.map((f) => f.name) },
    { name: "status", label: "Status", options: RUN_STATES },
    { name: "since", label: "Since", placeholder: "1h, or RFC 3339", size: 12 },
  ], params);
  const rows = page.runs.map((r) => h("tr", {},
    h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, h("code", {}, r.id))),
    h("td", {}, r.flow), h("td", {}, badge(r.state)), h("td", {}, when(r.created_ms)),
    h("td", {}, r.error ? h("span", { class: "error" }, r.error) : "")));
  const next = page.next_cursor
    ? h("p", {}, h("a", { href: `#/runs${query({ ...params, cursor: page.next_cursor })}` }, "Next page →"))
    : null;
  show("Runs", form,
    rows.length ? table("Runs, newest first", ["run", "flow", "state", "started", "error"], rows, "runs") : h("p", { class: "note" }, "No runs match."),
    next);
  every(3000, async () => {
    if (params.cursor) return;
    const fresh = await api("GET", `/v1/runs${query({ flow: params.flow, status: params.status, since: params.since, limit: 50 })}`);
    if (JSON.stringify(fresh.runs) !== JSON.stringify(page.runs)) route();
  });
}

/** `e` placed at `left`% for `width`% (through the CSSOM: the page's
 * policy allows no inline style). */
function placed(e, left, width) {
  e.style.left = `${left.toFixed(2)}%`;
  e.style.width = `${width.toFixed(2)}%`;
  return e;
}

async function runPage(id) {
  const run = await api("GET", `/v1/runs/${encodeURIComponent(id)}`);
  const start = Date.parse(run.created);
  const end = run.finished ? Date.parse(run.finished) : Date.now();
  const span = Math.max(end - start, 1);
  const steps = Object.entries(run.steps)
    .sort(([, a], [, b]) => (a.started ? Date.parse(a.started) : Infinity) - (b.started ? Date.parse(b.started) : Infinity));
  const rows = steps.map(([sid, s]) => {
    const from = s.started ? Date.parse(s.started) - start : null;
    const to = s.started ? (s.finished ? Date.parse(s.finished) : end) - start : null;
    const bar = from === null ? h("span", { class: "note" }, "not started")
      : h("div", { class: "track", role: "img", "aria-label": `from ${ms(from)} to ${ms(to)} after the start` },
          placed(h("span", { class: `s-${s.state}` }), 100 * from / span, 100 * Math.max(to - from, 0) / span));
    return h("tr", { class: sid.includes("~undo") ? "undo" : null },
      h("th", { scope: "row" }, h("code", {}, sid), sid.includes("~undo") ? h("span", { class: "note" }, " compensation") : ""),
      h("td", {}, badge(s.state)), num(s.attempts), h("td", {}, ms(s.duration_ms)), h("td", { class: "bar" }, bar),
      h("td", {}, s.errors && s.errors.length ? h("ul", { class: "errors" }, s.errors.map((e) => h("li", {}, e)))
        : s.wakes ? `wakes ${when(s.wakes)}`
        : s.elements ? `${s.elements.settled} of ${s.elements.total} elements settled, ${s.elements.failed} failed`
        : (s.reason || "")));
  });
  const status = h("div", {});
  const act = (label, path, cls) => h("button", { type: "button", class: cls, onclick: async (ev) => {
    ev.target.disabled = true;
    try { await api("POST", path, { reason: "from the console" }); status.replaceChildren(message(`${label}: asked.`)); setTimeout(route, 500); }
    catch (e) { status.replaceChildren(message(`${label}: ${e.message}`, true)); ev.target.disabled = false; }
  } }, label);
  const live = ["running", "compensating"].includes(run.state);
  const actions = h("div", { class: "actions" },
    live ? act("Cancel", `/v1/runs/${encodeURIComponent(id)}/cancel`, "danger") : null,
    ["failed", "compensated", "timed_out", "cancelled"].includes(run.state) ? act("Redrive", `/v1/runs/${encodeURIComponent(id)}/redrive`) : null,
    h("a", { href: `#/trace/${encodeURIComponent(id)}` }, "Its events (causal tree)"));
  show(`Run ${id}`,
    h("dl", { class: "facts" },
      h("dt", {}, "flow"), h("dd", {}, run.flow),
      h("dt", {}, "state"), h("dd", { id: "run-state" }, badge(run.state)),
      h("dt", {}, "started"), h("dd", {}, when(run.created)),
      run.finished ? [h("dt", {}, "finished"), h("dd", {}, `${when(run.finished)} (${ms(run.duration_ms)})`)] : null,
      run.deployment ? [h("dt", {}, "deployment"), h("dd", {}, String(run.deployment))] : null,
      run.error ? [h("dt", {}, "error"), h("dd", { class: "error" }, run.error)] : null,
      run.cancelled ? [h("dt", {}, "cancelled"), h("dd", {}, `by ${run.cancelled.by} at ${when(run.cancelled.at)}${run.cancelled.reason ? `: ${run.cancelled.reason}` : ""}`)] : null,
      run.redrives && run.redrives.length ? [h("dt", {}, "redriven"), h("dd", {}, `${run.redrives.length} time(s)`)] : null),
    actions, status,
    h("h3", {}, "Timeline"),
    table("Each flow step: state, attempts, time, and errors; bars on the run's own time scale", ["step", "state", { t: "attempts", num: 1 }, "took", "when", "errors"], rows, "timeline"),
    run.signals && run.signals.length ? [h("h3", {}, "Signals"), table("Signals sent to the run", ["name", "state", "at", "step"],
      run.signals.map((s) => h("tr", {}, h("td", {}, s.name), h("td", {}, badge(s.state)), h("td", {}, when(s.at)), h("td", {}, s.step || ""))))] : null,
    h("h3", {}, "Input"), h("pre", {}, JSON.stringify(run.input, null, 2)));
  if (live) every(1500, () => route());
}

// ---------------------------------------------------------------- causal tree

async function tracePage(id) {
  const form = filters("#/trace", [{ name: "id", label: "Correlation id (a cascade's first event, or a run)", size: 40 }], { id });
  if (!id) return show("Causal tree", form, h("p", { class: "note" }, "Give the id of a cascade's first event, or of a run."));
  let events;
  try { events = await api("GET", `/v1/traces/${encodeURIComponent(id)}`); }
  catch (e) { return show("Causal tree", form, message(e.message, true)); }
  const byId = new Map(events.map((e) => [e.id, { e, children: [] }]));
  const roots = [];
  for (const n of byId.values()) {
    const parent = n.e.causationid && byId.get(n.e.causationid);
    (parent && parent !== n ? parent.children : roots).push(n);
  }
  const item = (n) => h("li", {},
    h("details", { open: true },
      h("summary", {}, h("strong", {}, n.e.type), " ", h("span", { class: "note" }, `from ${n.e.source}, ${when(n.e.time)}`)),
      h("dl", { class: "facts" }, h("dt", {}, "id"), h("dd", {}, h("code", {}, n.e.id)),
        n.e.troupecomponent ? [h("dt", {}, "component"), h("dd", {}, h("code", {}, n.e.troupecomponent))] : null),
      h("details", {}, h("summary", {}, "data"),
        h("pre", {}, JSON.stringify(n.e.data !== undefined ? n.e.data : n.e.data_base64, null, 2)))),
    n.children.length ? h("ul", {}, n.children.map(item)) : null);
  show(`Causal tree of ${id}`, form, h("p", { class: "note" }, `${events.length} events, each under the event that caused it.`),
    h("ul", { class: "tree" }, roots.map(item)));
}

// ---------------------------------------------------------------- dead letters

const CLASSES = ["rejected", "contract", "retry", "trap", "limit", "timeout"];

async function dlqPage(params) {
  const app = await api("GET", "/v1/app");
  const list = await api("GET", `/v1/dlq${query({ step: params.step, class: params.class, type: params.type, limit: 200 })}`);
  const status = h("div", {});
  const replay = (d) => h("button", { type: "button", class: "quiet", "aria-label": `Replay dead letter ${d.id}`, onclick: async (ev) => {
    ev.target.disabled = true;
    try {
      const r = await api("POST", `/v1/dlq/${encodeURIComponent(d.id)}/replay`);
      status.replaceChildren(message(`Replayed ${d.event_type} ${d.event_id} as a new delivery (${r.replayed}).`));
      ev.target.closest("tr").remove();
    } catch (e) { status.replaceChildren(message(`Replay of ${d.id}: ${e.message}`, true)); ev.target.disabled = false; }
  } }, "Replay");
  const rows = list.map((d) => h("tr", { "data-dlq": d.id },
    h("td", {}, h("a", { href: `#/dlq/${encodeURIComponent(d.id)}` }, h("code", {}, d.id))),
    h("td", {}, d.step), h("td", {}, badge(d.class)), h("td", {}, d.event_type), num(d.attempts),
    h("td", {}, when(d.time)), h("td", {}, d.message), h("td", {}, replay(d))));
  show("Dead letters", filters("#/dlq", [
    { name: "step", label: "Step", options: app.steps.map((s) => s.name) },
    { name: "class", label: "Class", options: CLASSES },
    { name: "type", label: "Event type", size: 18 },
  ], params), status,
  rows.length ? table("Dead letters, oldest first", ["id", "step", "class", "type", { t: "attempts", num: 1 }, "when", "why", ""], rows, "dlq")
    : h("p", { class: "note", id: "dlq-empty" }, "No dead letters match."));
}

async function deadLetterPage(id) {
  const d = await api("GET", `/v1/dlq/${encodeURIComponent(id)}`);
  show(`Dead letter ${id}`,
    h("dl", { class: "facts" }, h("dt", {}, "step"), h("dd", {}, d.step), h("dt", {}, "class"), h("dd", {}, badge(d.class)),
      h("dt", {}, "why"), h("dd", {}, d.message), h("dt", {}, "attempts"), h("dd", {}, String(d.attempts)), h("dt", {}, "when"), h("dd", {}, when(d.time))),
    h("p", {}, h("a", { href: `#/trace/${encodeURIComponent(d.event.correlationid || d.event_id)}` }, "Its cascade (causal tree)")),
    h("h3", {}, "Event"), h("pre", {}, JSON.stringify(d.event, null, 2)));
}

// ---------------------------------------------------------------- state

async function statePage(bucket) {
  const app = await api("GET", "/v1/app");
  const list = h("ul", {}, app.buckets.map((b) => h("li", {}, h("a", { href: `#/state/${encodeURIComponent(b)}` }, b))));
  if (!bucket) return show("State (read-only)", app.buckets.length ? list : h("p", { class: "note" }, "No step has a bucket."));
  const keys = (await api("GET", `/v1/kv/${encodeURIComponent(bucket)}`)).keys;
  const rows = await Promise.all(keys.slice(0, 200).map(async (k) => {
    const e = await api("GET", `/v1/kv/${encodeURIComponent(bucket)}/${encodeURIComponent(k)}`);
    return h("tr", {}, h("th", { scope: "row" }, h("code", {}, k)), num(e.version), h("td", {}, h("code", {}, e.value !== undefined ? e.value : `(base64) ${e.value_base64}`)));
  }));
  show(`Bucket ${bucket} (read-only)`, list,
    keys.length > 200 ? h("p", { class: "note" }, `The first 200 of ${keys.length} keys.`) : null,
    rows.length ? table(`Entries of ${bucket}`, ["key", { t: "version", num: 1 }, "value"], rows, "entries") : h("p", { class: "note" }, "Empty."));
}

// ---------------------------------------------------------------- routing

async function route() {
  clearInterval(timer);
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, q] = hash.split("?");
  const params = Object.fromEntries(new URLSearchParams(q || ""));
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const section = parts[0] || "";
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").replace(/^#\/?/, "");
    if (target === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  try {
    if (section === "") await appPage();
    else if (section === "runs" && parts[1]) await runPage(parts[1]);
    else if (section === "runs") await runsPage(params);
    else if (section === "trace") await tracePage(parts[1] || params.id);
    else if (section === "dlq" && parts[1]) await deadLetterPage(parts[1]);
    else if (section === "dlq") await dlqPage(params);
    else if (section === "state") await statePage(parts[1]);
    else show("Not found", h("p", {}, "No such page."), h("a", { href: "#/" }, "The app"));
  } catch (e) {
    if (e.status !== 401) show("Error", message(e.message, true));
  }
}

function keys(ev) {
  const t = ev.target;
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ["INPUT", "SELECT", "TEXTAREA"].includes(t.tagName)) return;
  const link = document.querySelector(`nav a[data-key="${ev.key}"]`);
  if (link) { ev.preventDefault(); location.hash = link.getAttribute("href"); return; }
  if (ev.key === "/") { const f = main().querySelector("input, select"); if (f) { ev.preventDefault(); f.focus(); } }
  else if (ev.key === "r") route();
  else if (ev.key === "?") document.querySelector("footer p").focus();
}

window.addEventListener("hashchange", () => { route().then(() => main().focus()); });
document.addEventListener("keydown", keys);
route();
