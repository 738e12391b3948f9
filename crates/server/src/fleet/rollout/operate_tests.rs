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

async fn create(r: &Rollouts, agents: &[AgentRow]) -> Result<Rollout, RolloutError> {
    let version = Version::new(2, 0, 0);
    let new = NewRollout { version: &version, strategy: Strategy::default(), selection: "name=x", agents };
    r.create(new).await
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
