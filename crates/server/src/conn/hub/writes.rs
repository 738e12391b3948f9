//! The status writes of the agents on this node, gathered: a row waits at most [`LINGER`], and
//! every row due then goes to the store in one statement. A fleet reconnecting (after a
//! restart, or through a rollout) costs the store one write per few hundred agents rather than
//! one per agent and change. A row the store refused waits for the next write or the next
//! refresh, unless a newer one for its agent replaced it meanwhile.
//!
//! A new socket's row ([`StatusWrites::put_until_versioned`]) waits longer, for the version the
//! agent reports in answer to the heartbeat the server sends it at once: an upgraded agent's
//! reconnection is then one write (connected, at its new version), not two (connected at the
//! version last known, then the new one). It waits [`VERSION_WAIT`] at most. A disconnection
//! waits [`RETURN_WAIT`] for the agent to come back ([`StatusWrites::put_disconnected`]): an agent
//! restarting into a new version costs one write, not two. Meanwhile readers on this node see
//! the waiting row ([`StatusWrites::waiting`]), and other nodes see the agent held by no node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::agent::StatusRow;
use crate::store::{Store, StoreError};

/// How long a status waits for others to be written with it.
pub const LINGER: Duration = Duration::from_millis(20);
/// How long a new socket's status waits for the agent's version before it is written as it is.
pub const VERSION_WAIT: Duration = Duration::from_secs(2);
/// How long an agent's disconnection waits to be written, for the agent to come back: an agent
/// restarting into a new version (a rollout's member) is back within it, and its disconnection
/// and return are then one write (connected, at its new version), not two.
pub const RETURN_WAIT: Duration = Duration::from_secs(1);
/// Rows in one statement at most.
const MAX_ROWS: usize = 1000;

pub struct StatusWrites {
    store: Arc<dyn Store>,
    state: Mutex<Waiting>,
    /// Held while rows are written: a flush returns after the batch under way.
    storing: tokio::sync::Mutex<()>,
    /// The node stops ([`Self::closing`]): a disconnection no longer waits for a return.
    closing: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Waiting {
    /// Each agent's latest status not written yet, and when it is due.
    rows: HashMap<String, (StatusRow, Instant)>,
    /// Whether a writer runs (it writes what waits until nothing does).
    writing: bool,
}

impl StatusWrites {
    pub fn new(store: Arc<dyn Store>) -> Arc<StatusWrites> {
        Arc::new(StatusWrites {
            store,
            state: Default::default(),
            storing: Default::default(),
            closing: Default::default(),
        })
    }

    /// `row` is `agent_id`'s latest status: written within [`LINGER`] (replacing one of the
    /// agent's that waits).
    pub fn put(self: &Arc<Self>, agent_id: &str, row: StatusRow) {
        self.put_due(agent_id, row, Duration::ZERO);
    }

    /// A new socket's status: written when the agent's version comes ([`Self::put`] with it, or
    /// [`Self::versioned`] when it did not change), or [`VERSION_WAIT`] after, whichever is first
    /// (then within [`LINGER`]). A row of the agent's that waits already keeps its time.
    pub fn put_until_versioned(self: &Arc<Self>, agent_id: &str, row: StatusRow) {
        self.put_due(agent_id, row, VERSION_WAIT);
    }

    /// [`Self::put`], unless a row of the agent's waits already (then that one, newer, stays).
    pub fn put_unless_waiting(self: &Arc<Self>, agent_id: &str, row: StatusRow) {
        self.state.lock().unwrap().rows.entry(agent_id.to_string()).or_insert((row, Instant::now()));
        self.retry();
    }

    /// The agent's last socket closed: written [`RETURN_WAIT`] from now, unless it comes back
    /// meanwhile (then its new socket's row replaces this one, and keeps its time).
    pub fn put_disconnected(self: &Arc<Self>, agent_id: &str, row: StatusRow) {
        let closing = self.closing.load(std::sync::atomic::Ordering::Relaxed);
        self.put_due(agent_id, row, if closing { Duration::ZERO } else { RETURN_WAIT });
    }

