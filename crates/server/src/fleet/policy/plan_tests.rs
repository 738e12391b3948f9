//! Table tests of the policy's decision, with the time passed in: group order and waits, windows
//! across midnight and across DST in a named zone, halts and their clearing, late agents, the
//! retry schedule, definite and transient failures, agents pinned by an operator, suspension.

use std::sync::Arc;
use std::time::Duration;

use edge_agent_wire::Target;
use semver::Version;

use super::*;
use crate::model::failure::FailureKind;
use crate::model::member::MemberState;
use crate::model::policy::{Group, Policy, Unmatched};
use crate::model::policy_run::{fold, Attempt, GroupRun, Record};
use crate::model::strategy::Strategy;
use crate::model::window::{Days, Window};

const H: i64 = 3_600_000;

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn group(name: &str, wait_hours: u64, window: Option<Window>) -> Group {
    Group {
        name: name.into(),
        selector: format!("name={name}-"),
        query: Some(Default::default()),
        window,
        wait_after_previous: Duration::from_secs(wait_hours * 3600),
        strategy: Strategy { transient_retried: true, ..Strategy::default() },
    }
}

/// `start` for `hours` in `zone`, on `days`.
fn window(start: &str, hours: i64, zone: &str, days: Days) -> Window {
    let start = jiff::civil::Time::strptime("%H:%M", start).unwrap();
    let end = start.wrapping_add(jiff::SignedDuration::from_hours(hours));
    Window { start, end, zone: jiff::tz::TimeZone::get(zone).unwrap(), zone_name: zone.into(), days }
}

fn stored(groups: Vec<Group>) -> Stored {
    let policy = Policy {
        mode: Mode::Enabled,
        target: Version::new(2, 0, 0),
        allow_downgrade: false,
        unmatched: Unmatched::Leave,
        groups,
    };
    Stored { policy, generation: 1, set_at: 0, clears: 0, from_latest: false, revision: 1 }
}

fn agent(id: &str, group: usize, version: &str) -> AgentFacts {
    AgentFacts {
        id: id.into(),
        name: id.into(),
        group: Some(group),
        connected: true,
        version: Some(Version::parse(version).unwrap()),
        status_at: Some(0),
        record: None,
        pinned: None,
        member: None,
        busy: None,
    }
}

fn rollout(id: &str, state: RolloutState, wave: u32, in_flight: usize) -> Option<GroupRollout> {
    Some(GroupRollout { id: id.into(), state, wave, in_flight, reason: None, failures: vec![] })
}

/// Runs the planner.
fn decide(s: &Stored, run: &Run, rollouts: &[Option<GroupRollout>], agents: &[AgentFacts], now: i64) -> Plan {
    let mut all = rollouts.to_vec();
    all.resize(s.policy.groups.len(), None);
    plan(&Input { stored: s, run, rollouts: &all, strays: &[], agents, now })
}

fn states(p: &Plan) -> Vec<GroupState> {
    p.groups.iter().map(|g| g.state).collect()
}

fn run_with(s: &Stored, f: impl Fn(&mut Run)) -> Run {
    let mut run = Run::default().aligned(s);
    f(&mut run);
    run
}

use GroupState::*;

