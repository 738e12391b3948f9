// edge-agent fleet page: hash routes (#/overview, #/agents, #/agent/<id>, #/policy) over /ui/api/,
// and a Server-Sent Events stream for what happens live. No framework, no build step. The policy
// view is in policy.js, loaded first.
"use strict";

const $ = (sel) => document.querySelector(sel);
let csrf = null;
let events = null;
const table = { q: "", state: "", version: "", notVersion: "", lastFailed: false, sort: "name", dir: "asc", page: 0, size: 50 };
const selected = new Set();
const pending = new Set();
const COLORS = ["#0b5cad", "#e07b00", "#2a9d3a", "#8e44ad", "#c0392b", "#16a6b6", "#7f6000", "#555"];

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) el.append(kid instanceof Node ? kid : String(kid ?? ""));
  return el;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function notice(text) {
  $("#notice").textContent = text || "";
}

class SignedOut extends Error {}

async function api(path, opts = {}) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const resp = await fetch("/ui/api/" + path, { credentials: "same-origin", ...opts, headers });
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    showSignIn(body.error || "Please sign in");
    throw new SignedOut(body.error);
  }
  if (!resp.ok) throw new Error(body.error || body.issue?.[0]?.details?.text || resp.statusText);
  return body;
}

function show(id) {
  for (const s of ["signin", "overview", "agents", "agent", "rollouts", "rollout", "policy", "audit"]) $("#" + s).hidden = s !== id;
  const signedIn = id !== "signin";
  $("#nav").hidden = !signedIn;
  $("#who").hidden = !signedIn;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.id === "nav-" + id) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function showSignIn(message) {
  csrf = null;
  if (events) events.close();
  events = null;
  show("signin");
  $("#signin-error").textContent = message && message !== "Please sign in" ? message : "";
  $("#client-id").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  const body = JSON.stringify({ client_id: $("#client-id").value, client_secret: $("#client-secret").value });
  const resp = await fetch("/ui/api/login", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    $("#signin-error").textContent = answer.error || "Sign-in failed";
    return;
  }
  $("#client-secret").value = "";
  started(answer);
}

// What each role may do; the server enforces it, the page only hides what would be refused.
const RANK = { viewer: 1, operator: 2, admin: 3 };

function started(session) {
  csrf = session.csrf;
  $("#who-id").textContent = `Signed in as ${session.name || session.clientId} (${session.role})`;
  const rank = RANK[session.role] || 0;
  for (const el of document.querySelectorAll("[data-role]")) el.hidden = rank < RANK[el.dataset.role];
  listen();
  route();
}

async function signOut() {
  try {
    await api("logout", { method: "POST" });
  } catch (e) {
    if (e instanceof SignedOut) return;
  }
  showSignIn("");
  notice("Signed out.");
}

function listen() {
  if (events) events.close();
  events = new EventSource("/ui/api/events");
  events.addEventListener("result", (e) => onResult(JSON.parse(e.data)));
  events.addEventListener("status", (e) => onStatus(JSON.parse(e.data)));
  events.addEventListener("rollout", (e) => onRollout(JSON.parse(e.data)));
  events.addEventListener("policy", (e) => onPolicy(JSON.parse(e.data)));
  events.addEventListener("session", () => showSignIn("Your session has expired or ended: please sign in again"));
  events.onerror = () => api("session").catch(() => {});
}

// An agent the server has never seen is "unknown" to $status; here it "never connected".
const STATE_LABELS = { unknown: "never connected" };

function stateCell(state) {
  return h("span", { class: "s-" + state }, STATE_LABELS[state] || state);
}

// The version of an agent that never connected is not known: a dash, not "unknown".
function versionText(state, version) {
  return state === "unknown" ? "—" : version;
}

// Since when it is in its state; for one that never connected, the date it was added.
function sinceText(state, since, added) {
  return state === "unknown" && !since ? "added " + when(added) : when(since);
}

function outcomeCell(outcome) {
  return outcome ? h("span", { class: "o-" + outcome }, outcome.replace("_", " ")) : "—";
}

