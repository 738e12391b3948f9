//! The upgrade's persisted state: `upgrade.json` (the journal of the one upgrade in flight, with
//! Medplum's fields `previousVersion`, `targetVersion`, `callback` and ours) and `history.json`
//! (the last results). Every change is an atomic write, so a crash leaves the old or the new state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::util::{now_iso, write_atomic};

pub const JOURNAL: &str = "upgrade.json";
pub const HISTORY: &str = "history.json";
const HISTORY_LEN: usize = 50;

/// Where an upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The new binary is (about to be) installed and has not confirmed yet.
    Trial,
    /// The new binary failed its trial; the previous one is back and must report.
    RolledBack,
    /// The result was reported to the server.
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub previous_version: String,
    pub target_version: String,
    pub callback: Option<String>,
    pub state: State,
    pub started_at: String,
    pub sha256: String,
    /// How many times a process has been started on the new binary during its trial.
    pub starts: u32,
    pub installed_binary: PathBuf,
    pub previous_binary: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Journal {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(JOURNAL)
    }

    /// The journal, if one exists and can be read. An unreadable journal is logged and treated as
    /// none: the running binary is whole either way.
    pub fn load(state_dir: &Path) -> Option<Journal> {
        let path = Self::path(state_dir);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!(path = %path.display(), "ignoring an unreadable upgrade journal: {e}");
                None
            }
        }
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        write_atomic(&Self::path(state_dir), &serde_json::to_vec_pretty(self).expect("journal serializes"))
    }

    /// Whether a result still has to be reported.
    pub fn pending(&self) -> bool {
        self.state != State::Done
    }
}

/// One finished upgrade attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub from: String,
    pub to: String,
    /// `ok`; `failed` (before the swap: nothing of it ran); `broken` (the new binary failed its
    /// self-check); `rolled_back` (it failed its trial).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

impl Record {
    pub fn new(from: &str, to: &str, outcome: &str, reason: Option<String>) -> Record {
        Record { from: from.into(), to: to.into(), outcome: outcome.into(), reason, at: now_iso() }
    }
}

/// The last results, oldest first.
pub fn history(state_dir: &Path) -> Vec<Record> {
    std::fs::read(state_dir.join(HISTORY)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Appends a result, keeping the last few.
pub fn record(state_dir: &Path, r: Record) {
    let mut all = history(state_dir);
    all.push(r);
    let skip = all.len().saturating_sub(HISTORY_LEN);
    let kept = &all[skip..];
    if let Err(e) =
        write_atomic(&state_dir.join(HISTORY), &serde_json::to_vec_pretty(kept).expect("history serializes"))
    {
        tracing::error!("cannot write upgrade history: {e}");
    }
}

/// Why a version was rolled back or found broken here, if it was: such a version is not tried
/// again unless forced.
pub fn failed_before(history: &[Record], version: &str) -> Option<String> {
    let r = history.iter().rev().find(|r| r.to == version && matches!(r.outcome.as_str(), "rolled_back" | "broken"))?;
    let why = r.reason.clone().unwrap_or_else(|| "no reason recorded".into());
    Some(format!("{}: {why}", r.outcome.replace('_', " ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_with_medplum_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal {
            previous_version: "1.0.0".into(),
            target_version: "1.1.0".into(),
            callback: None,
            state: State::Trial,
            started_at: now_iso(),
            sha256: "ab".into(),
            starts: 0,
            installed_binary: "/opt/agent".into(),
            previous_binary: "/var/lib/edge-agent/previous/agent".into(),
            reason: None,
        };
        j.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(Journal::path(dir.path())).unwrap();
        for field in ["\"previousVersion\"", "\"targetVersion\"", "\"callback\": null", "\"state\": \"trial\""] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert_eq!(Journal::load(dir.path()), Some(j));
        std::fs::write(Journal::path(dir.path()), "{garbage").unwrap();
        assert_eq!(Journal::load(dir.path()), None);
    }

    #[test]
    fn history_keeps_the_last_records_and_finds_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..60 {
            record(dir.path(), Record::new("1.0.0", &format!("1.0.{i}"), "ok", None));
        }
        record(dir.path(), Record::new("1.0.0", "2.0.0", "rolled_back", Some("crashed".into())));
        let h = history(dir.path());
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(failed_before(&h, "2.0.0").as_deref(), Some("rolled back: crashed"));
        assert_eq!(failed_before(&h, "1.0.59"), None);
    }
}
