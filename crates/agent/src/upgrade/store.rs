//! The only writer of the upgrade's persisted state: `upgrade.json` (the [`Journal`]) and
//! `history.json` (the last results). Every change is one read-modify-write under an exclusive
//! lock on `upgrade.lock` (the worker, the supervisor and the host commands are separate
//! processes), goes through [`transition`], and is an atomic write: a crash leaves the old or the
//! new state.

use std::fs;
use std::path::PathBuf;

use edge_agent_wire::Target;
use semver::Version;
use serde::{Deserialize, Serialize};

pub use super::journal::Outcome;
use super::journal::{transition, Event, Journal, State, TransitionError};
use crate::state_dir::StateDir;
use edge_agent_base::fs::write_atomic;
use edge_agent_base::time::now_iso;

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
    /// The version that ran before; `unknown` in the file when it could not be told.
    #[serde(with = "version_or_unknown")]
    pub from: Option<Version>,
    /// What the upgrade was to: a version, or `latest` when it ended before that was resolved.
    pub to: Target,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: String,
}

impl Record {
    pub fn new(from: Option<Version>, to: Target, outcome: Outcome, reason: Option<String>) -> Record {
        Record { from, to, outcome, reason, at: now_iso() }
    }
}

/// A version, or `unknown`, as `history.json` has always written it.
mod version_or_unknown {
    use semver::Version;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Version>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str("unknown"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Version>, D::Error> {
        Ok(edge_agent_wire::parse_version(&String::deserialize(d)?).ok())
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
            let reason = reason.or_else(|| next.reason.clone());
            self.append(Record::new(next.previous_version.clone(), next.target(), outcome, reason))?;
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
    let r = history
        .iter()
        .rev()
        .find(|r| r.to.version() == Some(version) && matches!(r.outcome, Outcome::RolledBack | Outcome::Broken))?;
    let why = r.reason.clone().unwrap_or_else(|| "no reason recorded".into());
    let what = if r.outcome == Outcome::Broken { "broken" } else { "rolled back" };
    Some(format!("{what}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::journal::{Ending, Reply, Request};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn to(s: &str) -> Target {
        Target::Exact(v(s))
    }

    #[test]
    fn records_read_as_older_agents_wrote_them() {
        let old = r#"[{"from":"unknown","to":"latest","outcome":"failed","at":"t"},
                      {"from":"1.0.0","to":"1.1.0","outcome":"ok","at":"t"}]"#;
        let records: Vec<Record> = serde_json::from_str(old).unwrap();
        assert_eq!((records[0].from.clone(), records[0].to.clone()), (None, Target::Latest));
        assert_eq!((records[1].from.clone(), records[1].to.clone()), (Some(v("1.0.0")), to("1.1.0")));
        let back = serde_json::to_value(&records).unwrap();
        assert_eq!((back[0]["from"].as_str(), back[1]["to"].as_str()), (Some("unknown"), Some("1.1.0")));
    }

    fn new_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(StateDir::new(dir.path()));
        (dir, store)
    }

    fn accept(store: &Store, id: &str, force: bool) -> Result<Journal, StoreError> {
        let running = Version::new(1, 0, 0);
        let target = Target::Exact(Version::new(2, 0, 0));
        store.apply(Event::Accept(Request { id: id.into(), callback: None, target, force, running, at: now_iso() }))
    }

    #[test]
    fn history_keeps_the_last_records_and_finds_rollbacks() {
        let (_d, store) = new_store();
        for i in 0..60 {
            store.record(Record::new(Some(v("1.0.0")), to(&format!("1.0.{i}")), Outcome::Ok, None)).unwrap();
        }
        store.record(Record::new(Some(v("1.0.0")), to("2.0.0"), Outcome::RolledBack, Some("crashed".into()))).unwrap();
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
                        store.record(Record::new(None, to(&format!("{i}.{j}.0")), Outcome::Ok, None)).unwrap();
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
