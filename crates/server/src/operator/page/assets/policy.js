// edge-agent fleet page, the update policy view (#/policy): every group in order with its state,
// why, its window, counts by version and by state, the next action and the failures, updated live
// by `policy` events. Loaded before app.js, whose helpers ($, h, api, show, fact, when, notice)
// it uses when called.
"use strict";

function countsText(counts) {
  return Object.entries(counts || {}).map(([k, n]) => `${k}: ${n}`).join(", ") || "—";
}

// An agent's failure once: as its record tells it, else as the halt did.
function failuresOf(g) {
  const known = new Set(g.failures.map((f) => f.agentId));
  return [...g.failures, ...(g.halt ? g.halt.failures : []).filter((f) => !known.has(f.agentId))];
}

function failuresCell(g) {
  const all = failuresOf(g);
  if (!all.length) return "—";
  return h("ul", { class: "failures" }, all.map((f) =>
    h("li", {}, h("a", { href: "#/agent/" + f.agentId }, f.name), `: ${f.reason}`)));
}

function groupRow(g, i) {
  const next = g.next ? `${g.next.action} at ${when(g.next.at)}` : "—";
  return h("tr", { "data-group": g.name },
    h("td", {}, i + 1), h("td", { class: "name" }, g.name, h("br"), h("code", {}, g.implicit ? "(no group finds them)" : g.selector)),
    h("td", { class: "state" }, h("span", { class: "g-" + g.state }, g.state)), h("td", { class: "reason" }, g.reason),
    h("td", { class: "window" }, g.window || "any time"), h("td", { class: "versions" }, countsText(g.versions)),
    h("td", { class: "states" }, countsText(g.states)), h("td", { class: "next" }, next),
    h("td", { class: "failures" }, failuresCell(g)));
}

function renderPolicy(p) {
  $("#policy-none").hidden = !!p;
  $("#policy-facts").hidden = !p;
  $("#policy-table").hidden = !p;
  for (const b of ["#pol-suspend", "#pol-resume", "#pol-clear"]) $(b).disabled = !p;
  if (!p) return;
  const target = p.target + (p.resolvedFromLatest ? " (latest when set)" : "");
  $("#policy-facts").replaceChildren(...fact("Mode", p.mode, "pol-mode"), ...fact("Target", target, "pol-target"),
    ...fact("Set", when(p.targetSetAt)), ...fact("Agents", `${p.agents} (${p.unmanaged} left alone)`));
  $("#pol-suspend").disabled = p.mode !== "enabled";
  $("#pol-resume").disabled = p.mode === "enabled";
  $("#pol-clear").disabled = !p.groups.some((g) => g.state === "halted");
  $("#policy-table tbody").replaceChildren(...p.groups.map(groupRow));
}

async function policyView() {
  show("policy");
  const r = await api("policy");
  renderPolicy(r.policy);
}

function onPolicy(r) {
  if (!$("#policy").hidden) renderPolicy(r.policy);
}

async function policyAct(action) {
  const r = await api("policy/" + action, { method: "POST" });
  renderPolicy(r.policy);
}

function wirePolicy() {
  for (const [id, action] of [["#pol-suspend", "suspend"], ["#pol-resume", "resume"], ["#pol-clear", "halt-clear"]]) {
    $(id).addEventListener("click", () => policyAct(action).catch((e) => e instanceof SignedOut || notice(e.message)));
  }
}