#[test]
fn groups_go_in_order_each_after_the_previous_converged_and_its_wait() {
    let s = stored(vec![group("dev", 0, None), group("staging", 0, None), group("prod", 24, None)]);
    let fleet = [agent("d", 0, "1.0.0"), agent("s", 1, "1.0.0"), agent("p", 2, "1.0.0")];
    let p = decide(&s, &Run::default(), &[], &fleet, 0);
    assert_eq!(states(&p), [Canary, WaitingForPrevious, WaitingForPrevious]);
    assert_eq!(p.actions, [Action::Start { group: 0, agents: vec![0] }]);
    assert_eq!(p.groups[1].reason, "waiting for dev to converge");
    assert_eq!(p.agents[1].waiting, Some(WaitingForPrevious));

    // dev is done: staging starts at once; prod waits for staging.
    let mut done = fleet.clone();
    done[0].version = Some(Version::new(2, 0, 0));
    let run = run_with(&s, |r| r.groups[0].started_at = Some(0));
    let p = decide(&s, &run, &[], &done, 10);
    assert_eq!(states(&p), [Converged, Canary, WaitingForPrevious]);
    assert_eq!(p.run.groups[0].converged_at, Some(10));
    assert_eq!(p.actions, [Action::Start { group: 1, agents: vec![1] }]);

    // staging converged at 100: prod waits 24 h from then.
    done[1].version = Some(Version::new(2, 0, 0));
    let run = run_with(&s, |r| {
        r.groups[0] = GroupRun { started_at: Some(0), converged_at: Some(10), ..r.groups[0].clone() };
        r.groups[1] = GroupRun { started_at: Some(10), converged_at: Some(100), ..r.groups[1].clone() };
    });
    let p = decide(&s, &run, &[], &done, 100 + 23 * H);
    assert_eq!(states(&p), [Converged, Converged, WaitingDelay]);
    assert_eq!(p.groups[2].reason, "waiting 24h after staging converged");
    assert_eq!(p.groups[2].next, Some(("start".to_string(), 100 + 24 * H)));
    assert!(p.actions.is_empty());
    let p = decide(&s, &run, &[], &done, 100 + 24 * H);
    assert_eq!(states(&p), [Converged, Converged, Canary]);
    assert_eq!(p.run.groups[2].started_at, Some(100 + 24 * H));
}

#[test]
fn a_group_rolls_and_converges_with_its_rollout() {
    let s = stored(vec![group("dev", 0, None), group("prod", 0, None)]);
    let mut fleet = [agent("d0", 0, "1.0.0"), agent("d1", 0, "1.0.0"), agent("p", 1, "1.0.0")];
    fleet[0].member = Some(MemberState::InProgress);
    fleet[1].member = Some(MemberState::Pending);
    let run = run_with(&s, |r| (r.groups[0].started_at, r.groups[0].rollout) = (Some(0), Some("r1".into())));
    let p = decide(&s, &run, &[rollout("r1", RolloutState::Active, 0, 1)], &fleet, 5);
    assert_eq!(states(&p), [Canary, WaitingForPrevious]);
    assert_eq!((p.agents[0].standing.clone(), p.agents[1].standing.clone()), (Standing::Asked, Standing::Queued));
    assert!(p.actions.is_empty(), "nothing new while the rollout runs");
    let p = decide(&s, &run, &[rollout("r1", RolloutState::Active, 1, 1)], &fleet, 5);
    assert_eq!((states(&p)[0], p.groups[0].reason.as_str()), (Rolling, "rollout r1: wave 1"));

    // It completed: its results are recorded first, and the group waits for the records.
    let (mut done, completed) = (fleet.clone(), rollout("r1", RolloutState::Completed, 1, 0));
    for a in &mut done[..2] {
        a.member = None;
    }
    let p = decide(&s, &run, std::slice::from_ref(&completed), &done, 6);
    assert_eq!(p.actions, [Action::Fold { group: 0, rollout: "r1".into() }]);
    assert_eq!((states(&p)[0], p.run.groups[0].rollout.clone()), (Rolling, None));
    // Recorded: both said they succeeded, one has come back on the target, the other not yet.
    let record = Record {
        agent_id: "d1".into(),
        generation: 1,
        failures: 0,
        last: Attempt::Succeeded,
        reason: None,
        at: 6,
        retry_at: None,
        rollout: "r1".into(),
    };
    done[0].version = Some(Version::new(2, 0, 0));
    done[1].record = Some(Arc::new(record));
    let p = decide(&s, &p.run, &[], &done, 7);
    assert_eq!(p.agents[1].standing, Standing::Reported(6));
    assert_eq!(states(&p), [Rolling, WaitingForPrevious], "not converged before every agent reported the target");
    assert_eq!(p.groups[0].reason, "waiting for 1 agent that reported success to report 2.0.0");
    assert_eq!(p.groups[0].next, Some(("converge without them".to_string(), 6 + REPORTED_GRACE_MS)));
    assert_eq!(p.run.groups[0].converged_at, None);
    let mut back = done.clone();
    back[1].version = Some(Version::new(2, 0, 0));
    let p2 = decide(&s, &p.run, &[], &back, 8);
    assert_eq!(states(&p2), [Converged, Canary]);
    // One that never comes back (its host went off, or its new version never connected) holds
    // the group for the grace only.
    done[1].connected = false;
    let p = decide(&s, &p.run, &[], &done, 6 + REPORTED_GRACE_MS - 1);
    assert_eq!(states(&p), [Rolling, WaitingForPrevious]);
    let p = decide(&s, &p.run, &[], &done, 6 + REPORTED_GRACE_MS);
    assert_eq!(states(&p), [Converged, Canary]);
}

