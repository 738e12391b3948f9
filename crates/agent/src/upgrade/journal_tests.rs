//! The transition table, every cell: each state × each event is either the expected next state or
//! a refusal naming both.

use super::*;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn cb(s: &str) -> Callback {
    Callback::from(s)
}

fn request(force: bool, callback: &str) -> Request {
    Request {
        id: callback.into(),
        callback: Some(callback.into()),
        target: Target::Exact(v("2.0.0")),
        force,
        running: v("1.0.0"),
        at: "t".into(),
    }
}

fn in_state(state: State) -> Journal {
    Journal {
        state,
        callback: Some("cb-old".into()),
        target_version: Some(v("1.5.0")),
        previous_version: Some(v("1.0.0")),
        ..Journal::idle()
    }
}

fn events() -> Vec<Event> {
    vec![
        Event::Accept(request(false, "cb-new")),
        Event::Accept(request(true, "cb-new")),
        Event::Resolve(v("2.0.0")),
        Event::Downloaded("ab".into()),
        Event::Resume,
        Event::Swap(Swapped { installed_binary: "/bin/agent".into(), previous_binary: "/state/previous/agent".into() }),
        Event::TrialStart,
        Event::ServerUnavailable(1_000),
        Event::RollBack("crashed".into()),
        Event::Close(Ending { reply: Reply::Ok, outcome: Some(Outcome::Ok), reason: None }),
    ]
}

#[test]
fn every_state_and_event() {
    use State::*;
    // Rows: states in STATES order; columns: events() in order; None = refused.
    let x = None;
    let table: [[Option<State>; 10]; 7] = [
        // accept, forced, resolve, downloaded, resume, swap, trial, unavailable, rollback, close
        [Some(Accepted), Some(Accepted), x, x, x, x, x, x, x, x], // Idle
        [x, Some(Accepted), Some(Downloading), x, Some(Accepted), x, x, x, x, Some(Done)], // Accepted
        [x, Some(Accepted), Some(Downloading), Some(Verifying), Some(Downloading), x, x, x, x, Some(Done)], // Downloading
        [x, Some(Accepted), Some(Downloading), x, Some(Verifying), Some(Trial), x, x, x, Some(Done)],       // Verifying
        [x, x, x, x, x, x, Some(Trial), Some(Trial), Some(RolledBack), Some(Done)],                         // Trial
        [x, x, x, x, x, x, x, x, x, Some(Done)],                  // RolledBack
        [Some(Accepted), Some(Accepted), x, x, x, x, x, x, x, x], // Done
    ];
    let mut cells = 0;
    for (row, state) in STATES.iter().enumerate() {
        for (col, event) in events().into_iter().enumerate() {
            let name = event.name();
            let got = transition(&in_state(*state), event);
            match table[row][col] {
                Some(want) => assert_eq!(got.map(|j| j.state), Ok(want), "{state:?} × {name}"),
                None => assert_eq!(got, Err(TransitionError { state: *state, event: name }), "{state:?} × {name}"),
            }
            cells += 1;
        }
    }
    assert_eq!(cells, STATES.len() * 10);
}

#[test]
fn a_refusal_names_the_state_and_the_event() {
    let e = transition(&in_state(State::Trial), Event::Accept(request(false, "x"))).unwrap_err();
    assert_eq!(e.to_string(), "cannot accept a request when the upgrade journal is Trial");
}

