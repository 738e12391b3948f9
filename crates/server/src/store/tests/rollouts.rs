//! The rollout part of the store suite, on both backends: what a restart or another node reads
//! back, claims that succeed once, and final states that later writes cannot undo.

use semver::Version;

use crate::model::audit::{AuditQuery, AuditRecord, Ref, REST};
use crate::model::member::{Member, MemberState};
use crate::model::rollout::{Rollout, RolloutState, Summary, MAX_EVENTS, MAX_FAILURES_SHOWN};
use crate::model::strategy::Strategy;
use crate::store::Store;

fn member(id: &str) -> Member {
    Member::new(id, &format!("agent {id}"), false, 0)
}

fn asked(mut m: Member, callback: &str) -> Member {
    (m.state, m.wave, m.callback, m.asked_at) = (MemberState::InProgress, Some(0), Some(callback.into()), Some(5));
    m
}

/// A new active rollout to 2.0.0 of `name=lab`.
fn active(id: &str, strategy: Strategy) -> Rollout {
    Rollout {
        id: id.to_string(),
        version: Version::new(2, 0, 0),
        state: RolloutState::Active,
        reason: None,
        strategy,
        selection: "name=lab".into(),
        created_at: 1_000,
        wave: 0,
        events: vec![],
    }
}

async fn rollouts(store: &dyn Store) {
    let id = edge_agent_base::id::uuid();
    let rollout = active(&id, Strategy { canary: 2, max_in_flight: 7, ..Strategy::default() });
    let members = vec![member("a"), member("b"), member("c")];
    store.insert_rollout(&rollout, &members, vec![]).await.unwrap();
    assert!(store.live_rollout_ids().await.unwrap().contains(&id));
    // Which agents are members, for another rollout's overlap check (a full lookup too).
    let among = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<std::collections::HashSet<_>>();
    assert_eq!(store.members_among(&id, &["x", "c", "a"]).await.unwrap(), among(&["a", "c"]));
    assert!(store.members_among(&id, &["x", ""]).await.unwrap().is_empty());
    assert!(store.members_among("no-such-rollout", &["a"]).await.unwrap().is_empty());
    let many: Vec<String> = (0..crate::store::rollouts::AMONG - 1).map(|i| format!("z{i}")).collect();
    let mut full: Vec<&str> = many.iter().map(String::as_str).collect();
    full.push("b");
    assert_eq!(store.members_among(&id, &full).await.unwrap(), among(&["b"]));

    // A member is claimed once: a second claim (another node, or after a restart) fails.
    let first = asked(members[0].clone(), "Agent/a-1");
    assert_eq!(store.claim_members(&id, std::slice::from_ref(&first)).await.unwrap(), [true]);
    assert_eq!(store.claim_members(&id, &[asked(members[0].clone(), "Agent/a-2")]).await.unwrap(), [false]);
    let (_, found) = store.member_by_callback(&"Agent/a-1".into()).await.unwrap().unwrap();
    assert_eq!((found.agent_id.as_str(), found.state), ("a", MemberState::InProgress));

    // A final state stays; only a late answer replaces timed-out.
    let mut done = first.clone();
    (done.state, done.finished_at, done.reason) = (MemberState::Failed, Some(9), Some("bad checksum".into()));
    store.save_members(&id, std::slice::from_ref(&done)).await.unwrap();
    let mut undo = first.clone();
    undo.state = MemberState::TimedOut;
    store.save_members(&id, &[undo]).await.unwrap();
    let mut skipped = members[1].clone();
    (skipped.state, skipped.finished_at) = (MemberState::Skipped, Some(10));
    let mut timed_out = asked(members[2].clone(), "Agent/c-1");
    store.claim_members(&id, std::slice::from_ref(&timed_out)).await.unwrap();
    (timed_out.state, timed_out.finished_at) = (MemberState::TimedOut, Some(11));
    store.save_members(&id, &[skipped, timed_out.clone()]).await.unwrap();
    let mut late = timed_out;
    (late.state, late.finished_at) = (MemberState::Succeeded, Some(12));
    store.save_members(&id, &[late]).await.unwrap();
    let (back, stored) = store.rollout(&id).await.unwrap().unwrap();
    // What the driver reads between full reads: the row, and the members finished since a time.
    assert_eq!(store.rollout_head(&id).await.unwrap().unwrap().selection, back.selection);
    let since = |at| async move {
        let found = store.members_finished_since(at).await.unwrap();
        found.into_iter().map(|(rollout, m)| format!("{}/{}", &rollout[..4], m.agent_id)).collect::<Vec<_>>()
    };
    let r = &id[..4];
    assert_eq!(since(10).await, [format!("{r}/b"), format!("{r}/c")], "finished at 10 and 12, not a (at 9)");
    assert!(since(13).await.is_empty());
    let states: Vec<MemberState> = stored.iter().map(|m| m.state).collect();
    assert_eq!(states, [MemberState::Failed, MemberState::Skipped, MemberState::Succeeded]);
    assert_eq!(stored[0].reason.as_deref(), Some("bad checksum"));
    assert_eq!((back.strategy.canary, back.strategy.max_in_flight, back.selection.as_str()), (2, 7, "name=lab"));
    // The status of a rollout not held in memory, counted by the store: what its members read
    // whole give.
    let summary = store.rollout_summary(&id).await.unwrap().unwrap();
    assert_eq!(summary, Summary::of(&back, &stored));
    assert_eq!((summary.total(), summary.done(), summary.failures.len()), (3, 3, 1));
    assert_eq!(summary.failures[0].reason.as_deref(), Some("bad checksum"));
    assert!(store.rollout_summary("no-such-rollout").await.unwrap().is_none());

    // Once a rollout is cancelled, no claim holds, and its pending members are skipped.
    let other = Rollout { id: edge_agent_base::id::uuid(), ..back.clone() };
    store.insert_rollout(&other, &[member("x"), member("y")], vec![]).await.unwrap();
    let cancelled = Rollout { state: RolloutState::Cancelled, ..other.clone() };
    assert!(store.save_rollout(&cancelled, RolloutState::Active, Vec::new()).await.unwrap());
    assert_eq!(store.claim_members(&other.id, &[asked(member("x"), "Agent/x-1")]).await.unwrap(), [false]);
    let live = store.live_rollout_ids().await.unwrap();
    assert!(live.contains(&other.id), "ended with members pending: still to drive");
    assert_eq!(store.skip_pending(&other.id, "cancelled", 20).await.unwrap(), 2);
    let (_, after) = store.rollout(&other.id).await.unwrap().unwrap();
    assert!(after.iter().all(|m| m.state == MemberState::Skipped));
    assert!(!store.live_rollout_ids().await.unwrap().contains(&other.id), "nothing left to drive");

    // The rollout's own state is written only from the state the writer saw, and the events
    // that record the change with it, or neither.
    let mut ended = back.clone();
    ended.state = RolloutState::Completed;
    let event = |code: &str| {
        let mut e = crate::store::audit::event(REST, code, 'U', None, None);
        e.entities = vec![Ref { reference: format!("Rollout/{id}"), display: None }];
        e
    };
    let on_rollout = || AuditQuery { entity: Some(format!("Rollout/{id}")), count: 10, ..AuditQuery::default() };
    let record = |e: AuditRecord| crate::store::audit::record(&[e]);
    assert!(!store.save_rollout(&ended, RolloutState::Paused, record(event("refused-change"))).await.unwrap());
    assert!(store.audit_search(&on_rollout(), false).await.unwrap().0.is_empty(), "no event without the change");
    // An event that cannot be written (its id is taken) leaves the change unwritten too.
    let first = event("rollout-complete");
    store.record_audit(std::slice::from_ref(&first)).await.unwrap();
    assert!(store.save_rollout(&ended, RolloutState::Active, record(first)).await.is_err());
    let state = |rs: Vec<Rollout>| rs.into_iter().find(|r| r.id == id).map(|r| r.state);
    assert_eq!(state(store.rollouts().await.unwrap()), Some(RolloutState::Active), "the change went with its event");
    assert!(store.save_rollout(&ended, RolloutState::Active, record(event("rollout-complete"))).await.unwrap());
    let (recorded, _) = store.audit_search(&on_rollout(), false).await.unwrap();
    assert_eq!(recorded.iter().map(|e| e.subtype.as_str()).collect::<Vec<_>>(), ["rollout-complete"; 2]);
    assert!(!store.live_rollout_ids().await.unwrap().contains(&id));
    assert_eq!(store.rollouts().await.unwrap().iter().find(|r| r.id == id).unwrap().state, RolloutState::Completed);

    let last: std::collections::HashMap<String, (i64, MemberState)> =
        store.last_results(None).await.unwrap().into_iter().map(|(a, at, l)| (a, (at, l.state))).collect();
    assert_eq!(last["c"].1, MemberState::Succeeded);
    assert_eq!(last["a"].1, MemberState::Failed);
    // Since a time: only the members that finished at or after it, oldest first.
    let newest = last.values().map(|(at, _)| *at).max().unwrap();
    let since = store.last_results(Some(newest)).await.unwrap();
    assert!(!since.is_empty() && since.iter().all(|(_, at, _)| *at >= newest), "{since:?}");
    assert!(store.last_results(Some(newest + 1)).await.unwrap().is_empty());
    let all = store.last_results(Some(0)).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].1 <= w[1].1), "oldest first");
    assert!(all.len() >= last.len(), "every finished member, not only each agent's last");

    // A rollout with more failed members than a status lists: the first of them, as its members
    // read whole give; its events are bounded as it tells them, and read back so.
    let many = Rollout { id: edge_agent_base::id::uuid(), ..active("", Strategy::default()) };
    let ids: Vec<String> = (0..MAX_FAILURES_SHOWN + 20).map(|i| format!("f{i:03}")).collect();
    store.insert_rollout(&many, &ids.iter().map(|i| member(i)).collect::<Vec<_>>(), vec![]).await.unwrap();
    let asked_all: Vec<Member> = ids.iter().map(|i| asked(member(i), &format!("Agent/{i}-1"))).collect();
    store.claim_members(&many.id, &asked_all).await.unwrap();
    let failed: Vec<Member> = asked_all
        .into_iter()
        .map(|mut m| {
            (m.state, m.finished_at, m.reason) = (MemberState::Failed, Some(30), Some("no space left".into()));
            m
        })
        .collect();
    store.save_members(&many.id, &failed).await.unwrap();
    let mut told = many.clone();
    for n in 0..MAX_EVENTS + 50 {
        told.record(format!("2026-01-01T00:00:{:02}Z", n % 60), format!("event {n}"));
    }
    assert!(store.save_rollout(&told, RolloutState::Active, Vec::new()).await.unwrap());
    let (back, stored) = store.rollout(&many.id).await.unwrap().unwrap();
    let summary = store.rollout_summary(&many.id).await.unwrap().unwrap();
    assert_eq!(summary, Summary::of(&back, &stored));
    assert_eq!(summary.failures.len(), MAX_FAILURES_SHOWN);
    assert_eq!((summary.failures[0].agent_id.as_str(), summary.counts[&MemberState::Failed]), ("f000", ids.len()));
    assert_eq!(back.events, told.events);
    assert_eq!(back.events.len(), MAX_EVENTS);
}

