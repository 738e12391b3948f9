//! Table tests of the scheduling decision.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::model::strategy::{Strategy, Window};

#[derive(Default)]
struct TestFleet {
    offline: Vec<&'static str>,
    versions: HashMap<&'static str, &'static str>,
    /// Agents whose requests this node does not hold (it took the rollout over).
    untracked: Vec<&'static str>,
    /// The infrastructure failed at this time.
    trouble_at: Option<i64>,
}

impl Fleet for TestFleet {
    fn connected(&self, agent_id: &str) -> bool {
        !self.offline.contains(&agent_id)
    }
    fn version(&self, agent_id: &str) -> Option<Version> {
        self.versions.get(agent_id).map(|v| Version::parse(v).unwrap())
    }
    fn tracked(&self, callback: &Callback) -> bool {
        !self.untracked.iter().any(|a| callback.is_for(a))
    }
    fn trouble_since(&self, since: i64) -> Option<&'static str> {
        self.trouble_at.filter(|&at| at >= since).map(|_| "cluster bus unavailable")
    }
}

fn online() -> TestFleet {
    TestFleet::default()
}

const NAMES: [&str; 10] = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"];

fn rollout(strategy: Strategy) -> Rollout {
    Rollout {
        id: "r".into(),
        version: Version::new(2, 0, 0),
        state: RolloutState::Active,
        reason: None,
        strategy,
        selection: String::new(),
        created_at: 0,
        wave: 0,
        events: vec![],
    }
}

/// `n` members; `spec` sets (index, state, wave, finished_at) for some.
fn members(n: usize, spec: &[(usize, MemberState, u32, i64)]) -> Vec<Member> {
    let mut out: Vec<Member> = (0..n).map(|i| Member::new(NAMES[i], NAMES[i], false, 0)).collect();
    for &(i, state, wave, at) in spec {
        out[i].state = state;
        out[i].wave = Some(wave);
        out[i].asked_at = Some(at);
        out[i].callback = (state != MemberState::Pending).then(|| Callback::issue(NAMES[i]));
        out[i].finished_at = state.is_final().then_some(at);
        out[i].reason = (state == MemberState::Failed).then(|| "checksum mismatch".to_string());
    }
    out
}

use MemberState::{Failed, InProgress, Skipped, Succeeded, TimedOut};

/// The state each member the decision finishes ends in, by index (through the member transition).
fn finished(d: &Decision, m: &[Member]) -> Vec<(usize, MemberState)> {
    d.finish.iter().map(|(i, e)| (*i, transition(&m[*i], e.clone()).unwrap().state)).collect()
}

fn skipped(d: &Decision, m: &[Member]) -> Vec<usize> {
    finished(d, m).into_iter().filter(|(_, s)| *s == Skipped).map(|(i, _)| i).collect()
}

#[test]
fn the_canary_goes_alone_first() {
    let d = plan(&rollout(Strategy::default()), &members(5, &[]), 1000, &online());
    assert_eq!((d.ask, d.next_wave, d.end), (vec![0], None, None));
    let d = plan(&rollout(Strategy::default()), &members(5, &[(0, InProgress, 0, 1000)]), 2000, &online());
    assert_eq!(d, Decision::default(), "nothing more while the canary runs");
}

#[test]
fn waves_grow_by_the_factor_within_max_in_flight() {
    let done = members(10, &[(0, Succeeded, 0, 1000)]);
    let d = plan(&rollout(Strategy::default()), &done, 2000, &online());
    assert_eq!((d.next_wave, d.ask.clone()), (Some(1), vec![1, 2]), "wave 1 holds 1 x 2");
    let mut r = rollout(Strategy { canary: 2, growth: 3.0, max_in_flight: 4, ..Strategy::default() });
    r.wave = 1;
    let m = members(10, &[(0, Succeeded, 0, 1), (1, Succeeded, 0, 1), (2, InProgress, 1, 5)]);
    let d = plan(&r, &m, 10, &online());
    assert_eq!(d.ask, vec![3, 4, 5], "wave 1 holds 6; at most 4 in flight, one already is");
}

