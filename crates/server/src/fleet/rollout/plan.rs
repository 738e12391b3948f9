//! The scheduling decision, a pure function: given a rollout, its members and the time, which
//! members time out or expire, whose requests are sent again, whether the rollout halts or
//! completes, whether the next wave starts, and which agents to ask now. No I/O and no clock
//! inside: the driver applies it, each member's event through the member transition and the
//! rollout's end through the rollout's.
//!
//! An infrastructure failure is never an agent's: a member silent past its timeout while the bus
//! or the store failed during its wait is sent its request again (same callback: the agent acts
//! once per callback) rather than timed out, and so is a member whose request this node does not
//! hold (another node asked it, and this one took the rollout over).

use edge_agent_wire::Callback;
use semver::Version;

use crate::model::failure::is_definite;
use crate::model::member::{transition, Member, MemberEvent, MemberState};
use crate::model::rollout::{Action, Rollout, RolloutState};

/// What the fleet looks like to the planner: which agents are connected, and at which version;
/// and what this node knows of the requests it sent and of the infrastructure's failures.
pub trait Fleet {
    fn connected(&self, agent_id: &str) -> bool;
    fn version(&self, agent_id: &str) -> Option<Version>;
    /// Whether this node holds the request with this callback (sends it again if its socket goes).
    fn tracked(&self, callback: &Callback) -> bool;
    /// What failed (the bus, the store) at `since` or later, in words, if anything did.
    fn trouble_since(&self, since: i64) -> Option<&'static str>;
}

/// Why a request is sent again when the node that sent it no longer drives the rollout.
pub const TAKEN_OVER: &str = "sent again by the node now driving the rollout";

/// What to do now.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Members (by index) that reach a final state, and the event that takes them there.
    pub finish: Vec<(usize, MemberEvent)>,
    /// Members (by index) in flight whose request is sent again, and why.
    pub resend: Vec<(usize, String)>,
    /// Members (by index) to ask, in the current wave.
    pub ask: Vec<usize>,
    /// The wave that starts now.
    pub next_wave: Option<u32>,
    /// The rollout ends: halted (with why) or completed.
    pub end: Option<(Action, Option<String>)>,
    /// What to tell the operator.
    pub events: Vec<String>,
}

impl Decision {
    /// Decides `event` for member `i`, and applies it to the planner's view of the members (every
    /// event the planner decides is at `now`: that is when they finish).
    fn finish(&mut self, state: &mut [MemberState], m: &Member, i: usize, event: MemberEvent) {
        let view = Member { state: state[i], ..m.clone() };
        if let Ok(next) = transition(&view, event.clone()) {
            state[i] = next.state;
            self.finish.push((i, event));
        }
    }
}

/// Decides the next step of `rollout` at `now` (milliseconds since the epoch).
pub fn plan(rollout: &Rollout, members: &[Member], now: i64, fleet: &dyn Fleet) -> Decision {
    let mut d = Decision::default();
    // The planner's view of the members' states, which its decisions change as it goes.
    let mut state: Vec<MemberState> = Vec::with_capacity(members.len());
    let timeout = rollout.strategy.timeout.as_millis() as i64;

    // Whatever the rollout's state, an agent asked and silent past its timeout is done with. One
    // that already runs the target version did upgrade: only its report was lost. One whose wait
    // the infrastructure broke is asked again, and so is one whose request this node never held.
    let mut requeued = Vec::new();
    for (i, m) in members.iter().enumerate() {
        state.push(m.state);
        let Some(asked) = m.asked_at.filter(|_| m.state == MemberState::InProgress) else { continue };
        if m.callback.as_ref().is_some_and(|cb| !fleet.tracked(cb)) {
            // This node cannot vouch for its wait: it was not driving, or not running.
            d.resend.push((i, TAKEN_OVER.to_string()));
            continue;
        }
        if now < asked + timeout {
            continue;
        }
        let on_target = fleet.version(&m.agent_id).as_ref() == Some(&rollout.version);
        match fleet.trouble_since(asked).filter(|_| !on_target) {
            Some(why) => requeued.push((i, why)),
            None => d.finish(&mut state, m, i, MemberEvent::TimeOut { on_target, at: now }),
        }
    }
    if !d.resend.is_empty() {
        d.events.push(format!("{}: {TAKEN_OVER}", plural(d.resend.len(), "request")));
    }
    if let Some((_, why)) = requeued.first() {
        d.events.push(format!("{} re-queued: {why}", plural(requeued.len(), "member")));
    }
    d.resend.extend(requeued.into_iter().map(|(i, why)| (i, why.to_string())));
    let pending_ones = |state: &[MemberState]| -> Vec<usize> {
        (0..state.len()).filter(|&i| state[i] == MemberState::Pending).collect()
    };
    if rollout.state != RolloutState::Active {
        // A rollout that ended with members never asked (a cancel cut short by a crash, say).
        if matches!(rollout.state, RolloutState::Halted | RolloutState::Cancelled) {
            let why = format!("the rollout was {} first", rollout.state.name());
            for i in pending_ones(&state) {
                d.finish(&mut state, &members[i], i, MemberEvent::Skip { why: why.clone(), at: now });
            }
        }
        return d;
    }
    if now >= rollout.deadline() {
        // The deadline is for members that stayed offline: a connected one waiting for its wave
        // is still asked.
        for i in pending_ones(&state).into_iter().filter(|&i| !fleet.connected(&members[i].agent_id)) {
            d.finish(&mut state, &members[i], i, MemberEvent::Expire { at: now });
        }
    }
    if let Some(why) = halt_reason(rollout, members, &state) {
        for i in pending_ones(&state) {
            let skip = MemberEvent::Skip { why: "the rollout halted first".into(), at: now };
            d.finish(&mut state, &members[i], i, skip);
        }
        d.events.push(format!("halted: {why}"));
        d.end = Some((Action::Halt, Some(why)));
        return d;
    }
    let pending = state.iter().filter(|s| **s == MemberState::Pending).count();
    let in_flight = state.iter().filter(|s| **s == MemberState::InProgress).count();
    if pending == 0 && in_flight == 0 {
        d.events.push("completed".into());
        d.end = Some((Action::Complete, None));
        return d;
    }

    let mut wave = rollout.wave;
    let in_wave = |w: u32| (0..members.len()).filter(move |&i| members[i].wave == Some(w));
    let assigned = in_wave(wave).count();
    let wave_done = assigned >= rollout.strategy.wave_size(wave) && in_wave(wave).all(|i| state[i].is_final());
    if wave_done && pending > 0 {
        // Those it finished now, it finished at `now`.
        let finished_now = d.finish.iter().any(|&(i, _)| members[i].wave == Some(wave));
        let last_finish = in_wave(wave)
            .filter_map(|i| members[i].finished_at)
            .chain(finished_now.then_some(now))
            .max()
            .unwrap_or(now);
        if now < last_finish + rollout.strategy.bake.as_millis() as i64 {
            return d;
        }
        wave += 1;
        d.next_wave = Some(wave);
        d.events.push(format!("wave {wave} started ({} agents)", rollout.strategy.wave_size(wave).min(pending)));
    }
    let in_window = rollout.strategy.window.as_ref().is_none_or(|w| w.contains(timestamp(now)));
    if !in_window {
        return d;
    }
    let room = rollout.strategy.wave_size(wave).saturating_sub(in_wave(wave).count());
    let slots = rollout.strategy.max_in_flight.saturating_sub(in_flight).min(room);
    d.ask = (0..members.len())
        .filter(|&i| state[i] == MemberState::Pending && fleet.connected(&members[i].agent_id))
        .take(slots)
        .collect();
    d
}