/// A request taken back (in flight to pending) is written only while the writer holds the
/// rollout lease: a node that lost it never undoes what the node now driving sent again.
async fn taking_back_is_fenced_by_the_lease(store: &dyn Store) {
    let id = edge_agent_base::id::uuid();
    store.insert_rollout(&active(&id, Strategy::default()), &[member("a")], vec![]).await.unwrap();
    let first = asked(member("a"), "Agent/a-1");
    assert_eq!(store.claim_members(&id, std::slice::from_ref(&first)).await.unwrap(), [true]);
    let lease = format!("fence-{id}");
    let ttl = std::time::Duration::from_secs(30);
    assert!(store.lease_acquire(&lease, "node-b", ttl).await.unwrap());
    let back = member("a");
    // Node A lost the lease to node B: its late write changes nothing.
    assert_eq!(store.unask_members(&id, std::slice::from_ref(&back), (&lease, "node-a")).await.unwrap(), [0]);
    let (_, stored) = store.rollout(&id).await.unwrap().unwrap();
    assert_eq!((stored[0].state, stored[0].callback.clone()), (MemberState::InProgress, Some("Agent/a-1".into())));
    // The holder takes it back.
    assert_eq!(store.unask_members(&id, &[back], (&lease, "node-b")).await.unwrap(), [1]);
    let (_, stored) = store.rollout(&id).await.unwrap().unwrap();
    assert_eq!((stored[0].state, stored[0].callback.clone()), (MemberState::Pending, None));
    // An expired lease fences too.
    assert!(store.lease_release(&lease, "node-b").await.unwrap());
    assert!(store.lease_acquire(&lease, "node-b", std::time::Duration::from_millis(1)).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(store.claim_members(&id, std::slice::from_ref(&first)).await.unwrap(), [true]);
    assert_eq!(store.unask_members(&id, &[member("a")], (&lease, "node-b")).await.unwrap(), [0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn taking_back_a_request_is_fenced_by_the_lease_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    taking_back_is_fenced_by_the_lease(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn taking_back_a_request_is_fenced_by_the_lease_on_postgres() {
    taking_back_is_fenced_by_the_lease(super::postgres().await.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_in_the_store_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    rollouts(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_in_the_store_on_postgres() {
    rollouts(super::postgres().await.as_ref()).await;
}