#[test]
fn a_failed_canary_halts_and_skips_everyone_else() {
    let m = members(4, &[(0, Failed, 0, 1000)]);
    let d = plan(&rollout(Strategy { max_failure_percent: 100.0, ..Strategy::default() }), &m, 2000, &online());
    let (action, why) = d.end.clone().unwrap();
    assert_eq!(action, Action::Halt);
    assert_eq!(why.unwrap(), "the canary a0 failed: checksum mismatch");
    assert_eq!(skipped(&d, &m).len(), 3);
    assert!(d.ask.is_empty());
}

#[test]
fn the_failure_threshold_halts_mid_rollout() {
    let mut r = rollout(Strategy { max_failure_percent: 20.0, ..Strategy::default() });
    r.wave = 2;
    let m = members(
        8,
        &[(0, Succeeded, 0, 1), (1, Succeeded, 1, 2), (2, Failed, 1, 2), (3, InProgress, 2, 3), (4, Failed, 2, 4)],
    );
    let d = plan(&r, &m, 5, &online());
    assert_eq!(d.end, Some((Action::Halt, Some("2 of 4 failed (threshold 20%)".into()))));
    assert_eq!(skipped(&d, &m), [5, 6, 7], "in-flight members finish; pending ones are skipped");
    let d = plan(&rollout(Strategy { max_failures: Some(0), ..Strategy::default() }), &members(3, &[]), 0, &online());
    assert_eq!(d.end, None, "no failure yet");
}

#[test]
fn offline_members_wait_and_expire_at_the_deadline() {
    let fleet = TestFleet { offline: vec!["a0", "a1"], ..TestFleet::default() };
    let d = plan(&rollout(Strategy::default()), &members(3, &[]), 1000, &fleet);
    assert_eq!(d.ask, vec![2], "the first connected member is the canary");
    let s = Strategy { offline_deadline: Duration::from_secs(60), ..Strategy::default() };
    let m = members(3, &[(2, Succeeded, 0, 10)]);
    let d = plan(&rollout(s), &m, 60_000, &fleet);
    assert_eq!(finished(&d, &m), [(0, MemberState::Expired), (1, MemberState::Expired)]);
    assert_eq!(d.end, Some((Action::Complete, None)));
    let m = members(4, &[(2, Succeeded, 0, 10)]);
    let d = plan(
        &rollout(Strategy { offline_deadline: Duration::from_secs(60), ..Strategy::default() }),
        &m,
        60_000,
        &fleet,
    );
    assert_eq!(d.finish.len(), 2, "the connected member waiting for its wave does not expire");
    assert_eq!(d.ask, vec![3]);
}

#[test]
fn bake_time_holds_the_next_wave() {
    let s = Strategy { bake: Duration::from_secs(10), ..Strategy::default() };
    let m = members(3, &[(0, Succeeded, 0, 1000)]);
    assert_eq!(plan(&rollout(s.clone()), &m, 5000, &online()), Decision::default());
    let d = plan(&rollout(s), &m, 11_000, &online());
    assert_eq!((d.next_wave, d.ask), (Some(1), vec![1, 2]));
}

#[test]
fn bake_time_counts_from_a_timeout_too() {
    let s = Strategy { bake: Duration::from_secs(30), max_failure_percent: 100.0, ..Strategy::default() };
    let mut r = rollout(s);
    r.wave = 1;
    let m = members(5, &[(0, Succeeded, 0, 0), (1, Succeeded, 1, 1_000), (2, InProgress, 1, 0)]);
    let d = plan(&r, &m, 45_000, &online());
    assert_eq!(finished(&d, &m), [(2, TimedOut)]);
    assert_eq!((d.next_wave, d.ask), (None, vec![]), "the bake starts when the last member of the wave finished");
}

#[test]
fn an_ended_rollout_skips_members_it_never_asked() {
    let mut r = rollout(Strategy::default());
    r.state = RolloutState::Cancelled;
    let m = members(3, &[(0, InProgress, 0, 1)]);
    let d = plan(&r, &m, 2, &online());
    assert_eq!(skipped(&d, &m), [1, 2]);
    assert_eq!(
        transition(&m[1], d.finish[0].1.clone()).unwrap().reason.as_deref(),
        Some("the rollout was cancelled first")
    );
    assert!(d.ask.is_empty());
}

