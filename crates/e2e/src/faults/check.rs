//! The checker: the invariants a fault run must keep, judged over its recorded history alone.
//! Each violation is one line naming the invariant and the evidence; an empty list is a pass.
//!
//! 1. `asked-once`: no agent asked twice within one rollout (two distinct callbacks; the same
//!    request sent again after a failover has the same callback).
//! 2. `one-final-state`: each rollout ended (completed, halted or cancelled) and every agent it
//!    selected is stored exactly once, in a final state.
//! 3. `answered`: every client call got an HTTP answer with a status the API defines for it (200,
//!    400 or 503), within its timeout plus the margin; a call made straight to a node that was
//!    killed while it ran is excused from having an answer.
//! 4. `not-bricked`: every real agent's process is alive and its installed binary is one of the two
//!    builds.
//! 5. `converged`: after the faults, every node shows every agent at its real version within the
//!    presence TTL (plus the margin) of the agents being back.
//! 6. `leader-continues`: after the rollout leader is killed while a rollout runs, a new holder
//!    (another node, or the killed one started again) holds the lease within the lease time (plus
//!    the margin), unless the store itself was down.
//! 7. `outage-not-failure`: every member of a rollout to a good build ends `succeeded` or
//!    `already`: an outage of a node, the store or the bus is never counted against the release.
//! 8. `nothing-lost`: every rollout, finished member (in the same state) and audit event the store
//!    showed while the faults ran is still there at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::history::{Event, Line, Phase};

const FINAL_MEMBER: [&str; 6] = ["succeeded", "already", "failed", "timed-out", "expired", "skipped"];
const FINAL_ROLLOUT: [&str; 3] = ["completed", "halted", "cancelled"];
/// Statuses a client call may end with: a result, the agent's error or a timeout, or the store or
/// bus being unavailable.
const ANSWERS: [u16; 3] = [200, 400, 503];

pub fn check(lines: &[Line]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((presence_ttl, lease, margin, builds)) = lines.iter().find_map(|l| match &l.ev {
        Event::Setup { presence_ttl_ms, lease_ms, margin_ms, builds, .. } => {
            Some((*presence_ttl_ms, *lease_ms, *margin_ms, builds.clone()))
        }
        _ => None,
    }) else {
        return vec!["history: no setup line".into()];
    };
    asked_once(lines, &mut out);
    final_states(lines, &mut out);
    answered(lines, margin, &mut out);
    not_bricked(lines, &builds, &mut out);
    converged(lines, presence_ttl + margin, &mut out);
    leader_continues(lines, lease + margin, &mut out);
    outage_not_failure(lines, &mut out);
    nothing_lost(lines, &mut out);
    out
}

fn outage_not_failure(lines: &[Line], out: &mut Vec<String>) {
    let Some(members) = lines.iter().rev().find_map(|l| match &l.ev {
        Event::Stored { members, .. } => Some(members),
        _ => None,
    }) else {
        return;
    };
    for m in members.iter().filter(|m| !["succeeded", "already"].contains(&m.state.as_str())) {
        let why = m.reason.as_deref().unwrap_or("no reason given");
        out.push(format!("outage-not-failure: rollout {}: agent {} {}: {why}", m.rollout, m.agent, m.state));
    }
}

fn asked_once(lines: &[Line], out: &mut Vec<String>) {
    let mut asked: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for l in lines {
        if let Event::Asked { agent, callback } = &l.ev {
            asked.entry(agent).or_default().insert(callback);
        }
    }
    // An agent a client asked too may have more requests, each with its own answer; the workload
    // keeps the two apart, and such an agent is not judged here.
    let called: BTreeSet<&str> = lines
        .iter()
        .flat_map(|l| match &l.ev {
            Event::Invoke { op, agents, .. } if op != "status" => agents.iter().map(String::as_str).collect(),
            _ => vec![],
        })
        .collect();
    for l in lines {
        let Event::Rollout { id, agents } = &l.ev else { continue };
        for agent in agents.iter().filter(|a| !called.contains(a.as_str())) {
            let callbacks = asked.get(agent.as_str()).map_or(0, BTreeSet::len);
            if callbacks > 1 {
                out.push(format!(
                    "asked-once: rollout {id} asked agent {agent} {callbacks} times: {:?}",
                    asked[agent.as_str()]
                ));
            }
        }
    }
}

