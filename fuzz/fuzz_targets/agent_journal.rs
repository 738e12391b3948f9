//! The agent's state files as a process reads them at start-up (`upgrade/store.rs`): the upgrade
//! journal and the history, any bytes. What the processes then do with them, through the store's
//! one door, must always work and end in a journal that takes a new request: the supervisor
//! counts a trial start (and rolls back past its limit), the new version notes a server that
//! cannot serve it yet (503), the worker reports a trial or a rollback
//! (`upgrade::report`), takes over an upgrade left before its swap or closes it. A corrupt journal
//! is a defined recovery, never a crash loop.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use edge_agent::state_dir::StateDir;
use edge_agent::supervisor::MAX_TRIAL_STARTS;
use edge_agent::upgrade::journal::{Ending, Event, Outcome, Reply, Request, State};
use edge_agent::upgrade::report;
use edge_agent::upgrade::runner::MAX_RESUMES;
use edge_agent::upgrade::store::{failed_before, Store};
use edge_agent_wire::{Callback, Target};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("fuzz-journal").tempdir().unwrap().keep())
}

fuzz_target!(|data: &[u8]| {
    // The journal, then (after a 0xff byte, which no JSON text holds) the history.
    let (journal, history) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let state = StateDir::new(dir());
    fs::write(state.journal(), journal).unwrap();
    fs::write(state.history(), history).unwrap();
    let store = Store::new(state);
    let loaded = store.load();
    let records = store.history();
    for r in &records {
        if let Some(v) = &r.from {
            let _ = failed_before(&records, v);
        }
    }
    let _ = report::known(&loaded, &Callback::from("cb-fuzz"));

    // The new version on trial, told by the server that it cannot serve yet (503): noted, and the
    // trial goes on (the supervisor waits for the server).
    if store.on_trial() {
        let at = loaded.server_unavailable_at.unwrap_or(0).saturating_add(1);
        let j = store.apply(Event::ServerUnavailable(at)).expect("a 503 during the trial is noted");
        assert_eq!((j.state, j.server_unavailable_at), (State::Trial, Some(at)));
    }
    // The supervisor: a start of the version on trial, counted; past the limit, rolled back.
    if store.on_trial() {
        let j = store.apply(Event::TrialStart).expect("a trial start is counted");
        if j.starts > MAX_TRIAL_STARTS {
            store.apply_if(Some(&j.id), Event::RollBack("fuzz".into())).expect("a trial rolls back");
        }
    }
    // The worker, once connected: the report of a trial or a rollback, which closes the journal.
    let j = store.load();
    if let Some((env, ending)) = report::pending(&j) {
        let _ = env.to_json();
        report::reported(&store, &j, ending);
        assert_eq!(store.load().state, State::Done, "a reported upgrade is closed");
    }
    // The worker: an upgrade left before its swap is taken over, or closed past its limit.
    let j = store.load();
    if j.state.before_swap() {
        let j = store.apply_if(Some(&j.id), Event::Resume).expect("an unfinished upgrade is taken over");
        if j.resumes > MAX_RESUMES || j.callback.is_none() {
            let end =
                Ending { reply: Reply::Error("interrupted".into()), outcome: Some(Outcome::Failed), reason: None };
            store.apply_if(Some(&j.id), Event::Close(end)).expect("an interrupted upgrade closes");
        }
    }
    // Whatever the files held, what was written reads back, and a new request is taken (or it
    // waits for its trial, or a forced one replaces the unfinished one).
    let j = store.load();
    let request = Request {
        id: "fuzz-request".into(),
        callback: Some(Callback::from("cb-fuzz-2")),
        target: Target::Latest,
        force: true,
        running: semver::Version::new(1, 0, 0),
        at: "2026-01-01T00:00:00Z".into(),
    };
    match j.state {
        State::Trial => {}
        State::RolledBack => panic!("a rollback is reported before anything else: {j:?}"),
        _ => {
            let next = store.apply(Event::Accept(request)).expect("a new request is accepted");
            assert_eq!(store.load(), next);
        }
    }
});
