//! The store's guards on member writes, against the member transition table: for every state a
//! member may be stored in and every state written, the database takes the write exactly when
//! the table has a transition between the two, on both backends.

use edge_agent_wire::Callback;
use semver::Version;

use crate::model::member::{renewable, sources_of, Member, MemberState};
use crate::model::rollout::{Rollout, RolloutState};
use crate::model::strategy::Strategy;
use crate::store::Store;

fn rollout() -> Rollout {
    Rollout {
        id: edge_agent_base::id::uuid(),
        version: Version::new(2, 0, 0),
        state: RolloutState::Active,
        reason: None,
        strategy: Strategy::default(),
        selection: String::new(),
        created_at: 0,
        wave: 0,
        events: vec![],
    }
}

/// A member stored in `state`.
fn stored(state: MemberState) -> Member {
    let mut m = Member::new("a", "lab", false, 0);
    m.state = state;
    if state != MemberState::Pending {
        (m.wave, m.callback, m.asked_at) = (Some(0), Some(Callback::from("Agent/a-old")), Some(1));
    }
    m.finished_at = state.is_final().then_some(2);
    m
}

async fn every_pair(store: &dyn Store) {
    let mut cells = 0;
    for from in MemberState::ALL {
        for to in MemberState::ALL {
            let r = rollout();
            store.insert_rollout(&r, &[stored(from)], vec![]).await.unwrap();
            let written = Member { state: to, reason: Some("written".into()), ..stored(to) };
            let changed = store.save_members(&r.id, &[written]).await.unwrap();
            let allowed = sources_of(to).contains(&from) || (from == to && renewable(to));
            assert_eq!(changed, [u64::from(allowed)], "{from:?} written as {to:?}");
            let (_, back) = store.rollout(&r.id).await.unwrap().unwrap();
            assert_eq!(back[0].state, if allowed { to } else { from }, "{from:?} written as {to:?}");
            cells += 1;
        }
        // Written again in its state, a member keeps the callback it was asked with.
        if renewable(from) {
            let r = rollout();
            store.insert_rollout(&r, &[stored(from)], vec![]).await.unwrap();
            let other = Member { callback: Some(Callback::from("Agent/a-new")), ..stored(from) };
            assert_eq!(store.save_members(&r.id, &[other]).await.unwrap(), [0], "{from:?} with another callback");
        }
        // A claim takes a member only where the table lets it be asked; a cancel's skip likewise.
        let r = rollout();
        store.insert_rollout(&r, &[stored(from)], vec![]).await.unwrap();
        let claim = Member { state: MemberState::InProgress, ..stored(MemberState::InProgress) };
        let claimed = store.claim_members(&r.id, &[claim]).await.unwrap();
        assert_eq!(claimed, [sources_of(MemberState::InProgress).contains(&from)], "claim from {from:?}");
        let r = rollout();
        store.insert_rollout(&r, &[stored(from)], vec![]).await.unwrap();
        let skipped = store.skip_pending(&r.id, "cancelled", 3).await.unwrap();
        assert_eq!(skipped, u64::from(sources_of(MemberState::Skipped).contains(&from)), "skip from {from:?}");
    }
    assert_eq!(cells, 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn member_writes_follow_the_transition_table_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    every_pair(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn member_writes_follow_the_transition_table_on_postgres() {
    every_pair(super::postgres().await.as_ref()).await;
}
