//! After the restart (protocol.md §3.4): the process that starts with a pending journal reports the
//! result with the journal's callback once its handshake completes, and only then marks the
//! journal done. Until then the new version is on trial.

use std::path::Path;

use super::journal::{self, Journal, Record, State};
use crate::agent::VERSION;
use crate::protocol::{Envelope, Message};

/// The report a pending journal calls for, if there is one.
pub fn pending(state_dir: &Path) -> Option<(Journal, Envelope)> {
    let j = Journal::load(state_dir).filter(Journal::pending)?;
    let failed = |why: &str| {
        let body = format!(
            "Failed to upgrade to version {}. Agent still running with version {VERSION}{why}",
            j.target_version
        );
        Message::error(body)
    };
    let msg = match j.state {
        State::Trial if j.target_version == VERSION => Message::UpgradeResponse { status_code: 200 },
        State::Trial => failed(": the new binary was not installed"),
        State::RolledBack => {
            failed(&format!(". Rolled back: {}", j.reason.as_deref().unwrap_or("the new version failed")))
        }
        State::Done => return None,
    };
    let env = msg.reply_to(j.callback.clone());
    Some((j, env))
}

/// The report was sent: the journal is done and the result joins the history.
pub fn reported(state_dir: &Path, mut j: Journal) {
    let (outcome, reason) = match j.state {
        State::Trial if j.target_version == VERSION => ("ok", None),
        State::Trial => ("failed", Some("the new binary was not installed".to_string())),
        _ => ("rolled_back", j.reason.clone()),
    };
    tracing::info!(from = %j.previous_version, to = %j.target_version, outcome, "upgrade result reported");
    journal::record(state_dir, Record::new(&j.previous_version, &j.target_version, outcome, reason));
    j.state = State::Done;
    if let Err(e) = j.save(state_dir) {
        tracing::error!("cannot mark the upgrade journal done: {e}");
    }
}