#[test]
fn windows_across_midnight_and_dst_in_a_named_zone() {
    // Fridays and Saturdays, 23:30 for 3 hours, Europe/Berlin. 2026-03-28 is a Saturday, and the
    // clocks go from 02:00 to 03:00 that night: the opening lasts 3 hours all the same.
    let w =
        window("23:30", 3, "Europe/Berlin", Days::of(&[jiff::civil::Weekday::Friday, jiff::civil::Weekday::Saturday]));
    let s = stored(vec![group("night", 0, Some(w))]);
    let fleet = [agent("a", 0, "1.0.0")];
    let table = [
        ("2026-03-27T22:29:00Z", false), // Friday 23:29 CET
        ("2026-03-27T22:30:00Z", true),  // Friday 23:30 CET
        ("2026-03-28T01:29:00Z", true),  // Saturday 02:29 CET, still Friday's opening
        ("2026-03-28T01:30:00Z", false), // Saturday 02:30 CET: closed
        ("2026-03-28T22:30:00Z", true),  // Saturday 23:30 CET
        ("2026-03-29T00:59:00Z", true),  // Sunday 03:59 CEST (the clocks went forward at 01:00 UTC)
        ("2026-03-29T01:30:00Z", false), // Sunday 03:30 UTC+2 is 3 hours after 23:30 CET: closed
        ("2026-03-29T22:00:00Z", false), // Sunday night: not a window day
    ];
    for (at, open) in table {
        let p = decide(&s, &Run::default(), &[], &fleet, ms(at));
        assert_eq!(p.groups[0].state == Canary, open, "{at}: {:?}", p.groups[0]);
        if !open {
            assert_eq!(p.groups[0].state, WaitingForWindow);
            assert!(p.actions.is_empty(), "{at}: nobody is asked outside the window");
        }
    }
    let p = decide(&s, &Run::default(), &[], &fleet, ms("2026-03-29T22:00:00Z"));
    assert_eq!(p.groups[0].next, Some(("ask 1 agent".to_string(), ms("2026-04-03T21:30:00Z"))), "next Friday, CEST");
    assert_eq!(p.groups[0].reason, "outside its window (23:30-02:30 Europe/Berlin on fri, sat)");
}

#[test]
fn a_rollout_is_paused_when_its_window_closes_and_resumed_when_it_opens() {
    let s = stored(vec![group("night", 0, Some(window("02:00", 2, "UTC", Days::ALL)))]);
    let fleet = [agent("a", 0, "1.0.0"), agent("b", 0, "1.0.0")];
    let run = run_with(&s, |r| (r.groups[0].started_at, r.groups[0].rollout) = (Some(0), Some("r1".into())));
    let p = decide(&s, &run, &[rollout("r1", RolloutState::Active, 1, 1)], &fleet, ms("2026-03-02T04:00:00Z"));
    assert_eq!((states(&p), p.actions.clone()), (vec![WaitingForWindow], vec![Action::Pause("r1".into())]));
    assert!(p.groups[0].reason.ends_with("agents already asked in r1 finish"), "{}", p.groups[0].reason);
    assert!(p.run.groups[0].paused);
    let p = decide(&s, &p.run, &[rollout("r1", RolloutState::Paused, 1, 0)], &fleet, ms("2026-03-03T02:00:00Z"));
    assert_eq!((states(&p), p.actions.clone()), (vec![Rolling], vec![Action::Resume("r1".into())]));
    assert!(!p.run.groups[0].paused);
    // A rollout an operator paused is left paused.
    let p = decide(&s, &p.run, &[rollout("r1", RolloutState::Paused, 1, 0)], &fleet, ms("2026-03-03T02:30:00Z"));
    assert!(p.actions.is_empty() && p.groups[0].reason.contains("paused by an operator"), "{:?}", p.groups[0]);
}

