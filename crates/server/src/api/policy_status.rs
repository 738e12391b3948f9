//! The update policy's status as JSON, for `GET Policy/$status`, the page and the command line:
//! every group in order with its state, why, its window, the next action and when, its agents
//! counted by version and by state, and its failures (the first hundred); and one agent's policy
//! state, for its `$status` (a `policy` parameter whose parts Medplum's clients ignore).

use std::collections::{BTreeMap, HashMap};

use semver::Version;

use serde_json::{json, Value};

use crate::fleet::policy::engine::Snapshot;
use crate::fleet::policy::plan::{iso, AgentStatus, GroupState};
use crate::fleet::policy::standing::{AgentFacts, Standing};
use crate::model::policy::{window_json, Group};

/// An agent's state with the policy, as `$status`, the page and `/metrics` name it.
pub fn code(s: &Standing) -> &'static str {
    match s {
        Standing::Unmanaged => "unmanaged",
        Standing::OnTarget => "on-target",
        Standing::Ahead => "ahead",
        Standing::Pinned(_) => "pinned-by-operator",
        Standing::Queued | Standing::Busy(_) | Standing::Reported(_) | Standing::Offline | Standing::Ready => "pending",
        Standing::Asked => "in-progress",
        Standing::Failed => "failed",
        Standing::Retrying(_) => "retrying",
    }
}

/// Every state [`code`] names, in the order they are shown.
pub const CODES: [&str; 8] =
    ["on-target", "pending", "in-progress", "retrying", "failed", "pinned-by-operator", "ahead", "unmanaged"];

/// Why the agent stands where it does, in words.
pub fn reason(snap: &Snapshot, a: &AgentFacts, st: &AgentStatus) -> String {
    let target = &snap.stored.policy.target;
    let group = a.group.map(|g| &snap.plan.groups[g]);
    let rollout = group.and_then(|g| g.rollout.clone()).unwrap_or_default();
    match &st.standing {
        Standing::Unmanaged => "no group finds it, and the policy leaves such agents alone".into(),
        Standing::OnTarget => format!("runs the target {target}"),
        Standing::Ahead => format!(
            "runs {}, newer than the target {target}: the policy does not downgrade (allowDowngrade is false)",
            a.version.as_ref().map(|v| v.to_string()).unwrap_or_default()
        ),
        Standing::Pinned(t) => format!(
            "an operator's $upgrade asked for {t} since the target was set: left alone until the target changes"
        ),
        Standing::Queued => format!("queued in rollout {rollout}"),
        Standing::Asked => format!("asked in rollout {rollout}"),
        Standing::Busy(id) => format!("in rollout {id}: asked once that rollout is done with it"),
        Standing::Failed => failure(a),
        Standing::Retrying(at) => format!("{}; asked again at {}", failure(a), iso(*at)),
        Standing::Reported(_) => format!("reported success; waiting for it to report {target}"),
        Standing::Offline => format!("offline: asked when it connects{}", waiting(group.map(|g| g.reason.as_str()))),
        Standing::Ready => match (st.waiting, group) {
            (Some(GroupState::Canary | GroupState::Rolling), _) => "asked in its group's next rollout".into(),
            (_, Some(g)) => g.reason.clone(),
            _ => String::new(),
        },
    }
}

fn waiting(group_reason: Option<&str>) -> String {
    group_reason.map(|r| format!(" (its group: {r})")).unwrap_or_default()
}

fn failure(a: &AgentFacts) -> String {
    let r = a.record.as_ref();
    let n = r.map_or(0, |r| r.failures);
    let why = r.and_then(|r| r.reason.clone()).unwrap_or_else(|| "failed".into());
    format!("attempt {n} failed: {why}")
}

/// One agent's policy state: `{group, state, reason, retryAt}`, None when no policy is set.
pub fn agent_json(snap: &Snapshot, agent_id: &str) -> Option<Value> {
    let &i = snap.index.get(agent_id)?;
    let (a, st) = (&snap.facts[i], &snap.plan.agents[i]);
    let mut v = json!({
        "group": a.group.map(|g| snap.stored.policy.groups[g].name.clone()),
        "state": code(&st.standing),
        "reason": reason(snap, a, st),
        "target": snap.stored.policy.target.to_string(),
    });
    if let Standing::Retrying(at) = st.standing {
        v["retryAt"] = json!(iso(at));
    }
    Some(v)
}

