//! The member transition table, every cell: each state × each event is the expected next state,
//! or a refusal naming both.

use super::*;

fn member(state: MemberState) -> Member {
    Member { state, ..Member::new("a1", "lab-1", false, 0) }
}

#[test]
fn every_state_and_event() {
    use MemberState::*;
    let x = None;
    // Rows: states in ALL order; columns: sample_events() in order; None = refused.
    let table: [[Option<MemberState>; 9]; 8] = [
        // ask, unask, resend, answer ok, answer error, timeout on target, timeout, expire, skip
        [Some(InProgress), x, x, x, x, x, x, Some(Expired), Some(Skipped)], // Pending
        [x, Some(Pending), Some(InProgress), Some(Succeeded), Some(Failed), Some(Succeeded), Some(TimedOut), x, x], // InProgress
        [x, x, x, x, x, x, x, x, x],                          // Succeeded
        [x, x, x, x, x, x, x, x, x],                          // Already
        [x, x, x, x, x, x, x, x, x],                          // Failed
        [x, x, x, Some(Succeeded), Some(Failed), x, x, x, x], // TimedOut
        [x, x, x, x, x, x, x, x, x],                          // Expired
        [x, x, x, x, x, x, x, x, x],                          // Skipped
    ];
    let mut cells = 0;
    for (state, row) in MemberState::ALL.into_iter().zip(table) {
        for (event, want) in sample_events().into_iter().zip(row) {
            let name = event.name();
            match (transition(&member(state), event), want) {
                (Ok(next), Some(want)) => assert_eq!(next.state, want, "{state:?} {name}"),
                (Err(refusal), None) => {
                    assert_eq!(refusal, Refusal { state, event: name });
                    assert!(refusal.to_string().contains(state.name()), "{refusal}");
                }
                (got, want) => panic!("{state:?} {name}: got {got:?}, want {want:?}"),
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 72);
}

#[test]
fn what_each_transition_records() {
    let asked = transition(
        &member(MemberState::Pending),
        MemberEvent::Ask { wave: 2, callback: Callback::from("Agent/a1-x"), at: 7 },
    )
    .unwrap();
    assert_eq!(
        (asked.wave, asked.asked_at, asked.callback.as_ref().map(Callback::as_str)),
        (Some(2), Some(7), Some("Agent/a1-x"))
    );
    let back = transition(&asked, MemberEvent::Unask { why: "cluster bus unavailable".into() }).unwrap();
    let requeued = Member { reason: Some("cluster bus unavailable".into()), ..member(MemberState::Pending) };
    assert_eq!(back, requeued, "a request taken back leaves only why");
    let again = transition(&asked, MemberEvent::Resend { why: "store unavailable".into(), at: 8 }).unwrap();
    assert_eq!(
        (again.state, again.asked_at, again.callback, again.reason.as_deref()),
        (MemberState::InProgress, Some(8), asked.callback.clone(), Some("store unavailable")),
        "sent again: the same callback, its wait starting again"
    );
    let failed = transition(&asked, MemberEvent::Answer { result: Err("rolled back".into()), at: 9 }).unwrap();
    assert_eq!((failed.reason.as_deref(), failed.finished_at), (Some("rolled back"), Some(9)));
    let timed_out = transition(&asked, MemberEvent::TimeOut { on_target: false, at: 9 }).unwrap();
    assert_eq!(timed_out.reason.as_deref(), Some("Timeout"));
    let late = transition(&timed_out, MemberEvent::Answer { result: Ok(()), at: 12 }).unwrap();
    assert_eq!((late.state, late.reason, late.finished_at), (MemberState::Succeeded, None, Some(12)));
    let on_target = transition(&asked, MemberEvent::TimeOut { on_target: true, at: 9 }).unwrap();
    assert_eq!(on_target.reason.as_deref(), Some(ON_TARGET_WITHOUT_REPORT));
}

#[test]
fn the_stores_guards_follow_the_table() {
    use MemberState::*;
    let cases = [
        (Pending, vec![InProgress]),
        (InProgress, vec![Pending]),
        (Succeeded, vec![InProgress, TimedOut]),
        (Already, vec![]),
        (Failed, vec![InProgress, TimedOut]),
        (TimedOut, vec![InProgress]),
        (Expired, vec![Pending]),
        (Skipped, vec![Pending]),
    ];
    for (target, sources) in cases {
        assert_eq!(sources_of(target), sources, "{target:?}");
        assert_eq!(renewable(target), target == InProgress, "{target:?}");
    }
}

#[test]
fn counts_name_every_state_and_count_each_member_once() {
    for (i, s) in MemberState::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i, "ALL lists the states in their order: {s:?}");
    }
    let members: Vec<Member> =
        [MemberState::Pending, MemberState::Pending, MemberState::Skipped, MemberState::Failed].map(member).to_vec();
    let c = counts(&members);
    assert_eq!(c.len(), MemberState::ALL.len());
    assert_eq!((c[&MemberState::Pending], c[&MemberState::Skipped], c[&MemberState::Failed]), (2, 1, 1));
    assert_eq!(c.values().sum::<usize>(), 4);
}