#[test]
fn a_halt_stops_every_later_group_until_cleared() {
    let s = stored(vec![group("dev", 0, None), group("staging", 0, None), group("prod", 0, None)]);
    let fleet = [agent("d0", 0, "1.0.0"), agent("d1", 0, "1.0.0"), agent("s", 1, "1.0.0"), agent("p", 2, "1.0.0")];
    let run = run_with(&s, |r| (r.groups[0].started_at, r.groups[0].rollout) = (Some(0), Some("r1".into())));
    let failure = Failure { agent_id: "d0".into(), name: "d0".into(), reason: "self-check failed: exit 3".into() };
    let mut halted = rollout("r1", RolloutState::Halted, 0, 0).unwrap();
    (halted.reason, halted.failures) = (Some("the canary d0 failed: self-check failed: exit 3".into()), vec![failure]);
    let p = decide(&s, &run, &[Some(halted.clone())], &fleet, 50);
    assert_eq!(states(&p), [Halted, WaitingForPrevious, WaitingForPrevious]);
    assert_eq!(p.groups[0].reason, "halted: the canary d0 failed: self-check failed: exit 3 (1 failed)");
    assert_eq!((p.groups[1].reason.as_str(), p.groups[2].reason.as_str()), ("dev is halted", "dev is halted"));
    assert_eq!(p.actions, [Action::Fold { group: 0, rollout: "r1".into() }], "its results are recorded all the same");
    let halt = p.run.groups[0].halt.clone().unwrap();
    assert_eq!((halt.rollout.as_str(), halt.failures.len()), ("r1", 1));

    // Halted still, the next time; then an operator clears it: dev goes on with who is left.
    let mut later = fleet.clone();
    later[0].record = fold(None, 1, "r1", &failed("d0", "self-check failed: exit 3"), false, 50).map(Arc::new);
    let p = decide(&s, &p.run, &[], &later, 60);
    assert_eq!(states(&p), [Halted, WaitingForPrevious, WaitingForPrevious]);
    assert!(p.actions.is_empty());
    let cleared = Stored { clears: 1, ..s.clone() };
    let p = decide(&cleared, &p.run, &[], &later, 70);
    assert_eq!(states(&p), [Canary, WaitingForPrevious, WaitingForPrevious]);
    assert_eq!(p.actions, [Action::Start { group: 0, agents: vec![1] }], "the definite failure is not asked again");
    assert_eq!(p.agents[0].standing, Standing::Failed);
}

#[test]
fn a_halt_pauses_a_later_groups_rollout_and_a_clear_resumes_it() {
    let s = stored(vec![group("dev", 0, None), group("prod", 0, None)]);
    let fleet = [agent("d", 0, "1.0.0"), agent("p", 1, "1.0.0")];
    let run = run_with(&s, |r| {
        r.groups[0] = GroupRun {
            started_at: Some(0),
            converged_at: Some(1),
            rollout: Some("late".into()),
            ..r.groups[0].clone()
        };
        r.groups[1] = GroupRun { started_at: Some(1), rollout: Some("r2".into()), ..r.groups[1].clone() };
    });
    let late = rollout("late", RolloutState::Halted, 0, 1);
    let p = decide(&s, &run, &[late, rollout("r2", RolloutState::Active, 1, 0)], &fleet, 5);
    assert_eq!(states(&p), [Halted, WaitingForPrevious]);
    assert_eq!(p.actions, [Action::Pause("r2".into())], "the halted rollout still has an agent in flight: no fold yet");
    let cleared = Stored { clears: 1, ..s.clone() };
    let p = decide(
        &cleared,
        &p.run,
        &[rollout("late", RolloutState::Halted, 0, 0), rollout("r2", RolloutState::Paused, 1, 0)],
        &fleet,
        6,
    );
    assert_eq!(p.actions, [Action::Fold { group: 0, rollout: "late".into() }, Action::Resume("r2".into())]);
    assert_eq!(states(&p), [Rolling, Rolling]);
}