async function overview() {
  show("overview");
  const o = await api("overview");
  $("#states").replaceChildren(h("div", { class: "card" }, h("b", {}, o.counts.total), "agents"),
    ...o.counts.states.map(([s, n]) => h("div", { class: "card", id: "count-" + s }, h("b", {}, n), stateCell(s))));
  const total = o.counts.total || 1;
  // Agents never seen have no version: the store counts them as "unknown".
  const parts = o.counts.versions.map(([v, n], i) =>
    ({ v: v === "unknown" ? STATE_LABELS.unknown : v, n, c: COLORS[i % COLORS.length] }));
  const bar = $("#versions-bar");
  bar.setAttribute("aria-label", parts.map((p) => `${p.v}: ${p.n} agents`).join(", "));
  bar.replaceChildren(...parts.map((p) =>
    h("span", { style: `width:${(100 * p.n) / total}%;background:${p.c}`, title: `${p.v}: ${p.n}` })));
  $("#versions-legend").replaceChildren(...parts.map((p) =>
    h("li", { "data-version": p.v }, h("span", { class: "swatch", style: "background:" + p.c }), `${p.v}: ${p.n}`)));
  $("#latest tbody").replaceChildren(...o.latest.map(({ name, result: r }) => h("tr", {},
    h("td", {}, h("a", { href: "#/agent/" + r.agentId }, name)), h("td", {}, when(r.at)),
    h("td", {}, r.requested || "latest"), h("td", {}, outcomeCell(r.outcome)), h("td", {}, r.text))));
}

function tableParams() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(table)) if (v !== "" && v !== false) p.set(k, v === true ? "1" : v);
  return p.toString();
}

function agentRow(a) {
  const box = h("input", { type: "checkbox", "aria-label": "Select " + a.name, checked: selected.has(a.id) });
  box.addEventListener("change", () => (box.checked ? selected.add(a.id) : selected.delete(a.id)));
  const ids = (a.identifiers || []).map((i) => (i.system ? i.system + "|" : "") + i.value).join(", ");
  return h("tr", { "data-id": a.id }, h("td", {}, box), h("td", {}, h("a", { href: "#/agent/" + a.id }, a.name)),
    h("td", {}, ids), h("td", { class: "state" }, stateCell(a.state)),
    h("td", { class: "version" }, versionText(a.state, a.version)),
    h("td", { class: "since" }, sinceText(a.state, a.since, a.added)), h("td", { class: "last" }, outcomeCell(a.lastOutcome)));
}