/// The first time after `now` at which time alone may change the plan of a rollout whose plan
/// at `now` was empty: a member's timeout, the deadline for offline members, the end of the
/// current wave's bake. None when nothing waits on the clock (a window opening is not among
/// these: the caller looks again within a second anyway).
pub fn next_due(rollout: &Rollout, members: &[Member], now: i64) -> Option<i64> {
    let timeout = rollout.strategy.timeout.as_millis() as i64;
    let bake = rollout.strategy.bake.as_millis() as i64;
    let mut due = None::<i64>;
    let mut at = |t: i64| {
        if t > now {
            due = Some(due.map_or(t, |d| d.min(t)));
        }
    };
    let mut pending = false;
    let mut baked_from = None::<i64>;
    for m in members {
        match m.state {
            MemberState::InProgress => at(m.asked_at.unwrap_or(now) + timeout),
            MemberState::Pending => pending = true,
            _ => {}
        }
        if m.wave == Some(rollout.wave) {
            baked_from = baked_from.max(m.finished_at);
        }
    }
    if pending && rollout.state == RolloutState::Active {
        at(rollout.deadline());
        if bake > 0 {
            at(baked_from.unwrap_or(now) + bake);
        }
    }
    due
}

/// `1 member`, `3 members`.
pub(crate) fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn timestamp(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Why the rollout must halt, if it must: a failed canary, more failures than allowed, or too
/// large a share of failures among the members that finished. When its maker retries transient
/// failures, only definite ones count (`model::failure`).
fn halt_reason(rollout: &Rollout, members: &[Member], state: &[MemberState]) -> Option<String> {
    let s = &rollout.strategy;
    let (mut failures, mut finished) = (0, 0);
    for (i, &st) in state.iter().enumerate() {
        let m = &members[i];
        let st = match st.is_failure() && s.transient_retried && !is_definite(st, m.reason.as_deref()) {
            // A transient failure, retried later: not the release's, and not counted at all.
            true => MemberState::Skipped,
            false => st,
        };
        if st.is_failure() && m.wave == Some(0) {
            let why = match (st, &m.reason) {
                (MemberState::Failed, Some(r)) => r.clone(),
                _ => st.name().to_string(),
            };
            return Some(format!("the canary {} failed: {why}", m.name));
        }
        failures += usize::from(st.is_failure());
        finished += usize::from(st.is_finished());
    }
    if let Some(max) = s.max_failures {
        if failures > max {
            return Some(format!("{failures} failed (at most {max} allowed)"));
        }
    }
    if finished >= s.min_finished.max(1) && (failures as f64) * 100.0 > s.max_failure_percent * finished as f64 {
        return Some(format!("{failures} of {finished} failed (threshold {}%)", s.max_failure_percent));
    }
    None
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