fn final_states(lines: &[Line], out: &mut Vec<String>) {
    let stored = lines.iter().rev().find_map(|l| match &l.ev {
        Event::Stored { members, .. } => Some(members),
        _ => None,
    });
    let mut last_state: HashMap<&str, &str> = HashMap::new();
    for l in lines {
        if let Event::RolloutState { id, state, .. } = &l.ev {
            last_state.insert(id, state);
        }
    }
    for l in lines {
        let Event::Rollout { id, agents } = &l.ev else { continue };
        match last_state.get(id.as_str()) {
            Some(s) if FINAL_ROLLOUT.contains(s) => {}
            other => out.push(format!("one-final-state: rollout {id} did not end (last seen {other:?})")),
        }
        let Some(members) = stored else {
            out.push("one-final-state: no stored members at the end".into());
            continue;
        };
        let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in members.iter().filter(|m| &m.rollout == id) {
            seen.entry(&m.agent).or_default().push(&m.state);
        }
        for a in agents {
            match seen.get(a.as_str()).map(Vec::as_slice) {
                Some([s]) if FINAL_MEMBER.contains(s) => {}
                Some([s]) => out.push(format!("one-final-state: rollout {id}: agent {a} left in state {s}")),
                Some(states) => out.push(format!(
                    "one-final-state: rollout {id}: agent {a} stored {} times: {states:?}",
                    states.len()
                )),
                None => out.push(format!("one-final-state: rollout {id}: agent {a} is not a stored member")),
            }
        }
        for extra in seen.keys().filter(|k| !agents.iter().any(|a| a == *k)) {
            out.push(format!("one-final-state: rollout {id}: member {extra} was never selected"));
        }
    }
}

fn answered(lines: &[Line], margin: u64, out: &mut Vec<String>) {
    let mut ends: HashMap<u64, (u64, Option<u16>, &str)> = HashMap::new();
    for l in lines {
        if let Event::Complete { id, status, text } = &l.ev {
            ends.insert(*id, (l.t, *status, text));
        }
    }
    // When each node was killed.
    let kills: Vec<(u64, &str)> = lines
        .iter()
        .filter_map(|l| match &l.ev {
            Event::Fault { fault, phase: Phase::Start } if fault.starts_with("kill-") => {
                Some((l.t, fault.rsplit_once(" node ").map_or("", |(_, n)| n)))
            }
            _ => None,
        })
        .collect();
    for l in lines {
        let Event::Invoke { id, op, node, timeout_ms, .. } = &l.ev else { continue };
        match ends.get(id) {
            None => out.push(format!("answered: call {id} ({op} on {node}) never ended")),
            Some((t, None, _))
                if kills.iter().any(|(at, n)| (l.t..=*t).contains(at) && node == &format!("node {n}")) => {}
            Some((_, None, text)) => out.push(format!("answered: call {id} ({op} on {node}) got no answer: {text}")),
            Some((t, Some(status), text)) => {
                if !ANSWERS.contains(status) {
                    out.push(format!("answered: call {id} ({op} on {node}) answered {status}: {text}"));
                }
                let took = t.saturating_sub(l.t);
                if took > timeout_ms + margin {
                    out.push(format!("answered: call {id} ({op} on {node}) took {took} ms, past its {timeout_ms} ms"));
                }
            }
        }
    }
}

fn not_bricked(lines: &[Line], builds: &[String], out: &mut Vec<String>) {
    let mut any = false;
    for l in lines {
        let Event::RealAgent { agent, alive, binary } = &l.ev else { continue };
        any = true;
        if !alive {
            out.push(format!("not-bricked: real agent {agent} is not running"));
        }
        match binary {
            Some(v) if builds.contains(v) => {}
            other => out.push(format!("not-bricked: real agent {agent} has a binary of neither build ({other:?})")),
        }
    }
    if !any {
        out.push("not-bricked: no real agent was checked at the end".into());
    }
}

fn converged(lines: &[Line], bound: u64, out: &mut Vec<String>) {
    if !lines.iter().any(|l| l.ev == Event::Reconnected) {
        out.push("converged: the agents never were all back at their real versions".into());
        return;
    }
    let mut any = false;
    for l in lines {
        let Event::Converged { node, ms } = &l.ev else { continue };
        any = true;
        match ms {
            Some(ms) if *ms <= bound => {}
            Some(ms) => {
                out.push(format!("converged: node {node} agreed {ms} ms after the agents were back, past {bound} ms"))
            }
            None => out.push(format!("converged: node {node} never showed every agent at its real version")),
        }
    }
    if !any {
        out.push("converged: no node was checked".into());
    }
}