async function agents() {
  show("agents");
  const page = await api("agents?" + tableParams());
  $("#agents-table tbody").replaceChildren(...page.rows.map(agentRow));
  const first = page.total ? page.page * page.size + 1 : 0;
  const last = Math.min(page.total, (page.page + 1) * page.size);
  $("#page-info").textContent = `${first}–${last} of ${page.total}`;
  $("#prev").disabled = page.page === 0;
  $("#next").disabled = last >= page.total;
  for (const th of document.querySelectorAll("#agents-table th[data-sort]")) {
    if (th.dataset.sort === table.sort) th.setAttribute("aria-sort", table.dir === "asc" ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}

function fact(dt, dd, id) {
  return [h("dt", {}, dt), h("dd", { id }, dd)];
}

async function agent(id) {
  show("agent");
  const a = await api("agents/" + encodeURIComponent(id));
  $("#agent").dataset.id = id;
  $("#agent-title").textContent = a.agent.name;
  $("#agent-facts").replaceChildren(...fact("State", stateCell(a.state), "agent-state"),
    ...fact("Version", versionText(a.state, a.version), "agent-version"),
    ...fact("Since", sinceText(a.state, a.since, a.added), "agent-since"),
    ...fact("Last heard", when(a.lastHeard)), ...fact("Id", a.agent.id));
  $("#history tbody").replaceChildren(...a.history.map((r) => h("tr", {}, h("td", {}, when(r.at)),
    h("td", {}, r.from), h("td", {}, (r.requested || "latest") + (r.force ? " (force)" : "")),
    h("td", {}, outcomeCell(r.outcome)), h("td", {}, r.text))));
  $("#agent-output").textContent = "";
}

async function ask(what) {
  const id = $("#agent").dataset.id;
  $("#agent-output").textContent = `Asking the agent for its ${what}…`;
  try {
    const r = await api(`agents/${encodeURIComponent(id)}/${what}`);
    const text = what === "logs"
      ? r.logs.map((l) => `${l.timestamp || ""} ${l.level || ""} ${l.msg || JSON.stringify(l)}`).join("\n")
      : JSON.stringify(r.stats, null, 2);
    $("#agent-output").textContent = text || "(empty)";
  } catch (e) {
    if (!(e instanceof SignedOut)) $("#agent-output").textContent = e.message;
  }
}

async function upgrade(ids, version, force) {
  for (const id of ids) pending.add(id);
  const r = await api("upgrade", { method: "POST", body: JSON.stringify({ ids, version, force }) });
  for (const id of r.started) {
    const li = h("li", { "data-id": id, class: "pending" }, `${nameOf(id)}: upgrading to ${version || "latest"}…`);
    const old = document.querySelector(`#results li[data-id="${id}"]`);
    if (old) old.replaceWith(li);
    else $("#results").prepend(li);
  }
  return r;
}

function nameOf(id) {
  const link = document.querySelector(`#agents-table tr[data-id="${id}"] a`);
  if (link) return link.textContent;
  return $("#agent").dataset.id === id ? $("#agent-title").textContent : id;
}

function onResult({ result: r, state, version, since }) {
  pending.delete(r.agentId);
  const li = document.querySelector(`#results li[data-id="${r.agentId}"]`);
  if (li) {
    li.className = "";
    li.replaceChildren(`${nameOf(r.agentId)}: `, outcomeCell(r.outcome), ` — ${r.text}`);
  }
  if ($("#agent").dataset.id === r.agentId && !$("#agent").hidden) {
    $("#agent-result").replaceChildren(outcomeCell(r.outcome), " ", r.text);
    agent(r.agentId).catch(() => {});
  }
  const row = document.querySelector(`#agents-table tr[data-id="${r.agentId}"] .last`);
  if (row) row.replaceChildren(outcomeCell(r.outcome));
  onStatus({ id: r.agentId, state, version, since }, true);
}

// Each agent's newest status time told by the events: a result's status, read as the answer
// came, may be older than a status change told just before it (the agent's new version), or
// of the same millisecond; a status change is shown unless an older one than the newest told.
const toldSince = new Map();

function onStatus({ id, state, version, since }, read = false) {
  const told = toldSince.get(id);
  if (since && told && (since < told || (read && since === told))) return;
  if (since) toldSince.set(id, since);
  const row = document.querySelector(`#agents-table tr[data-id="${id}"]`);
  if (row) {
    row.querySelector(".state").replaceChildren(stateCell(state));
    row.querySelector(".version").textContent = versionText(state, version);
    if (since) row.querySelector(".since").textContent = when(since);
  }
  if ($("#agent").dataset.id === id && !$("#agent").hidden) {
    $("#agent-state").replaceChildren(stateCell(state));
    $("#agent-version").textContent = versionText(state, version);
    if (since) $("#agent-since").textContent = when(since);
  }
}

const ROLLOUT_FIELDS = { version: "#ro-version", canary: "#ro-canary", growth: "#ro-growth",
  maxInFlight: "#ro-max-in-flight", bake: "#ro-bake", maxFailures: "#ro-max-failures" };

function memberCounts(counts) {
  return Object.entries(counts).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(", ") || "none";
}

async function rollouts() {
  show("rollouts");
  const r = await api("rollouts");
  $("#rollouts-table tbody").replaceChildren(...r.rollouts.map((x) => h("tr", { "data-id": x.id },
    h("td", {}, h("a", { href: "#/rollout/" + x.id }, x.id.slice(0, 8))), h("td", {}, x.version),
    h("td", { class: "state" }, x.state), h("td", {}, x.wave), h("td", { class: "counts" }, memberCounts(x.counts)))));
  const more = $("#rollouts-more");
  more.hidden = r.total <= r.rollouts.length;
  more.textContent = `The newest ${r.rollouts.length} of ${r.total} rollouts; the others are in GET /fhir/R4/Rollout?_offset=${r.rollouts.length}.`;
}

async function rollout(id) {
  show("rollout");
  const r = await api("rollouts/" + encodeURIComponent(id));
  $("#rollout").dataset.id = id;
  $("#rollout-title").textContent = `Rollout to ${r.version}`;
  $("#rollout-facts").replaceChildren(...fact("State", r.state, "ro-state"), ...fact("Wave", r.wave, "ro-wave"),
    ...fact("Reason", r.reason || "—"), ...fact("Members", r.total), ...fact("Started", when(r.createdAt)),
    ...fact("Strategy", JSON.stringify(r.strategy)), ...fact("Id", r.id));
  const open = r.state === "active" || r.state === "paused";
  $("#ro-pause").disabled = r.state !== "active";
  $("#ro-resume").disabled = r.state !== "paused";
  $("#ro-cancel").disabled = !open;
  $("#rollout-counts").replaceChildren(...Object.entries(r.counts).map(([s, n]) =>
    h("div", { class: "card", id: "ro-count-" + s }, h("b", {}, n), s)));
  $("#rollout-failures tbody").replaceChildren(...r.failures.map((f) => h("tr", {},
    h("td", {}, h("a", { href: "#/agent/" + f.agentId }, f.name)), h("td", {}, f.state), h("td", {}, f.reason || ""))));
  // The status lists the first failures only; the counts say how many there are.
  const failed = (r.counts.failed || 0) + (r.counts["timed-out"] || 0);
  const moreFailed = $("#rollout-failures-more");
  moreFailed.hidden = failed <= r.failures.length;
  moreFailed.textContent = `… and ${failed - r.failures.length} more failed (the first ${r.failures.length} are listed; ` +
    "the Agents view's \"Last upgrade failed\" filter lists them).";
  $("#rollout-events").replaceChildren(...[...r.events].reverse().map((e) => h("li", {}, `${when(e.at)}: ${e.text}`)));
}

async function steer(action) {
  const id = $("#rollout").dataset.id;
  await api(`rollouts/${encodeURIComponent(id)}/${action}`, { method: "POST" });
  await rollout(id);
}

async function startRollout(ev) {
  ev.preventDefault();
  const params = { force: $("#ro-force").checked };
  for (const [k, sel] of Object.entries(ROLLOUT_FIELDS)) params[k] = $(sel).value.trim();
  const r = await api("rollouts?" + tableParams(), { method: "POST", body: JSON.stringify({ params }) });
  location.hash = "#/rollout/" + r.id;
}

function onRollout(x) {
  if (!$("#rollouts").hidden) rollouts().catch(() => {});
  if (!$("#rollout").hidden && $("#rollout").dataset.id === x.id) rollout(x.id).catch(() => {});
}

async function audit() {
  show("audit");
  const q = new URLSearchParams({ agent: $("#au-agent").value.trim(), actor: $("#au-actor").value.trim(),
    outcome: $("#au-outcome").value });
  const { events } = await api("audit?" + q);
  const ref = (r) => (r ? r.display ? `${r.display} (${r.reference})` : r.reference : "");
  $("#audit-table tbody").replaceChildren(...events.map((e) => h("tr", {},
    h("td", {}, when(e.recorded)), h("td", {}, e.subtype[0].code), h("td", {}, e.outcome),
    h("td", {}, ref(e.agent[0].who)), h("td", {}, e.agent[0].network ? e.agent[0].network.address : ""),
    h("td", {}, (e.entity || []).map((x) => ref(x.what)).join(", ")), h("td", {}, e.outcomeDesc))));
}

function route() {
  if (!csrf) return;
  notice("");
  const [, view, id] = location.hash.split("/");
  const go = view === "agents" ? agents() : view === "agent" && id ? agent(decodeURIComponent(id))
    : view === "rollouts" ? rollouts() : view === "rollout" && id ? rollout(decodeURIComponent(id))
    : view === "policy" ? policyView() : view === "audit" ? audit() : overview();
  go.catch((e) => e instanceof SignedOut || notice(e.message));
}

function wire() {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  $("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    Object.assign(table, { q: $("#q").value, state: $("#f-state").value, version: $("#f-version").value,
      notVersion: $("#f-not-version").value, lastFailed: $("#f-failed").checked, page: 0 });
    agents().catch((e) => e instanceof SignedOut || notice(e.message));
  });
  for (const th of document.querySelectorAll("#agents-table th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      table.dir = table.sort === th.dataset.sort && table.dir === "asc" ? "desc" : "asc";
      table.sort = th.dataset.sort;
      agents().catch((e) => e instanceof SignedOut || notice(e.message));
    });
  }
  $("#prev").addEventListener("click", () => { table.page--; route(); });
  $("#next").addEventListener("click", () => { table.page++; route(); });
  $("#select-all").addEventListener("change", (ev) => {
    for (const box of document.querySelectorAll("#agents-table tbody input[type=checkbox]")) {
      box.checked = ev.target.checked;
      box.dispatchEvent(new Event("change"));
    }
  });
  $("#upgrade-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!selected.size) return notice("Select at least one agent first.");
    upgrade([...selected], $("#upgrade-version").value.trim(), $("#upgrade-force").checked)
      .then((r) => notice(`Upgrade asked of ${r.started.length} agent(s); results appear below as they come.`))
      .catch((e) => e instanceof SignedOut || notice(e.message));
  });
  $("#agent-upgrade").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("#agent").dataset.id;
    $("#agent-result").replaceChildren(h("span", { class: "pending" }, "Upgrading…"));
    upgrade([id], $("#agent-upgrade-version").value.trim(), $("#agent-upgrade-force").checked)
      .catch((e) => e instanceof SignedOut || ($("#agent-result").textContent = e.message));
  });
  $("#rollout-form").addEventListener("submit", (ev) =>
    startRollout(ev).catch((e) => e instanceof SignedOut || notice(e.message)));
  for (const a of ["pause", "resume", "cancel"]) {
    $("#ro-" + a).addEventListener("click", () => steer(a).catch((e) => e instanceof SignedOut || notice(e.message)));
  }
  $("#audit-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    audit().catch((e) => e instanceof SignedOut || notice(e.message));
  });
  wirePolicy();
  $("#fetch-logs").addEventListener("click", () => ask("logs"));
  $("#fetch-stats").addEventListener("click", () => ask("stats"));
  window.addEventListener("hashchange", route);
}

wire();
api("session").then(started).catch((e) => e instanceof SignedOut || notice(e.message));