    /// The node stops: what waits is written by the final flush, and a socket that closes after
    /// it has its disconnection written at once (within [`LINGER`]), not after [`RETURN_WAIT`].
    pub fn closing(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The agent reported the version its waiting row has: the row is written within [`LINGER`].
    pub fn versioned(self: &Arc<Self>, agent_id: &str) {
        let now = Instant::now();
        if let Some((_, due)) = self.state.lock().unwrap().rows.get_mut(agent_id) {
            *due = (*due).min(now);
        }
    }

    /// Puts `row`, due `wait` from now (the writer takes what is due every [`LINGER`]), or when
    /// a row of the agent's that it replaces was due, if sooner.
    fn put_due(self: &Arc<Self>, agent_id: &str, row: StatusRow, wait: Duration) {
        let due = Instant::now() + wait;
        {
            let mut w = self.state.lock().unwrap();
            match w.rows.get_mut(agent_id) {
                Some(waiting) => *waiting = (row, waiting.1.min(due)),
                None => {
                    w.rows.insert(agent_id.to_string(), (row, due));
                }
            }
        }
        self.retry();
    }

    /// `agent_id`'s status that waits to be written, if one does.
    pub fn waiting(&self, agent_id: &str) -> Option<StatusRow> {
        self.state.lock().unwrap().rows.get(agent_id).map(|(row, _)| row.clone())
    }

    /// Whether any status waits to be written (or is being written).
    pub fn any_waiting(&self) -> bool {
        let w = self.state.lock().unwrap();
        w.writing || !w.rows.is_empty()
    }

    /// Starts the writer if anything waits (a row just put, or refused by the store) and none runs.
    pub fn retry(self: &Arc<Self>) {
        let start = {
            let mut w = self.state.lock().unwrap();
            !w.rows.is_empty() && !std::mem::replace(&mut w.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write());
        }
    }

    /// Writes everything waiting now, after the batch under way, if one is; waits at most
    /// `limit` (the writing goes on after it: it is never cut halfway).
    pub async fn flush_within(self: &Arc<Self>, limit: Duration) -> Result<(), String> {
        let me = self.clone();
        match tokio::time::timeout(limit, tokio::spawn(async move { me.flush().await })).await {
            Ok(Ok(written)) => written.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not written within {limit:?}")),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let rows: Vec<(String, StatusRow)> =
            self.state.lock().unwrap().rows.drain().map(|(agent, (row, _))| (agent, row)).collect();
        // After the batch being written, if one is (a row of it may be older than one taken
        // here, and the store keeps the newer either way).
        self.store_all(rows).await
    }

    /// Writes `rows`, one batch at a time across the writer and flushes.
    async fn store_all(&self, rows: Vec<(String, StatusRow)>) -> Result<(), StoreError> {
        let _one_at_a_time = self.storing.lock().await;
        for chunk in rows.chunks(MAX_ROWS) {
            if let Err(e) = self.store.save_statuses(chunk).await {
                self.keep(rows);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Puts back rows the store refused (due at once: written by the next write or refresh),
    /// each unless a newer one for its agent came meanwhile.
    fn keep(&self, rows: Vec<(String, StatusRow)>) {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap();
        for (agent, row) in rows {
            w.rows.entry(agent).or_insert((row, now));
        }
    }

    /// Writes what is due, a batch every [`LINGER`], until nothing waits or the store fails.
    async fn write(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LINGER).await;
            let rows: Vec<(String, StatusRow)> = {
                let mut w = self.state.lock().unwrap();
                if w.rows.is_empty() {
                    w.writing = false;
                    return;
                }
                let now = Instant::now();
                let due: Vec<String> =
                    w.rows.iter().filter(|(_, (_, due))| *due <= now).map(|(a, _)| a.clone()).take(MAX_ROWS).collect();
                due.into_iter().filter_map(|a| w.rows.remove_entry(&a)).map(|(a, (row, _))| (a, row)).collect()
            };
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            if let Err(e) = self.store_all(rows).await {
                tracing::warn!(agents = n, "cannot save agents' statuses (retried at the next refresh): {e}");
                self.state.lock().unwrap().writing = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use edge_agent_wire::AgentStatus;

    /// A SQLite store in a directory of its own (kept while the test runs), with these agents.
    async fn store_with_agents(names: &[&str]) -> (tempfile::TempDir, Arc<dyn Store>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
        let mut ids = Vec::new();
        for name in names {
            ids.push(store.create_agent(name, "active", &serde_json::json!([]), None).await.unwrap().id);
        }
        (dir, store, ids)
    }

    fn row(status: AgentStatus, version: &str) -> StatusRow {
        StatusRow { status, version: version.into(), updated: edge_agent_base::time::now_iso() }
    }

    #[tokio::test]
    async fn each_agents_latest_status_is_written_together_within_the_linger_or_at_once_on_flush() {
        let (_dir, store, ids) = store_with_agents(&["a", "b", "c"]).await;
        let writes = StatusWrites::new(store.clone());
        writes.put(&ids[0], row(AgentStatus::Connected, "unknown"));
        writes.put(&ids[0], row(AgentStatus::Connected, "1.0.0"));
        writes.put(&ids[1], row(AgentStatus::Disconnected, "2.0.0"));
        assert_eq!(writes.waiting(&ids[0]).unwrap().version, "1.0.0", "the latest replaces the one waiting");
        writes.flush_within(Duration::from_secs(5)).await.unwrap();
        let stored = store.statuses(&ids).await.unwrap();
        let versions: Vec<_> = stored.iter().map(|s| s.as_ref().map(|s| s.version.as_str())).collect();
        assert_eq!(versions, [Some("1.0.0"), Some("2.0.0"), None]);

        // A status written again (after the bus failed) leaves a newer one waiting as it is.
        writes.put(&ids[0], row(AgentStatus::Connected, "1.1.0"));
        writes.put_unless_waiting(&ids[0], row(AgentStatus::Connected, "1.0.0"));
        writes.put_unless_waiting(&ids[1], row(AgentStatus::Connected, "2.0.0"));
        writes.flush_within(Duration::from_secs(5)).await.unwrap();
        let stored = store.statuses(&ids[..2]).await.unwrap();
        let now: Vec<_> = stored.iter().map(|s| s.as_ref().map(|s| (s.status, s.version.as_str()))).collect();
        assert_eq!(now, [Some((AgentStatus::Connected, "1.1.0")), Some((AgentStatus::Connected, "2.0.0"))]);

        // Without a flush, the writer writes within the linger.
        writes.put(&ids[2], row(AgentStatus::Connected, "3.0.0"));
        let mut waited = Duration::ZERO;
        while store.statuses(&ids[2..]).await.unwrap()[0].is_none() {
            assert!(waited < Duration::from_secs(5), "not written within 5 s");
            tokio::time::sleep(LINGER).await;
            waited += LINGER;
        }
        assert_eq!(store.statuses(&ids[2..]).await.unwrap()[0].as_ref().unwrap().version, "3.0.0");
    }

    /// `id`'s stored version (None: no status stored).
    async fn stored(store: &Arc<dyn Store>, id: &str) -> Option<String> {
        store.statuses(&[id.to_string()]).await.unwrap()[0].as_ref().map(|s| s.version.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_sockets_status_waits_for_the_agents_version_then_goes_in_one_write() {
        let (_dir, store, ids) = store_with_agents(&["upgraded", "same", "silent"]).await;
        let writes = StatusWrites::new(store.clone());
        for id in &ids {
            writes.put_until_versioned(id, row(AgentStatus::Connected, "1.0.0"));
        }
        tokio::time::sleep(LINGER * 5).await;
        for id in &ids {
            assert_eq!(stored(&store, id).await, None, "a new socket's row waits for the version");
        }
        // An upgraded agent reports its new version: the one row written is the new one.
        writes.put(&ids[0], row(AgentStatus::Connected, "2.0.0"));
        // One that reports the version it had: its row is written as it was.
        writes.versioned(&ids[1]);
        tokio::time::sleep(LINGER * 3).await;
        assert_eq!(stored(&store, &ids[0]).await.as_deref(), Some("2.0.0"));
        assert_eq!(stored(&store, &ids[1]).await.as_deref(), Some("1.0.0"));
        assert_eq!(stored(&store, &ids[2]).await, None, "the silent one waits out VERSION_WAIT");
        // One that never answers is written when the wait is out.
        tokio::time::sleep(VERSION_WAIT).await;
        assert_eq!(stored(&store, &ids[2]).await.as_deref(), Some("1.0.0"));

        // A disconnect waiting to be written keeps its time when the agent's next socket comes.
        writes.put(&ids[0], row(AgentStatus::Disconnected, "2.0.0"));
        writes.put_until_versioned(&ids[0], row(AgentStatus::Connected, "2.0.0"));
        tokio::time::sleep(LINGER * 3).await;
        let now = store.statuses(&ids[..1]).await.unwrap()[0].clone().unwrap();
        assert_eq!(now.status, AgentStatus::Connected, "written within the disconnect's linger");
        assert!(writes.waiting(&ids[0]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_disconnection_waits_for_the_agents_return_and_they_go_in_one_write() {
        let (_dir, store, ids) = store_with_agents(&["restarting", "gone"]).await;
        let writes = StatusWrites::new(store.clone());
        for id in &ids {
            writes.put(id, row(AgentStatus::Connected, "1.0.0"));
        }
        writes.flush_within(Duration::from_secs(5)).await.unwrap();
        for id in &ids {
            writes.put_disconnected(id, row(AgentStatus::Disconnected, "1.0.0"));
        }
        tokio::time::sleep(LINGER * 5).await;
        let connected = |s: Option<StatusRow>| s.map(|s| (s.status, s.version));
        for id in &ids {
            let stored = store.statuses(std::slice::from_ref(id)).await.unwrap().pop().flatten();
            assert_eq!(connected(stored), Some((AgentStatus::Connected, "1.0.0".into())), "not written yet");
            assert_eq!(writes.waiting(id).unwrap().status, AgentStatus::Disconnected, "what this node answers");
        }
        // One comes back at a new version within the wait: one write, the return.
        writes.put_until_versioned(&ids[0], row(AgentStatus::Connected, "1.0.0"));
        writes.put(&ids[0], row(AgentStatus::Connected, "2.0.0"));
        tokio::time::sleep(LINGER * 3).await;
        let stored = store.statuses(&ids).await.unwrap();
        assert_eq!(connected(stored[0].clone()), Some((AgentStatus::Connected, "2.0.0".into())));
        assert_eq!(connected(stored[1].clone()), Some((AgentStatus::Connected, "1.0.0".into())), "still waiting");
        // The other does not: its disconnection is written when the wait is out.
        tokio::time::sleep(RETURN_WAIT).await;
        let stored = store.statuses(&ids[1..]).await.unwrap().pop().flatten();
        assert_eq!(connected(stored), Some((AgentStatus::Disconnected, "1.0.0".into())));
        assert!(!writes.any_waiting());

        // Once the node stops, a disconnection is written at once: no return is waited for.
        writes.put(&ids[0], row(AgentStatus::Connected, "2.0.0"));
        writes.flush_within(Duration::from_secs(5)).await.unwrap();
        writes.closing();
        writes.put_disconnected(&ids[0], row(AgentStatus::Disconnected, "2.0.0"));
        tokio::time::sleep(LINGER * 3).await;
        let stored = store.statuses(&ids[..1]).await.unwrap().pop().flatten();
        assert_eq!(connected(stored), Some((AgentStatus::Disconnected, "2.0.0".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_put_between_two_batches_goes_with_the_next() {
        let (_dir, store, ids) = store_with_agents(&["waiting", "left"]).await;
        let writes = StatusWrites::new(store.clone());
        // A row waiting for its version keeps the writer going, a batch every LINGER from now.
        writes.put_until_versioned(&ids[0], row(AgentStatus::Connected, "1.0.0"));
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        // Just after a batch: the next one, LINGER later at most, takes it.
        writes.put(&ids[1], row(AgentStatus::Disconnected, "1.0.0"));
        tokio::time::sleep(LINGER).await;
        assert_eq!(stored(&store, &ids[1]).await.as_deref(), Some("1.0.0"), "written within LINGER");
        assert_eq!(stored(&store, &ids[0]).await, None);
    }
}