/// [`agent_json`] as a `Parameters` part (`$status`).
pub fn agent_part(v: &Value) -> Value {
    let mut parts = vec![];
    for (name, ty) in [
        ("group", "valueString"),
        ("state", "valueCode"),
        ("reason", "valueString"),
        ("target", "valueString"),
        ("retryAt", "valueInstant"),
    ] {
        if let Some(text) = v[name].as_str() {
            parts.push(json!({"name": name, ty: text}));
        }
    }
    json!({"name": "policy", "part": parts})
}

/// At most this many failures are listed per group (the counts by state have them all).
const MAX_LISTED: usize = 100;

/// A group's agents counted, in one pass over the fleet.
#[derive(Default)]
struct Tally<'a> {
    versions: HashMap<Option<&'a Version>, usize>,
    states: BTreeMap<&'static str, usize>,
    failures: Vec<Value>,
}

fn tallies(snap: &Snapshot) -> Vec<Tally<'_>> {
    let mut out: Vec<Tally> = snap.stored.policy.groups.iter().map(|_| Tally::default()).collect();
    for (a, st) in snap.facts.iter().zip(&snap.plan.agents) {
        let Some(t) = a.group.and_then(|g| out.get_mut(g)) else { continue };
        *t.versions.entry(a.version.as_ref()).or_default() += 1;
        *t.states.entry(code(&st.standing)).or_default() += 1;
        if st.standing == Standing::Failed && t.failures.len() < MAX_LISTED {
            t.failures.push(json!({"agentId": &*a.id, "name": &*a.name, "reason": failure(a), "kind": "definite"}));
        }
    }
    out
}

/// The status of the whole policy.
pub fn status_json(snap: &Snapshot) -> Value {
    let s = &snap.stored;
    let groups: Vec<Value> =
        tallies(snap).into_iter().enumerate().map(|(g, t)| group_json(snap, g, &s.policy.groups[g], t)).collect();
    let unmanaged = snap.plan.agents.iter().filter(|a| a.standing == Standing::Unmanaged).count();
    json!({
        "mode": s.policy.mode.name(),
        "target": s.policy.target.to_string(),
        "resolvedFromLatest": s.from_latest,
        "allowDowngrade": s.policy.allow_downgrade,
        "generation": s.generation,
        "targetSetAt": iso(s.set_at),
        "now": iso(snap.now),
        "agents": snap.facts.len(),
        "unmanaged": unmanaged,
        "groups": groups,
    })
}

fn group_json(snap: &Snapshot, g: usize, group: &Group, t: Tally<'_>) -> Value {
    let status = &snap.plan.groups[g];
    let run = &snap.plan.run.groups[g];
    let versions: BTreeMap<String, usize> =
        t.versions.into_iter().map(|(v, n)| (v.map_or("unknown".into(), |v| v.to_string()), n)).collect();
    let mut v = json!({
        "name": group.name,
        "selector": group.selector,
        "implicit": group.query.is_none(),
        "state": status.state.name(),
        "reason": status.reason,
        "window": group.window.as_ref().map(|w| w.describe()),
        "windowSpec": group.window.as_ref().map(window_json),
        "rollout": status.rollout,
        "next": status.next.as_ref().map(|(what, at)| json!({"action": what, "at": iso(*at)})),
        "startedAt": run.started_at.map(iso),
        "convergedAt": run.converged_at.map(iso),
        "agents": t.states.values().sum::<usize>(),
        "versions": versions,
        "states": t.states,
        "failures": t.failures,
    });
    if let Some(h) = &run.halt {
        let listed: Vec<_> = h.failures.iter().take(MAX_LISTED).collect();
        v["halt"] = json!({"reason": h.reason, "at": iso(h.at), "rollout": h.rollout, "failures": listed});
    }
    v
}