#[test]
fn what_each_transition_keeps() {
    let j = transition(&Journal::idle(), Event::Accept(request(false, "cb-1"))).unwrap();
    assert_eq!(
        (j.callback.as_ref().map(Callback::as_str), j.target_version.clone(), j.explicit),
        (Some("cb-1"), Some(v("2.0.0")), true)
    );
    assert_eq!(j.previous_version, Some(v("1.0.0")));
    let j = transition(&j, Event::Resume).unwrap();
    let j = transition(&j, Event::Resume).unwrap();
    assert_eq!(j.resumes, 2);
    let j = transition(&j, Event::Resolve(v("2.0.0"))).unwrap();
    let j = transition(&j, Event::Downloaded("ab".into())).unwrap();
    assert_eq!(j.sha256.as_deref(), Some("ab"));
    let swap = Swapped { installed_binary: "/bin/agent".into(), previous_binary: "/p".into() };
    let j = transition(&j, Event::Swap(swap)).unwrap();
    let j = transition(&j, Event::TrialStart).unwrap();
    assert_eq!((j.state, j.starts), (State::Trial, 1));
    let j = transition(&j, Event::ServerUnavailable(5_000)).unwrap();
    let j = transition(&j, Event::ServerUnavailable(7_000)).unwrap();
    assert_eq!((j.state, j.server_unavailable_at), (State::Trial, Some(7_000)), "the last time counts");
    let j = transition(&j, Event::RollBack("crashed".into())).unwrap();
    let end = Ending { reply: Reply::Error("failed".into()), outcome: Some(Outcome::RolledBack), reason: None };
    let j = transition(&j, Event::Close(end)).unwrap();
    assert_eq!((j.state, j.reason.as_deref()), (State::Done, Some("crashed")));
    assert_eq!(j.answer_for(&cb("cb-1")), Some(&Reply::Error("failed".into())));
    assert_eq!(j.answer_for(&cb("cb-other")), None);
}

#[test]
fn a_forced_request_answers_the_one_it_replaces_and_callbacks_are_remembered() {
    let running = transition(&Journal::idle(), Event::Accept(request(false, "cb-1"))).unwrap();
    assert!(running.runs(&cb("cb-1")));
    let forced = transition(&running, Event::Accept(request(true, "cb-2"))).unwrap();
    assert!(forced.runs(&cb("cb-2")) && !forced.runs(&cb("cb-1")));
    assert_eq!(forced.answer_for(&cb("cb-1")), Some(&Reply::Cancelled(Target::Exact(v("2.0.0")))));
    let mut j = forced;
    for i in 0..30 {
        j = transition(&j, Event::Close(Ending { reply: Reply::Ok, outcome: None, reason: None })).unwrap();
        j = transition(&j, Event::Accept(request(false, &format!("cb-{}", i + 3)))).unwrap();
    }
    assert_eq!(j.answered.len(), ANSWERED_KEPT);
    assert_eq!(j.answer_for(&cb("cb-31")), Some(&Reply::Ok));
    assert!(j.runs(&cb("cb-32")));
    assert_eq!(j.answer_for(&cb("cb-1")), None, "the oldest are forgotten");
}

#[test]
fn a_journal_written_by_the_previous_release_still_reads() {
    let old = r#"{"previousVersion":"0.1.0","targetVersion":"0.2.0","callback":"Agent/a-1","state":"trial",
        "startedAt":"2026-11-29T07:00:00.000Z","sha256":"ab","starts":1,"installedBinary":"/bin/agent",
        "previousBinary":"/state/previous/agent"}"#;
    let j: Journal = serde_json::from_str(old).unwrap();
    assert_eq!((j.state, j.target_version, j.starts), (State::Trial, Some(v("0.2.0")), 1));
    assert_eq!(j.accepted_at, "2026-11-29T07:00:00.000Z");
}

/// Found with the journal's fuzz target (`fuzz/fuzz_targets/agent_journal.rs`): a journal read at
/// start-up may hold any count. At its largest, a trial start and a takeover still count (they
/// overflowed: a panic in the supervisor at every start, a crash loop), so the trial is rolled
/// back and the unfinished upgrade closed, as past any limit.
#[test]
fn counters_at_their_largest_still_count() {
    let trial: Journal = serde_json::from_str(
        r#"{"state":"trial","id":"u1","previousVersion":"1.0.0","targetVersion":"1.1.0","callback":"a1:cb","starts":4294967295}"#,
    )
    .unwrap();
    assert_eq!(transition(&trial, Event::TrialStart).unwrap().starts, u32::MAX);
    let unfinished: Journal = serde_json::from_str(
        r#"{"state":"downloading","id":"u1","previousVersion":"1.0.0","callback":"a1:cb","resumes":4294967295}"#,
    )
    .unwrap();
    assert_eq!(transition(&unfinished, Event::Resume).unwrap().resumes, u32::MAX);
}