/// Faults during which no node can hold a lease: the store itself is down.
fn store_down(fault: &str) -> bool {
    fault.starts_with("postgres-")
}

fn leader_continues(lines: &[Line], bound: u64, out: &mut Vec<String>) {
    let end_of_rollouts = lines
        .iter()
        .filter_map(|l| match &l.ev {
            Event::RolloutState { state, .. } if FINAL_ROLLOUT.contains(&state.as_str()) => Some(l.t),
            _ => None,
        })
        .min()
        .unwrap_or(u64::MAX);
    let first_rollout = lines.iter().find(|l| matches!(l.ev, Event::Rollout { .. })).map_or(u64::MAX, |l| l.t);
    for l in lines {
        let Event::Fault { fault, phase: Phase::Start } = &l.ev else { continue };
        let Some(killed) = fault.strip_prefix("kill-leader node ").and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if l.t < first_rollout || l.t >= end_of_rollouts {
            continue;
        }
        let window = l.t..=l.t + bound;
        // Another fault that keeps every node from the store within the window excuses it.
        let excused = lines.iter().any(|o| match &o.ev {
            Event::Fault { fault, .. } => store_down(fault) && window.contains(&o.t),
            _ => false,
        }) || store_down_at(lines, l.t);
        if excused {
            continue;
        }
        // A new holder took the lease (the killed one cannot renew it: any new holder is another
        // node, or the killed node started again), or the rollout reached its end.
        let took_over = end_of_rollouts <= l.t + bound
            || lines.iter().any(|o| window.contains(&o.t) && o.t > l.t && matches!(o.ev, Event::Leader { .. }));
        if !took_over {
            out.push(format!("leader-continues: node {killed} was killed at {} ms holding the rollout lease; no new holder took it within {bound} ms", l.t));
        }
    }
}

/// Whether a store outage had started and not ended at `t`.
fn store_down_at(lines: &[Line], t: u64) -> bool {
    let mut down = BTreeSet::new();
    for l in lines.iter().take_while(|l| l.t <= t) {
        if let Event::Fault { fault, phase } = &l.ev {
            if store_down(fault) {
                match phase {
                    Phase::Start => down.insert(fault.clone()),
                    Phase::End => down.remove(fault),
                };
            }
        }
    }
    !down.is_empty()
}

fn nothing_lost(lines: &[Line], out: &mut Vec<String>) {
    let Some((rollouts, members, audit)) = lines.iter().rev().find_map(|l| match &l.ev {
        Event::Stored { rollouts, members, audit } => Some((rollouts, members, audit)),
        _ => None,
    }) else {
        out.push("nothing-lost: the store was not read at the end".into());
        return;
    };
    let rollouts: BTreeSet<&str> = rollouts.iter().map(String::as_str).collect();
    let audit: BTreeSet<&str> = audit.iter().map(String::as_str).collect();
    let members: HashMap<(&str, &str), &str> =
        members.iter().map(|m| ((m.rollout.as_str(), m.agent.as_str()), m.state.as_str())).collect();
    let (mut lost_rollouts, mut lost_members, mut lost_audit) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for l in lines {
        let Event::Persisted { rollouts: r, finished, audit: a } = &l.ev else { continue };
        lost_rollouts.extend(r.iter().filter(|id| !rollouts.contains(id.as_str())));
        for f in finished {
            let now = members.get(&(f.rollout.as_str(), f.agent.as_str()));
            if now != Some(&f.state.as_str()) {
                lost_members.insert(format!("{}/{} was {} at {} ms, now {now:?}", f.rollout, f.agent, f.state, l.t));
            }
        }
        lost_audit.extend(a.iter().filter(|id| !audit.contains(id.as_str())));
    }
    if !lost_rollouts.is_empty() {
        out.push(format!("nothing-lost: rollouts gone: {lost_rollouts:?}"));
    }
    for m in lost_members {
        out.push(format!("nothing-lost: member {m}"));
    }
    if !lost_audit.is_empty() {
        out.push(format!("nothing-lost: {} audit events gone: {lost_audit:?}", lost_audit.len()));
    }
}
