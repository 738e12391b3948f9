//! Upgrade results per agent, as the agents reported them: every `$upgrade` answer (from the REST
//! API or the web page) is recorded here, counted in the metrics and pushed to the open pages.
//! The history lives in the same SQLite file as the agents, in tables of its own.

use std::path::Path;
use std::sync::Mutex;

use axum::http::StatusCode;
use rusqlite::{params, Connection};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::db::StoreError;
use super::AppState;
use crate::util;

/// How an upgrade ended, as counted in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    RolledBack,
    TimedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Succeeded, Outcome::Failed, Outcome::RolledBack, Outcome::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::TimedOut => "timed_out",
        }
    }

    fn parse(s: &str) -> Outcome {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s).unwrap_or(Outcome::Failed)
    }

    /// The outcome of an `$upgrade` answer: its HTTP status and the text the agent (or the server's
    /// wait) gave. A new version that did not hold is reported as `Failed to upgrade to version …`
    /// (protocol.md §3.4), or with the rollback's reason.
    pub fn classify(status: StatusCode, text: &str) -> Outcome {
        if status.is_success() {
            Outcome::Succeeded
        } else if text == "Timeout" {
            Outcome::TimedOut
        } else if text.starts_with("Failed to upgrade to version") || text.to_lowercase().contains("rolled back") {
            Outcome::RolledBack
        } else {
            Outcome::Failed
        }
    }
}

/// One recorded upgrade attempt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeResult {
    pub agent_id: String,
    pub at: String,
    /// The version asked for; `None` for "latest".
    pub requested: Option<String>,
    pub force: bool,
    /// The version the agent reported when it was asked.
    pub from: String,
    pub outcome: Outcome,
    /// `All OK`, or the reason exactly as the agent reported it.
    pub text: String,
}

/// What the open pages are told, as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    /// An upgrade answer, with the agent's last known status after it.
    Result { result: UpgradeResult, status: String, version: String },
}

pub struct Results {
    conn: Mutex<Connection>,
    events: broadcast::Sender<Event>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS upgrade_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    at TEXT NOT NULL,
    requested TEXT,
    force INTEGER NOT NULL,
    from_version TEXT NOT NULL,
    outcome TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS upgrade_results_agent ON upgrade_results(agent_id, id);
CREATE TABLE IF NOT EXISTS upgrade_last (
    agent_id TEXT PRIMARY KEY,
    result_id INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at TEXT NOT NULL
);
";

impl Results {
    /// Opens its own connection to the server's database in `dir` (WAL allows several).
    pub fn open(dir: &Path) -> Result<Results, StoreError> {
        let path = dir.join("edge-agent-server.db");
        let open_error = |source| StoreError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(&path).map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        conn.execute_batch(super::web::fleet::INDEXES).map_err(open_error)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Results { conn: Mutex::new(conn), events })
    }

    /// The connection, for the read-only fleet queries of the web page.
    pub fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn insert(&self, r: &UpgradeResult) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO upgrade_results (agent_id, at, requested, force, from_version, outcome, text)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![r.agent_id, r.at, r.requested, r.force, r.from, r.outcome.as_str(), r.text],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT OR REPLACE INTO upgrade_last (agent_id, result_id, outcome, at) VALUES (?1, ?2, ?3, ?4)",
            params![r.agent_id, id, r.outcome.as_str(), r.at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` results of one agent, newest first.
    pub fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<UpgradeResult>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, at, requested, force, from_version, outcome, text FROM upgrade_results
             WHERE agent_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![agent_id, limit as i64], result_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Each agent's last result, failures first, then newest first.
    pub fn latest(&self, limit: usize) -> Result<Vec<(String, UpgradeResult)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "SELECT r.agent_id, r.at, r.requested, r.force, r.from_version, r.outcome, r.text, a.name
             FROM upgrade_last l JOIN upgrade_results r ON r.id = l.result_id JOIN agents a ON a.id = l.agent_id
             ORDER BY l.outcome = 'succeeded', l.at DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get::<_, String>(7)?, result_row(r)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn result_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UpgradeResult> {
    Ok(UpgradeResult {
        agent_id: r.get(0)?,
        at: r.get(1)?,
        requested: r.get(2)?,
        force: r.get(3)?,
        from: r.get(4)?,
        outcome: Outcome::parse(&r.get::<_, String>(5)?),
        text: r.get(6)?,
    })
}

/// An upgrade request on its way: what was asked, of whom, from which version.
pub struct Started {
    agent_id: String,
    requested: Option<String>,
    force: bool,
    from: String,
}

impl Started {
    pub fn new(app: &AppState, agent_id: &str, requested: Option<&str>, force: bool) -> Started {
        let from = app.hub.status(agent_id).map(|s| s.version).unwrap_or_else(|| "unknown".into());
        Started { agent_id: agent_id.to_string(), requested: requested.map(str::to_owned), force, from }
    }

    /// Records the answer (`status`, `OperationOutcome`), counts it, and tells the open pages.
    pub fn finish(self, app: &AppState, status: StatusCode, outcome: &Value) {
        let text = outcome["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
        let result = UpgradeResult {
            agent_id: self.agent_id,
            at: util::now_iso(),
            requested: self.requested,
            force: self.force,
            from: self.from,
            outcome: Outcome::classify(status, &text),
            text,
        };
        app.metrics.upgrade_result(result.outcome);
        if let Err(e) = app.results.insert(&result) {
            tracing::error!(agent_id = result.agent_id, "cannot record upgrade result: {e}");
        }
        let now = app.hub.status(&result.agent_id);
        let (status, version) = now.map(|s| (s.status, s.version)).unwrap_or(("unknown".into(), "unknown".into()));
        let _ = app.results.events.send(Event::Result { result, status, version });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_answers() {
        let table = [
            (200, "All OK", Outcome::Succeeded),
            (400, "Timeout", Outcome::TimedOut),
            (400, "Agent not connected", Outcome::Failed),
            (400, "Failed to upgrade to version 1.2.0. Agent still running with version 1.1.0", Outcome::RolledBack),
            (400, "Rolled back: rolled back by the operator (agent rollback)", Outcome::RolledBack),
            (400, "Error during upgrading to version 'v9.9.9'. '9.9.9' is not a valid version", Outcome::Failed),
        ];
        for (code, text, want) in table {
            assert_eq!(Outcome::classify(StatusCode::from_u16(code).unwrap(), text), want, "{text}");
        }
    }
}
