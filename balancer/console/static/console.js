// gitops-nodes web console: renders /-/status, follows /-/status/stream (server-sent events).
// Every value is set with textContent (never parsed as HTML); the page adds no data of its own.
"use strict";

const PAGE_SIZE = 50;
const ALIAS_PAGE_SIZE = 20;
const state = { doc: null, csrf: "", page: 0, aliasPage: 0, filter: "", node: null, source: null, shown: {} };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const badge = (status) => el("span", { class: `badge ${status}`, text: status });
const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(x < 0.01 && x > 0 ? 2 : 1)}%`);
const ms = (s) => (s === null || s === undefined ? "–" : s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms` : `${s.toFixed(2)} s`);
const rate = (r) => (r ? r.toFixed(r < 10 ? 1 : 0) : "0");
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const short = (id) => (id ? id.slice(0, 12) : "–");
const nodeLink = (name) => el("a", { href: `#node=${encodeURIComponent(name)}`, "data-key": `node:${name}`, text: name });

function table(caption, headers, rows) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col", class: h.num ? "num" : (h.small ? "hide-small" : null), text: h.label || h })));
  const body = rows.map((cells) => el("tr", { class: cells.rowClass || null },
    ...cells.map((c, i) => el("td", { class: headers[i].num ? "num" : (headers[i].small ? "hide-small" : null) }, c))));
  const t = el("table", {}, el("caption", { class: "muted", text: caption }), el("thead", {}, head), el("tbody", {}, ...body));
  return el("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption }, t);
}

function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [k, v] of pairs) dl.append(el("dt", { text: k }), el("dd", {}, v === null || v === undefined ? "–" : v));
  return dl;
}

// Make parent's children look like wanted (new nodes), keeping each element that has the
// same tag in the same place and changing only its attributes and text. Under traffic the
// figures change every half second: replacing the elements would lose a click whose press
// and release straddle a redraw, the text being selected, and the keyboard focus.
function morphChildren(parent, wanted) {
  const current = [...parent.childNodes];
  wanted.forEach((next, i) => {
    const old = current[i];
    if (!old) parent.append(next);
    else if (old.nodeName !== next.nodeName) parent.replaceChild(next, old);
    else if (old.nodeType === Node.TEXT_NODE) {
      if (old.nodeValue !== next.nodeValue) old.nodeValue = next.nodeValue;
    } else {
      for (const { name } of [...old.attributes]) if (!next.hasAttribute(name)) old.removeAttribute(name);
      for (const { name, value } of [...next.attributes]) if (old.getAttribute(name) !== value) old.setAttribute(name, value);
      morphChildren(old, [...next.childNodes]);
    }
  });
  for (const extra of current.slice(wanted.length)) extra.remove();
}