#[test]
fn an_agent_that_joins_late_goes_into_its_groups_next_rollout_in_its_window() {
    let s = stored(vec![group("dev", 0, None), group("prod", 0, Some(window("02:00", 2, "UTC", Days::ALL)))]);
    let run = run_with(&s, |r| {
        r.groups[0] = GroupRun { started_at: Some(0), converged_at: Some(1), ..r.groups[0].clone() };
        r.groups[1] = GroupRun { started_at: Some(1), converged_at: Some(2), ..r.groups[1].clone() };
    });
    let mut fleet = [agent("d", 0, "2.0.0"), agent("p0", 1, "2.0.0"), agent("new", 1, "1.0.0")];
    let p = decide(&s, &run, &[], &fleet, ms("2026-03-02T12:00:00Z"));
    assert_eq!(states(&p), [Converged, WaitingForWindow]);
    assert_eq!(p.groups[1].next, Some(("ask 1 agent".to_string(), ms("2026-03-03T02:00:00Z"))));
    assert_eq!((p.agents[2].standing.clone(), p.agents[2].waiting), (Standing::Ready, Some(WaitingForWindow)));
    let p = decide(&s, &run, &[], &fleet, ms("2026-03-03T02:00:00Z"));
    assert_eq!(p.actions, [Action::Start { group: 1, agents: vec![2] }]);
    // Offline during the window: waits for the next one, and holds nobody up.
    fleet[2].connected = false;
    let p = decide(&s, &run, &[], &fleet, ms("2026-03-03T02:30:00Z"));
    assert_eq!((states(&p), p.actions.len()), (vec![Converged, Converged], 0));
    assert_eq!(p.agents[2].standing, Standing::Offline);
    fleet[2].connected = true;
    let p = decide(&s, &run, &[], &fleet, ms("2026-03-03T05:00:00Z"));
    assert_eq!((states(&p)[1], p.actions.len()), (WaitingForWindow, 0), "back after the window closed");
    let p = decide(&s, &run, &[], &fleet, ms("2026-03-04T02:00:01Z"));
    assert_eq!(p.actions, [Action::Start { group: 1, agents: vec![2] }], "asked in the next window");
}

fn failed(id: &str, reason: &str) -> crate::model::member::Member {
    let m = crate::model::member::Member::new(id, id, false, 0);
    crate::model::member::Member { state: MemberState::Failed, reason: Some(reason.into()), ..m }
}

