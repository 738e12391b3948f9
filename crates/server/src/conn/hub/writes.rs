//! The status writes of the agents on this node, gathered: a row waits at most [`LINGER`], and
//! every row waiting then goes to the store in one statement. A fleet reconnecting (after a
//! restart, or through a rollout) costs the store one write per few hundred agents rather than
//! one per agent and change. A row the store refused waits for the next write or the next
//! refresh, unless a newer one for its agent replaced it meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::agent::StatusRow;
use crate::store::{Store, StoreError};

/// How long a status waits for others to be written with it.
pub const LINGER: Duration = Duration::from_millis(20);
/// Rows in one statement at most.
const MAX_ROWS: usize = 1000;

pub struct StatusWrites {
    store: Arc<dyn Store>,
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    /// Each agent's latest status not written yet.
    rows: HashMap<String, StatusRow>,
    /// Whether a writer runs (it writes what waits until nothing does).
    writing: bool,
}

impl StatusWrites {
    pub fn new(store: Arc<dyn Store>) -> Arc<StatusWrites> {
        Arc::new(StatusWrites { store, state: Default::default() })
    }

    /// `row` is `agent_id`'s latest status: written within [`LINGER`] (replacing one of the
    /// agent's that waits).
    pub fn put(self: &Arc<Self>, agent_id: &str, row: StatusRow) {
        let start = {
            let mut w = self.state.lock().unwrap();
            w.rows.insert(agent_id.to_string(), row);
            !std::mem::replace(&mut w.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write());
        }
    }

    /// `agent_id`'s status that waits to be written, if one does.
    pub fn waiting(&self, agent_id: &str) -> Option<StatusRow> {
        self.state.lock().unwrap().rows.get(agent_id).cloned()
    }

    /// Writes again what the store refused, if anything waits and no writer runs.
    pub fn retry(self: &Arc<Self>) {
        let start = {
            let mut w = self.state.lock().unwrap();
            !w.rows.is_empty() && !std::mem::replace(&mut w.writing, true)
        };
        if start {
            tokio::spawn(self.clone().write());
        }
    }

    /// Writes everything waiting now (at shutdown), after the writer that runs, if one does.
    pub async fn flush(&self) -> Result<(), StoreError> {
        loop {
            let rows = {
                let mut w = self.state.lock().unwrap();
                (!std::mem::replace(&mut w.writing, true)).then(|| w.rows.drain().collect::<Vec<_>>())
            };
            let Some(rows) = rows else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let written = self.store_all(rows).await;
            self.state.lock().unwrap().writing = false;
            return written;
        }
    }

    async fn store_all(&self, rows: Vec<(String, StatusRow)>) -> Result<(), StoreError> {
        for chunk in rows.chunks(MAX_ROWS) {
            if let Err(e) = self.store.save_statuses(chunk).await {
                self.keep(rows);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Puts back rows the store refused, each unless a newer one for its agent came meanwhile.
    fn keep(&self, rows: Vec<(String, StatusRow)>) {
        let mut w = self.state.lock().unwrap();
        for (agent, row) in rows {
            w.rows.entry(agent).or_insert(row);
        }
    }

    /// Writes what waits, a batch every [`LINGER`], until nothing does or the store fails.
    async fn write(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LINGER).await;
            let rows: Vec<(String, StatusRow)> = {
                let mut w = self.state.lock().unwrap();
                if w.rows.is_empty() {
                    w.writing = false;
                    return;
                }
                let agents: Vec<String> = w.rows.keys().take(MAX_ROWS).cloned().collect();
                agents.into_iter().filter_map(|a| w.rows.remove_entry(&a)).collect()
            };
            let n = rows.len();
            if let Err(e) = self.store_all(rows).await {
                tracing::warn!(agents = n, "cannot save agents' statuses (retried at the next refresh): {e}");
                self.state.lock().unwrap().writing = false;
                return;
            }
        }
    }
}