// Redraw a region only when what it shows changed, keeping keyboard focus.
function show(id, key, build) {
  const text = JSON.stringify(key);
  if (state.shown[id] === text) return;
  state.shown[id] = text;
  const focused = document.activeElement && document.activeElement.getAttribute("data-key");
  const region = $(id);
  morphChildren(region, [].concat(build()));
  if (focused) {
    const again = region.querySelector(`[data-key="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function splitBar(targets) {
  const total = targets.reduce((sum, t) => sum + t.weight, 0) || 1;
  const bar = el("div", { class: "split", "aria-hidden": "true" });
  targets.forEach((t, i) => {
    const part = el("span", { class: `c${i % 6}`, title: `${t.node} ${t.weight}` });
    part.style.width = `${(100 * t.weight) / total}%`;
    bar.append(part);
  });
  const legend = el("ul", { class: "legend" }, ...targets.map((t, i) =>
    el("li", { "data-node": t.node },
      el("span", { class: `swatch c${i % 6}`, "aria-hidden": "true" }),
      nodeLink(t.node), ` ${Math.round((100 * t.weight) / total)}% (weight ${t.weight}) `, badge(t.status))));
  return [bar, legend];
}

function renderAliases(doc) {
  const pages = Math.max(1, Math.ceil(doc.aliases.length / ALIAS_PAGE_SIZE));
  state.aliasPage = Math.max(0, Math.min(state.aliasPage, pages - 1));
  const aliases = doc.aliases.slice(state.aliasPage * ALIAS_PAGE_SIZE, (state.aliasPage + 1) * ALIAS_PAGE_SIZE);
  $("alias-pager").hidden = pages === 1;
  $("alias-page").textContent = `Aliases page ${state.aliasPage + 1} of ${pages}`;
  $("alias-prev").disabled = state.aliasPage === 0;
  $("alias-next").disabled = state.aliasPage >= pages - 1;
  show("alias-list", aliases, () => {
    if (!aliases.length) return el("p", { class: "muted", text: "No aliases." });
    return aliases.map((a) => el("div", { class: "card alias", "data-alias": a.name },
      el("h3", {}, a.name, a.access ? el("span", { class: "badge", text: "private" }) : null),
      ...splitBar(a.nodes)));
  });
  const rollout = doc.watch && doc.watch.rollout;
  show("rollout", rollout, () => {
    if (!rollout) return [];
    const parts = [el("h3", { text: `Rolling out ${short(rollout.revision)}: step ${rollout.step} of ${rollout.steps}` })];
    for (const [alias, routes] of Object.entries(rollout.aliases)) {
      const req = rollout.requests[alias] || {};
      const target = (rollout.targets || {})[alias] || [];
      parts.push(el("p", {}, el("strong", { text: alias }), ": now ",
        routes.map(([n, w]) => `${n}=${w}`).join(", "), ", target ", target.map(([n, w]) => `${n}=${w}`).join(", ")));
      parts.push(facts([
        ["Requests seen", `${req.seen ?? 0} of ${req.minRequests ?? 0} (${req.needed ?? 0} still needed)`],
        ["Error rate", `${pct(req.errorRate)} (bound ${pct(req.maxErrorRate)})`],
        ["Next judgement", rollout.nextJudgementAt ? `in ${Math.max(0, Math.round(rollout.nextJudgementAt - doc.watch.now))} s` : "–"],
      ]));
    }
    const back = el("button", { type: "button", class: "secondary", id: "rollback", "data-key": "rollback", text: "Roll back this rollout" });
    back.addEventListener("click", () => act("rollback", back));
    parts.push(el("div", { class: "actions" }, back));
    return el("div", { class: "card", role: "region", "aria-label": "Rollout in progress" }, ...parts);
  });
}

function visibleNodes(doc) {
  const f = state.filter.trim().toLowerCase();
  return f ? doc.nodes.filter((n) => n.name.toLowerCase().includes(f) || n.status.toLowerCase() === f) : doc.nodes;
}

function renderNodes(doc) {
  const nodes = visibleNodes(doc);
  const pages = Math.max(1, Math.ceil(nodes.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const slice = nodes.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  $("node-count").textContent = `${nodes.length} of ${doc.nodes.length} nodes`;
  $("page").textContent = `Page ${state.page + 1} of ${pages}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
  show("node-list", slice, () => {
    if (!slice.length) return el("p", { class: "muted", text: "No nodes." });
    const rows = [];
    for (const n of slice) {
      const healthy = n.instances.filter((i) => i.status === "Healthy").length;
      const t = n.traffic || {};
      const row = [el("span", { "data-node-row": n.name }, nodeLink(n.name)), badge(n.status),
        `${healthy}/${n.instances.length} (min ${n.minHealthy})`, rate(t.requestsPerSecond), pct(t.errorRate), ms(t.p50), ms(t.p99),
        String(n.instances.reduce((s, i) => s + i.inflight, 0))];
      row.rowClass = "node-row";
      rows.push(row);
      for (const i of n.instances) {
        const sub = [el("span", { class: "mono", text: `  ${n.name}/${i.instance}` }), badge(i.status), i.address, "", "", "", "", String(i.inflight)];
        rows.push(sub);
      }
    }
    return table("Nodes and their instances, with requests per second, error rate and latency over the last seconds",
      ["Node / instance", "Status", "Instances / address", { label: "req/s", num: true }, { label: "Errors", num: true },
        { label: "p50", num: true, small: true }, { label: "p99", num: true, small: true }, { label: "In flight", num: true }], rows);
  });
}

function reconcileFacts(r) {
  if (!r) return "–";
  return el("span", {}, badge(r.outcome), ` ${short(r.revision)} “${r.summary}”, ${r.reason}, ${r.actions} steps in ${r.seconds.toFixed(1)} s at ${when(r.startedAt)}`,
    r.error ? el("span", { class: "error", text: ` ${r.error}` }) : null);
}

function renderWatch(doc) {
  const w = doc.watch;
  $("watch-actions").hidden = !w;
  $("watch-history").hidden = !w;
  if (!w) return;
  const view = { ...w, now: undefined, history: undefined, rollout: undefined };
  show("watch-info", view, () => {
    const a = w.applied;
    return facts([
      ["Source", w.source],
      ["Source error", w.sourceError],
      ["Live commit", a ? `${short(a.id)} “${a.summary}”` : "nothing applied yet"],
      ["Author", a ? a.author : null],
      ["Committed", a ? when(a.committedAt) : null],
      ["Reconciling", w.reconciling ? "yes" : "no"],
      ["Reconciles", String(w.reconciles)],
      ["Last reconcile", reconcileFacts(w.lastReconcile)],
      ["Last error", w.lastError ? reconcileFacts(w.lastError) : "none"],
    ]);
  });
  const history = (w.history || []).slice().reverse();
  show("history", history, () => history.length
    ? table("The last reconciles, newest first", ["When", "Outcome", "Commit", "Reason", { label: "Steps", num: true }, { label: "Seconds", num: true }, "Error"],
      history.map((r) => [when(r.startedAt), badge(r.outcome), `${short(r.revision)} ${r.summary}`, r.reason, String(r.actions), r.seconds.toFixed(1), r.error || ""]))
    : el("p", { class: "muted", text: "No reconcile yet." }));
}

function renderNodePage(doc) {
  const name = state.node;
  const n = doc.nodes.find((x) => x.name === name);
  const detail = doc.node && doc.node.name === name ? doc.node : null;
  $("node-title").textContent = `Node ${name}`;
  show("node-summary", n || null, () => {
    if (!n) return el("p", { class: "notice", text: `The routing table has no node ${name}.` });
    const t = n.traffic || {};
    return facts([["Status", badge(n.status)], ["Minimum Healthy", String(n.minHealthy)],
      ["Requests/s", rate(t.requestsPerSecond)], ["Error rate", pct(t.errorRate)], ["p50 / p99", `${ms(t.p50)} / ${ms(t.p99)}`],
      ["Requests (total)", String(t.requests ?? 0)], ["Timeouts", `request ${n.timeouts.request} s, idle ${n.timeouts.idle} s`]]);
  });
  show("node-instances", n ? n.instances : null, () => n
    ? table(`Instances of ${name}`, ["Instance", "Status", "Address", { label: "In flight", num: true }, "Last error"],
      n.instances.map((i) => [i.instance, badge(i.status), i.address, String(i.inflight), i.lastError || ""]))
    : []);
  const spec = detail && detail.spec;
  show("node-spec", spec || null, () => spec
    ? facts([["File", `${spec.file} (document ${spec.document + 1})`], ["Image", spec.image], ["Port", String(spec.port)],
      ["Command", spec.command ? spec.command.join(" ") : null], ["Environment (names only)", spec.env.join(", ") || null],
      ["Instances", String(spec.instances)], ["Minimum Healthy", String(spec.minHealthy)], ["Maintenance limit", String(spec.maintenanceLimit)],
      ["Suspended", spec.suspended ? "yes" : "no"], ["CPUs", spec.cpus], ["Memory", spec.memory ? `${(spec.memory / 1048576).toFixed(0)} MiB` : null],
      ["Health check", `${spec.healthCheck.path} every ${spec.healthCheck.interval} s`], ["Telemetry path", spec.telemetryPath],
      ["Access", spec.access ? `keys ${spec.access.keys.join(", ")}` : "public"], ["Spec hash", short(spec.specHash)]])
    : el("p", { class: "muted", text: detail ? "No applied spec for this node (served by `gitops-nodes serve`, or not applied by this watch)." : "Loading…" }));
  const logs = detail ? { logs: detail.logs, error: detail.logsError } : null;
  show("node-logs", logs, () => {
    if (!detail) return el("p", { class: "muted", text: "Loading…" });
    if (detail.logsError) return el("p", { class: "notice", text: detail.logsError });
    if (!detail.logs) return el("p", { class: "muted", text: "No log lines here." });
    return el("pre", { class: "log", tabindex: "0", "aria-label": `Recent log lines of ${name}`, text: detail.logs.join("\n") || "(no lines yet)" });
  });
  const telemetry = detail ? detail.telemetry : null;
  show("node-telemetry", telemetry, () => telemetry && telemetry.length
    ? telemetry.map((s) => el("div", {}, el("h4", { text: `Instance ${s.instance}` }),
      s.error ? el("p", { class: "notice", text: s.error }) : el("pre", { class: "log", tabindex: "0", "aria-label": `Telemetry of ${s.instance}`, text: s.lines.join("\n") })))
    : el("p", { class: "muted", text: "This node declares no telemetry." }));
}

function render() {
  const doc = state.doc;
  if (!doc) return;
  const onNode = state.node !== null;
  $("overview").hidden = onNode;
  $("node-page").hidden = !onNode;
  if (onNode) renderNodePage(doc);
  else {
    renderAliases(doc);
    renderNodes(doc);
    renderWatch(doc);
  }
  const notice = $("notice");
  const problem = doc.lastReloadError || (doc.watch && doc.watch.sourceError);
  notice.hidden = !problem;
  notice.textContent = problem || "";
  document.body.dataset.generation = String(doc.generation);
}

function setConnection(live, text) {
  const c = $("connection");
  c.className = `connection ${live ? "live" : "lost"}`;
  c.textContent = text;
}

function follow() {
  if (state.source) state.source.close();
  const url = state.node === null ? "/-/status/stream" : `/-/status/stream?node=${encodeURIComponent(state.node)}`;
  const source = new EventSource(url);
  state.source = source;
  source.onopen = () => setConnection(true, "Live");
  source.onmessage = (event) => {
    state.doc = JSON.parse(event.data);
    setConnection(true, "Live");
    render();
  };
  source.onerror = async () => {
    setConnection(false, "Connection lost: retrying…");
    try {
      const answer = await fetch("/-/ui/session", { credentials: "same-origin" });
      if (answer.status === 401) window.location.assign("/-/ui/login");
    } catch (_) { /* the control plane is down: EventSource keeps retrying */ }
  };
}

async function act(name, button) {
  const result = name === "reconcile" ? $("reconcile-result") : null;
  button.disabled = true;
  try {
    const answer = await fetch(`/-/actions/${name}`, { method: "POST", credentials: "same-origin", headers: { "x-csrf-token": state.csrf } });
    const body = await answer.json();
    const text = answer.ok && body.accepted ? "Asked for: the page shows it as it happens." : `Refused: ${body.error || answer.status}`;
    if (result) result.textContent = text;
  } catch (error) {
    if (result) result.textContent = `Failed: ${error}`;
  } finally {
    button.disabled = false;
  }
}

function decoded(text) {
  // A hand-typed or cut link (#node=%) is no node rather than an error that stops the page.
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

function route() {
  const match = window.location.hash.match(/^#node=(.+)$/);
  const node = match ? decoded(match[1]) : null;
  if (node !== state.node) {
    state.node = node;
    state.shown = {};
    follow();
    if (node !== null) $("node-title").focus();
  }
  render();
}

async function start() {
  $("node-title").setAttribute("tabindex", "-1");
  try {
    const answer = await fetch("/-/ui/session", { credentials: "same-origin" });
    if (answer.status === 401) { window.location.assign("/-/ui/login"); return; }
    const session = await answer.json();
    state.csrf = session.csrf;
    $("logout").hidden = !session.login;
  } catch (_) { /* shown as a lost connection below */ }
  $("filter").addEventListener("input", (e) => { state.filter = e.target.value; state.page = 0; render(); });
  $("prev").addEventListener("click", () => { state.page -= 1; render(); });
  $("alias-prev").addEventListener("click", () => { state.aliasPage -= 1; render(); });
  $("alias-next").addEventListener("click", () => { state.aliasPage += 1; render(); });
  $("next").addEventListener("click", () => { state.page += 1; render(); });
  $("reconcile").addEventListener("click", (e) => act("reconcile", e.currentTarget));
  $("logout").addEventListener("click", async () => {
    await fetch("/-/ui/logout", { method: "POST", credentials: "same-origin", headers: { "x-csrf-token": state.csrf } });
    window.location.assign("/-/ui/login");
  });
  window.addEventListener("hashchange", route);
  state.node = undefined;
  route();
}

document.addEventListener("DOMContentLoaded", start);