#[test]
fn transient_failures_are_retried_on_the_schedule_within_windows_and_definite_ones_never() {
    let s = stored(vec![group("g", 0, Some(window("00:00", 12, "UTC", Days::ALL)))]);
    let run = run_with(&s, |r| (r.groups[0].started_at, r.groups[0].converged_at) = (Some(0), Some(0)));
    let t0 = ms("2026-03-02T01:00:00Z");
    let mut a = agent("a", 0, "1.0.0");
    let mut b = agent("b", 0, "1.0.0");
    a.record = fold(None, 1, "r1", &failed("a", "download of http://r/a failed: reset"), false, t0).map(Arc::new);
    let rolled_back = "Failed to upgrade to version 2.0.0. Agent still running with version 1.0.0";
    b.record = fold(None, 1, "r1", &failed("b", rolled_back), false, t0).map(Arc::new);
    let mut retries = Vec::new();
    for n in 1..=8u32 {
        let r = a.record.clone().unwrap();
        assert_eq!(r.failures, n);
        let at = r.retry_at.unwrap();
        retries.push((at - r.at) / 60_000);
        let p = decide(&s, &run, &[], &[a.clone(), b.clone()], at - 1);
        assert_eq!(p.agents[0].standing, Standing::Retrying(at));
        assert_eq!((p.actions.len(), states(&p)[0]), (0, Converged), "a retry does not hold the group up");
        assert_eq!(p.groups[0].next.as_ref().map(|n| n.1), Some(at));
        let p = decide(&s, &run, &[], &[a.clone(), b.clone()], at);
        let asked =
            if jiff::Timestamp::from_millisecond(at).unwrap().to_zoned_datetime(jiff::tz::TimeZone::UTC).hour() < 12 {
                1
            } else {
                0
            };
        assert_eq!(p.actions.len(), asked, "asked again at {} only inside the window", iso(at));
        assert_eq!(p.agents[1].standing, Standing::Failed, "a definite failure is never asked again");
        a.record =
            fold(a.record.as_deref(), 1, &format!("r{}", n + 1), &failed("a", "Timeout"), false, at).map(Arc::new);
    }
    assert_eq!(retries, [1, 5, 10, 15, 30, 60, 60, 60]);
}

#[test]
fn an_agent_an_operator_upgraded_elsewhere_is_pinned_not_fought() {
    let s = stored(vec![group("g", 0, None)]);
    let mut fleet = [agent("a", 0, "1.5.0"), agent("b", 0, "1.0.0"), agent("c", 0, "2.0.0")];
    fleet[0].pinned = Some(Target::Exact(Version::new(1, 5, 0)));
    fleet[2].pinned = Some(Target::Latest);
    let p = decide(&s, &Run::default(), &[], &fleet, 0);
    assert_eq!(p.agents[0].standing, Standing::Pinned(Target::Exact(Version::new(1, 5, 0))));
    assert_eq!(p.agents[2].standing, Standing::OnTarget, "pinned to what turned out to be the target");
    assert_eq!(p.actions, [Action::Start { group: 0, agents: vec![1] }]);
}

#[test]
fn suspension_pauses_and_keeps_the_state_disabling_cancels() {
    let s = stored(vec![group("dev", 0, None), group("prod", 0, None)]);
    let fleet = [agent("d", 0, "1.0.0"), agent("p", 1, "1.0.0")];
    let run = run_with(&s, |r| (r.groups[0].started_at, r.groups[0].rollout) = (Some(0), Some("r1".into())));
    let mut suspended = s.clone();
    suspended.policy.mode = Mode::Suspended;
    let p = decide(&suspended, &run, &[rollout("r1", RolloutState::Active, 0, 1)], &fleet, 5);
    assert_eq!((states(&p), p.actions.clone()), (vec![Suspended, Suspended], vec![Action::Pause("r1".into())]));
    assert_eq!((p.run.groups[0].started_at, p.run.groups[0].rollout.as_deref()), (Some(0), Some("r1")), "state kept");
    let p = decide(&s, &p.run, &[rollout("r1", RolloutState::Paused, 0, 0)], &fleet, 6);
    assert_eq!((states(&p)[0], p.actions.clone()), (Canary, vec![Action::Resume("r1".into())]), "resumed");
    let mut disabled = s.clone();
    disabled.policy.mode = Mode::Disabled;
    let p = decide(&disabled, &run, &[rollout("r1", RolloutState::Active, 0, 1)], &fleet, 5);
    assert_eq!((states(&p), p.actions.clone()), (vec![Suspended, Suspended], vec![Action::Cancel("r1".into())]));
    assert_eq!(p.run.groups[0].rollout, None);
}