#[test]
fn more_failures_than_allowed_halt() {
    let s = Strategy { max_failures: Some(1), max_failure_percent: 100.0, ..Strategy::default() };
    let mut r = rollout(s);
    r.wave = 1;
    let m = members(6, &[(0, Succeeded, 0, 1), (1, Failed, 1, 2), (2, Failed, 1, 3)]);
    let d = plan(&r, &m, 4, &online());
    assert_eq!(d.end, Some((Action::Halt, Some("2 failed (at most 1 allowed)".into()))));
}

#[test]
fn nobody_is_asked_outside_the_window() {
    let window = Window::daily(
        jiff::civil::time(2, 0, 0, 0),
        jiff::civil::time(4, 0, 0, 0),
        jiff::tz::TimeZone::get("Europe/Berlin").unwrap(),
        "Europe/Berlin".into(),
    );
    let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    let mut r = rollout(Strategy { window: Some(window), ..Strategy::default() });
    r.created_at = at("2026-11-30T00:00:00Z");
    // 01:30 UTC is 02:30 in Berlin in winter: inside; 03:30 UTC is 04:30: outside.
    assert_eq!(plan(&r, &members(2, &[]), at("2026-11-30T01:30:00Z"), &online()).ask, vec![0]);
    assert!(plan(&r, &members(2, &[]), at("2026-11-30T03:30:00Z"), &online()).ask.is_empty());
}

#[test]
fn silence_past_the_timeout_is_timed_out_unless_the_agent_runs_the_target() {
    let m = members(3, &[(0, InProgress, 0, 0), (1, InProgress, 0, 0)]);
    let versions = HashMap::from([("a1", "2.0.0"), ("a0", "1.0.0")]);
    let fleet = TestFleet { versions, ..TestFleet::default() };
    let mut r = rollout(Strategy { canary: 2, max_failure_percent: 100.0, ..Strategy::default() });
    r.state = RolloutState::Paused;
    let d = plan(&r, &m, 45_000, &fleet);
    assert_eq!(finished(&d, &m), [(0, TimedOut), (1, Succeeded)], "timeouts apply even while paused");
    assert!(d.ask.is_empty() && d.end.is_none(), "a paused rollout asks nobody");
    assert!(plan(&r, &m, 44_999, &fleet).finish.is_empty());
}

#[test]
fn a_rollout_with_every_member_final_is_completed() {
    let mut m = members(2, &[(0, Succeeded, 0, 1)]);
    m[1].state = MemberState::Already;
    let d = plan(&rollout(Strategy::default()), &m, 2, &online());
    assert_eq!(d.end, Some((Action::Complete, None)));
    let ended = Rollout { state: RolloutState::Completed, ..rollout(Strategy::default()) };
    assert_eq!(plan(&ended, &members(2, &[]), 0, &online()), Decision::default());
}

#[test]
fn silence_through_an_outage_is_sent_again_and_never_a_failure() {
    let m = members(4, &[(0, Succeeded, 0, 0), (1, InProgress, 1, 1000), (2, InProgress, 1, 1000)]);
    let r = Rollout { wave: 1, ..rollout(Strategy { max_failures: Some(0), ..Strategy::default() }) };
    let troubled = TestFleet { trouble_at: Some(20_000), versions: HashMap::from([("a2", "2.0.0")]), ..online() };
    let d = plan(&r, &m, 46_000, &troubled);
    assert_eq!(d.resend, vec![(1, "cluster bus unavailable".to_string())], "sent again, not timed out");
    assert_eq!(finished(&d, &m), [(2, Succeeded)], "one that runs the target did upgrade, outage or not");
    assert_eq!(d.end, None, "nothing counts against the rollout");
    assert_eq!(d.events, ["1 member re-queued: cluster bus unavailable"]);
    let before = TestFleet { trouble_at: Some(999), ..online() };
    let d = plan(&r, &m, 46_000, &before);
    let halted = [(1, TimedOut), (2, TimedOut), (3, Skipped)];
    assert_eq!(finished(&d, &m), halted, "an outage before the ask changes nothing");
    assert!(d.resend.is_empty() && d.end.is_some());
}

