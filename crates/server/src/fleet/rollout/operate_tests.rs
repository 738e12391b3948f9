//! A new rollout's overlap check, on a real SQLite store: an agent already in an open rollout is
//! found whether the rollout is held in memory (the driving node) or only in the store (any other
//! node, looked up a few hundred agents at a time), wherever it sits in the new selection; a
//! cancelled rollout no longer counts.

use std::sync::Arc;

use semver::Version;

use super::*;
use crate::conn::bus::local::LocalBus;
use crate::conn::hub::Hub;
use crate::conn::outages::Outages;
use crate::model::rollout::Action;
use crate::store::{self, StoreConfig};

fn agents(prefix: &str, n: usize) -> Vec<AgentRow> {
    (0..n)
        .map(|i| AgentRow {
            id: format!("{prefix}-id-{i:04}"),
            name: format!("{prefix}-{i:04}"),
            status: "active".into(),
            identifiers: serde_json::json!([]),
            last_updated: "2026-01-01T00:00:00Z".into(),
        })
        .collect()
}

async fn rollouts(driving: bool) -> (Arc<Rollouts>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().join("data"))).await.unwrap();
    let hub = Arc::new(Hub::new(store.clone(), Arc::new(LocalBus), Arc::new(Outages::default())));
    let r = Rollouts::new(store, hub, "node-a");
    r.driving.store(driving, Ordering::Relaxed);
    (r, dir)
}

fn new_rollout<'a>(version: &'a Version, agents: &'a [AgentRow]) -> NewRollout<'a> {
    NewRollout { version, strategy: Strategy::default(), selection: "name=x", agents }
}

async fn create(r: &Rollouts, agents: &[AgentRow]) -> Result<Rollout, RolloutError> {
    r.create(new_rollout(&Version::new(2, 0, 0), agents), |_| vec![]).await
}

#[tokio::test]
async fn an_agent_in_an_open_rollout_is_found_in_memory_and_in_the_store() {
    for driving in [true, false] {
        let (r, _dir) = rollouts(driving).await;
        let first = agents("lab", AMONG + 44);
        let open = create(&r, &first).await.unwrap();
        assert_eq!(r.live.lock().unwrap().contains_key(&open.id), driving);

        // The one shared agent is the 281st of the new selection: past the first lookup.
        let mut second = agents("ward", AMONG + 24);
        second.push(first[AMONG + 3].clone());
        match create(&r, &second).await {
            Err(RolloutError::Overlap { other, agent, other_state, .. }) => {
                assert_eq!(other, open.id, "driving: {driving}");
                assert_eq!(agent, format!("lab-{:04} (lab-id-{:04})", AMONG + 3, AMONG + 3));
                assert_eq!(other_state, "active");
            }
            made => panic!("driving: {driving}: an overlap, not {:?}", made.map(|r| r.id)),
        }
        // Without the shared agent, it is made.
        second.pop();
        create(&r, &second).await.unwrap();

        // Once the first is cancelled, its agents are free again.
        r.act(&open.id, Action::Cancel, Vec::new()).await.unwrap();
        let again = create(&r, &first[AMONG..AMONG + 5]).await.unwrap();
        assert_ne!(again.id, open.id);
    }
}

#[tokio::test]
async fn a_creations_record_is_written_with_it_or_not_at_all_and_a_refused_one_asks_for_none() {
    let (r, _dir) = rollouts(true).await;
    let version = Version::new(2, 0, 0);
    let event = crate::store::audit::event(crate::model::audit::REST, "rollout-create", 'C', None, None);
    let (first, second) = (agents("lab", 3), agents("ward", 2));
    let made = r
        .create(new_rollout(&version, &first), |made| {
            let mut e = event.clone();
            e.entities = vec![made.audit_ref()];
            crate::store::audit::record(&[e])
        })
        .await
        .unwrap();
    let trail = r.store.audit_since("", None, 10).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].entities, [made.audit_ref()]);

    // Refused before anything is written: its record is never made.
    let never = |_: &Rollout| -> Vec<Stmt> { panic!("a refused rollout's record was asked for") };
    assert!(matches!(r.create(new_rollout(&version, &first), never).await, Err(RolloutError::Overlap { .. })));
    assert!(matches!(r.create(new_rollout(&version, &[]), never).await, Err(RolloutError::Empty)));

    // A record that cannot be written (the same event again: its key is taken) leaves no rollout.
    let failed =
        r.create(new_rollout(&version, &second), |_| crate::store::audit::record(std::slice::from_ref(&event))).await;
    assert!(matches!(failed, Err(RolloutError::Store(_))), "{:?}", failed.map(|r| r.id));
    let stored: Vec<String> = r.store.rollouts().await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(stored, std::slice::from_ref(&made.id));
    assert_eq!(r.store.audit_since("", None, 10).await.unwrap().len(), 1);
    // The failed one's members are free: a new creation of them is made.
    r.create(new_rollout(&version, &second), |_| vec![]).await.unwrap();
}