#[test]
fn a_new_target_lets_asked_agents_finish_and_starts_again_from_the_first_group() {
    let s = stored(vec![group("dev", 0, None), group("prod", 0, None)]);
    let run = run_with(&s, |r| {
        r.groups[0] = GroupRun { started_at: Some(0), converged_at: Some(1), ..r.groups[0].clone() };
        r.groups[1] = GroupRun { started_at: Some(1), rollout: Some("r2".into()), ..r.groups[1].clone() };
    });
    let mut fleet = [agent("d", 0, "2.0.0"), agent("p0", 1, "1.0.0"), agent("p1", 1, "1.0.0")];
    fleet[1].busy = Some("r2".into());
    let next =
        Stored { generation: 2, policy: Policy { target: Version::new(2, 1, 0), ..s.policy.clone() }, ..s.clone() };
    // The run is lined up with the new target: r2 is not its any more, and comes as a stray.
    let stray = Stray { id: "r2".into(), generation: 1, group: "prod".into(), open: true };
    let rollouts = vec![None, None];
    let input = Input { stored: &next, run: &run, rollouts: &rollouts, strays: &[stray], agents: &fleet, now: 10 };
    let p = plan(&input);
    assert_eq!(p.actions, [Action::Cancel("r2".into()), Action::Start { group: 0, agents: vec![0] }]);
    assert_eq!(states(&p), [Canary, WaitingForPrevious]);
    assert_eq!(p.run.generation, 2);
    assert_eq!(p.agents[1].standing, Standing::Busy("r2".into()), "still upgrading to the old target");
}

#[test]
fn agents_newer_than_the_target_are_not_downgraded_unless_allowed() {
    let s = stored(vec![group("g", 0, None)]);
    let fleet = [agent("new", 0, "3.0.0"), agent("old", 0, "1.0.0")];
    let p = decide(&s, &Run::default(), &[], &fleet, 0);
    assert_eq!(
        (p.agents[0].standing.clone(), p.actions.clone()),
        (Standing::Ahead, vec![Action::Start { group: 0, agents: vec![1] }])
    );
    let mut allowed = s.clone();
    allowed.policy.allow_downgrade = true;
    let p = decide(&allowed, &Run::default(), &[], &fleet, 0);
    assert_eq!(p.actions, [Action::Start { group: 0, agents: vec![0, 1] }]);
}

#[test]
fn an_operator_cancelling_a_policy_rollout_halts_its_group() {
    let s = stored(vec![group("g", 0, None)]);
    let run = run_with(&s, |r| (r.groups[0].started_at, r.groups[0].rollout) = (Some(0), Some("r1".into())));
    let p = decide(&s, &run, &[rollout("r1", RolloutState::Cancelled, 1, 0)], &[agent("a", 0, "1.0.0")], 5);
    assert_eq!(states(&p), [Halted]);
    assert_eq!(p.groups[0].reason, "halted: its rollout r1 was cancelled by an operator (0 failed)");
}

#[test]
fn records_of_a_failed_attempt_are_kind_aware() {
    let r: Record = fold(None, 1, "r", &failed("a", "signature check failed for agent: no key"), false, 0).unwrap();
    assert_eq!((r.last, r.retry_at), (Attempt::Failed(FailureKind::Definite), None));
}

#[test]
fn a_rollout_made_just_before_a_crash_is_found_again_not_made_twice() {
    let s = stored(vec![group("g", 0, None)]);
    let run = run_with(&s, |r| r.groups[0].started_at = Some(0));
    let mut fleet = [agent("a", 0, "1.0.0"), agent("b", 0, "1.0.0")];
    fleet[0].busy = Some("r7".into());
    fleet[1].busy = Some("r7".into());
    let strays = [Stray { id: "r7".into(), generation: 1, group: "g".into(), open: true }];
    let input = Input { stored: &s, run: &run, rollouts: &[None], strays: &strays, agents: &fleet, now: 5 };
    let p = plan(&input);
    assert_eq!((p.actions.len(), p.run.groups[0].rollout.as_deref()), (0, Some("r7")));
    assert_eq!(p.groups[0].reason, "rollout r7 starts");
    let old = [Stray { generation: 0, ..strays[0].clone() }];
    let input = Input { strays: &old, ..input };
    assert_eq!(plan(&input).actions[0], Action::Cancel("r7".into()), "one for an earlier target is cancelled");
}