#[test]
fn requests_another_node_sent_are_sent_again_by_the_node_taking_over() {
    let m = members(3, &[(0, InProgress, 0, 1000), (1, InProgress, 0, 1000)]);
    let r = rollout(Strategy { canary: 2, ..Strategy::default() });
    let taken_over = TestFleet { untracked: vec!["a1"], ..online() };
    for now in [2000, 60_000] {
        let d = plan(&r, &m, now, &taken_over);
        assert_eq!(d.resend, vec![(1, TAKEN_OVER.to_string())], "at {now}: whether or not its wait is over");
        assert!(d.finish.iter().all(|(i, _)| *i != 1), "never timed out by a node that did not wait for it");
        assert_eq!(d.events[0], format!("1 request: {TAKEN_OVER}"));
    }
    assert!(plan(&r, &m, 2000, &online()).resend.is_empty(), "held here: nothing to send again");
}

#[test]
fn when_transient_failures_are_retried_only_definite_ones_halt() {
    let s = Strategy { transient_retried: true, ..Strategy::default() };
    let mut m = members(4, &[(0, TimedOut, 0, 1)]);
    let d = plan(&rollout(s.clone()), &m, 2, &online());
    assert_eq!((d.end, d.next_wave, d.ask.len()), (None, Some(1), 2), "a canary that timed out does not halt");
    m[0].state = Failed;
    m[0].reason = Some("Error during upgrading to version 'v2.0.0': download of http://r/a failed: reset".into());
    assert_eq!(plan(&rollout(s.clone()), &m, 2, &online()).end, None, "a failed download does not halt");
    m[0].reason = Some("Error during upgrading to version 'v2.0.0': self-check failed: exit status 3".into());
    let d = plan(&rollout(s), &m, 2, &online());
    let why = "the canary a0 failed: Error during upgrading to version 'v2.0.0': self-check failed: exit status 3";
    assert_eq!(d.end, Some((Action::Halt, Some(why.into()))));
}

/// A plan that was empty stays empty until `next_due`, and changes at it: the driver skips the
/// rollout until then (or until something else changes) without missing a step.
fn empty_until(r: &Rollout, m: &[Member], fleet: &TestFleet, now: i64) -> i64 {
    assert_eq!(plan(r, m, now, fleet), Decision::default(), "empty at {now}");
    let due = next_due(r, m, now).expect("something waits on the clock");
    assert_eq!(plan(r, m, due - 1, fleet), Decision::default(), "still empty just before {due}");
    assert_ne!(plan(r, m, due, fleet), Decision::default(), "changed at {due}");
    due
}

#[test]
fn an_empty_plan_is_due_again_when_time_alone_changes_it() {
    // The canary in flight since 1 s: its timeout (45 s) is what comes next.
    let r = rollout(Strategy::default());
    let m = members(3, &[(0, InProgress, 0, 1_000)]);
    assert_eq!(empty_until(&r, &m, &online(), 2_000), 46_000);

    // The canary succeeded at 5 s, with a bake of 10 s: the next wave at 15 s.
    let r = rollout(Strategy { bake: Duration::from_secs(10), ..Strategy::default() });
    let m = members(3, &[(0, Succeeded, 0, 5_000)]);
    assert_eq!(empty_until(&r, &m, &online(), 6_000), 15_000);

    // Every member offline: nothing happens before the deadline, when they expire.
    let r = rollout(Strategy { offline_deadline: Duration::from_secs(60), ..Strategy::default() });
    let m = members(3, &[]);
    let offline = TestFleet { offline: vec!["a0", "a1", "a2"], ..TestFleet::default() };
    assert_eq!(empty_until(&r, &m, &offline, 1_000), 60_000);

    // Nothing on the clock: a rollout that has ended, or whose members all finished.
    let mut ended = rollout(Strategy::default());
    ended.state = RolloutState::Completed;
    assert_eq!(next_due(&ended, &members(2, &[(0, Succeeded, 0, 1), (1, Succeeded, 0, 1)]), 5), None);
}

#[test]
fn an_idle_rollout_is_looked_at_again_when_the_roster_or_the_time_changes() {
    use crate::fleet::rollout::engine::Idle;
    let idle = Idle { roster: 7, until: 1_000 };
    assert!(idle.holds(999, 7));
    assert!(!idle.holds(1_000, 7), "its time came");
    assert!(!idle.holds(10, 8), "an agent connected or went");
}
