//! The only writer of the upgrade's persisted state: `upgrade.json` (the [`Journal`]) and
//! `history.json` (the last results). Every change is one read-modify-write under an exclusive
//! lock on `upgrade.lock` (the worker, the supervisor and the host commands are separate
//! processes), goes through [`transition`], and is an atomic write: a crash leaves the old or the
//! new state.

use std::fs;
use std::path::PathBuf;

use semver::Version;
use serde::{Deserialize, Serialize};

pub use super::journal::Outcome;
use super::journal::{transition, Event, Journal, State, TransitionError};
use crate::state_dir::StateDir;
use crate::util::{now_iso, write_atomic};

const HISTORY_LEN: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot lock {path}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Refused(#[from] TransitionError),
    #[error("the upgrade journal moved on to another request")]
    Superseded,
}

/// One finished upgrade attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub from: String,
    pub to: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

impl Record {
    pub fn new(from: &str, to: &str, outcome: Outcome, reason: Option<String>) -> Record {
        Record { from: from.into(), to: to.into(), outcome, reason, at: now_iso() }
    }
}

/// The upgrade state of one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: StateDir,
}

impl Store {
    pub fn new(dir: StateDir) -> Store {
        Store { dir }
    }

    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// The journal as it stands. An unreadable journal is logged and read as idle: the installed
    /// binary is whole either way.
    pub fn load(&self) -> Journal {
        let path = self.dir.journal();
        let Ok(text) = fs::read_to_string(&path) else { return Journal::idle() };
        serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::error!(path = %path.display(), "ignoring an unreadable upgrade journal: {e}");
            Journal::idle()
        })
    }

    /// Applies `event` to the journal, under the lock; the new journal. A closing event also
    /// appends the result to the history.
    pub fn apply(&self, event: Event) -> Result<Journal, StoreError> {
        self.apply_if(None, event)
    }

    /// [`Self::apply`], only while the journal is still the upgrade `id` (a task replaced by a
    /// forced request must not touch its successor).
    pub fn apply_if(&self, id: Option<&str>, event: Event) -> Result<Journal, StoreError> {
        let _lock = self.lock()?;
        let current = self.load();
        if id.is_some_and(|id| id != current.id) {
            return Err(StoreError::Superseded);
        }
        let record = match &event {
            Event::Close(end) => end.outcome.map(|o| (o, end.reason.clone())),
            _ => None,
        };
        let next = transition(&current, event)?;
        let path = self.dir.journal();
        write_atomic(&path, &serde_json::to_vec_pretty(&next).expect("the journal serializes"))
            .map_err(|source| StoreError::Write { path, source })?;
        if let Some((outcome, reason)) = record {
            let from = next.previous_version.as_ref().map_or_else(|| "unknown".into(), Version::to_string);
            let reason = reason.or_else(|| next.reason.clone());
            self.append(Record::new(&from, &next.target_label(), outcome, reason))?;
        }
        Ok(next)
    }

    /// Appends a result that is not a journal transition (a manual rollback), under the lock.
    pub fn record(&self, r: Record) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        self.append(r)
    }

    /// The journal and the history as one consistent picture (taken under the lock: a closing
    /// transition writes both).
    pub fn snapshot(&self) -> Result<(Journal, Vec<Record>), StoreError> {
        let _lock = self.lock()?;
        Ok((self.load(), self.history()))
    }

    /// The last results, oldest first.
    pub fn history(&self) -> Vec<Record> {
        fs::read(self.dir.history()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn append(&self, r: Record) -> Result<(), StoreError> {
        let mut all = self.history();
        all.push(r);
        let skip = all.len().saturating_sub(HISTORY_LEN);
        let path = self.dir.history();
        write_atomic(&path, &serde_json::to_vec_pretty(&all[skip..]).expect("history serializes"))
            .map_err(|source| StoreError::Write { path, source })
    }

    fn lock(&self) -> Result<fs::File, StoreError> {
        let path = self.dir.lock();
        let lock_error = |source| StoreError::Lock { path: path.clone(), source };
        fs::create_dir_all(self.dir.path()).map_err(lock_error)?;
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(lock_error)?;
        file.lock().map_err(lock_error)?;
        Ok(file)
    }

    /// Whether a new version is on trial.
    pub fn on_trial(&self) -> bool {
        self.load().state == State::Trial
    }
}

/// Why a version was rolled back or found broken here, if it was: such a version is not tried
/// again unless forced.
pub fn failed_before(history: &[Record], version: &Version) -> Option<String> {
    let version = version.to_string();
    let r =
        history.iter().rev().find(|r| r.to == version && matches!(r.outcome, Outcome::RolledBack | Outcome::Broken))?;
    let why = r.reason.clone().unwrap_or_else(|| "no reason recorded".into());
    let what = if r.outcome == Outcome::Broken { "broken" } else { "rolled back" };
    Some(format!("{what}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::journal::{Ending, Reply, Request};

    fn new_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(StateDir::new(dir.path()));
        (dir, store)
    }

    fn accept(store: &Store, id: &str, force: bool) -> Result<Journal, StoreError> {
        let running = Version::new(1, 0, 0);
        let version = Some(Version::new(2, 0, 0));
        store.apply(Event::Accept(Request { id: id.into(), callback: None, version, force, running, at: now_iso() }))
    }

    #[test]
    fn history_keeps_the_last_records_and_finds_rollbacks() {
        let (_d, store) = new_store();
        for i in 0..60 {
            store.record(Record::new("1.0.0", &format!("1.0.{i}"), Outcome::Ok, None)).unwrap();
        }
        store.record(Record::new("1.0.0", "2.0.0", Outcome::RolledBack, Some("crashed".into()))).unwrap();
        let h = store.history();
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(failed_before(&h, &Version::new(2, 0, 0)).as_deref(), Some("rolled back: crashed"));
        assert_eq!(failed_before(&h, &Version::new(1, 0, 59)), None);
    }

    #[test]
    fn transitions_persist_and_a_close_is_recorded_once() {
        let (_d, store) = new_store();
        assert_eq!(store.load().state, State::Idle);
        accept(&store, "a", false).unwrap();
        assert!(matches!(accept(&store, "b", false), Err(StoreError::Refused(_))));
        let end = || Ending { reply: Reply::Error("no".into()), outcome: Some(Outcome::Failed), reason: None };
        assert!(matches!(store.apply_if(Some("b"), Event::Close(end())), Err(StoreError::Superseded)));
        store.apply_if(Some("a"), Event::Close(end())).unwrap();
        assert_eq!(store.load().state, State::Done);
        assert_eq!(store.history().len(), 1);
        assert_eq!(store.history()[0].outcome, Outcome::Failed);
        std::fs::write(store.dir().journal(), "{garbage").unwrap();
        assert_eq!(store.load().state, State::Idle);
    }

    #[test]
    fn concurrent_writers_lose_no_update() {
        let (_d, store) = new_store();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        store.record(Record::new("1.0.0", &format!("{i}.{j}.0"), Outcome::Ok, None)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.history().len(), HISTORY_LEN.min(80));
        let (_d, store) = new_store();
        accept(&store, "a", false).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        store.apply(Event::Resume).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.load().resumes, 80, "every read-modify-write under the lock");
    }
}
