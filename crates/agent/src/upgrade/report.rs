//! Answers from the journal. After the restart (protocol.md §3.4) the process that starts with a
//! new version on trial, or with a rolled-back one, reports the result with the journal's
//! callback once its handshake completes, and only then closes the journal. A request whose
//! callback the journal already knows (the server redelivered it) gets the same answer, and never
//! a second upgrade.

use edge_agent_base::build_info::{version, version_str};
use edge_agent_wire::{Callback, Envelope, Message};

use super::journal::{Ending, Event, Journal, Outcome, Reply, State};
use super::store::Store;
use super::wire::{self, WireText};

/// The message for an answer.
pub fn message(reply: &Reply) -> Message {
    match wire::reply_text(reply) {
        None => Message::UpgradeResponse { status_code: 200 },
        Some(body) => Message::error(body),
    }
}

/// What the journal knows of a request's callback.
#[derive(Debug, PartialEq)]
pub enum Known {
    /// Answered already: the same answer again.
    Answered(Reply),
    /// Its upgrade is still running: the answer follows when it ends.
    Running,
    /// A new request.
    New,
}

pub fn known(journal: &Journal, callback: &Callback) -> Known {
    if let Some(reply) = journal.answer_for(callback) {
        return Known::Answered(reply.clone());
    }
    if journal.runs(callback) {
        return Known::Running;
    }
    Known::New
}

/// The report a trial or a rollback calls for, if the journal holds one. A trial no process was
/// started for yet (the supervisor counts each start before it) is the swap of a worker about to
/// restart into it, this one or a sibling it took over from: not this process's to report.
pub fn pending(journal: &Journal) -> Option<(Envelope, Ending)> {
    if journal.state == State::Trial && journal.starts == 0 {
        return None;
    }
    let target = journal.target();
    let failed =
        |why: &str| Reply::Error(wire::text(WireText::NotUpgraded { target: &target, running: version_str(), why }));
    let ending = match journal.state {
        State::Trial if journal.target_version.as_ref() == Some(version()) => {
            Ending { reply: Reply::Ok, outcome: Some(Outcome::Ok), reason: None }
        }
        State::Trial => Ending {
            reply: failed(": the new binary was not installed"),
            outcome: Some(Outcome::Failed),
            reason: Some("the new binary was not installed".into()),
        },
        State::RolledBack => {
            let why = journal.reason.as_deref().unwrap_or("the new version failed");
            Ending { reply: failed(&format!(". Rolled back: {why}")), outcome: Some(Outcome::RolledBack), reason: None }
        }
        _ => return None,
    };
    Some((message(&ending.reply).reply_to(journal.callback.clone()), ending))
}

/// The report was sent: the journal is done and the result joins the history.
pub fn reported(store: &Store, journal: &Journal, ending: Ending) {
    let outcome = ending.outcome;
    match store.apply_if(Some(&journal.id), Event::Close(ending)) {
        Ok(j) => tracing::info!(
            from = ?j.previous_version.as_ref().map(|v| v.to_string()),
            to = %j.target(),
            ?outcome,
            "upgrade result reported"
        ),
        Err(e) => tracing::error!("cannot close the upgrade journal: {}", edge_agent_base::error::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(starts: u32) -> Journal {
        let target = semver::Version::new(version().major, version().minor + 1, 0);
        Journal {
            state: State::Trial,
            target_version: Some(target),
            callback: Some("Agent/a-1".into()),
            starts,
            ..Journal::idle()
        }
    }

    #[test]
    fn a_swap_that_no_process_started_on_yet_is_not_reported_by_the_old_binary() {
        assert!(pending(&trial(0)).is_none());
    }

    #[test]
    fn the_old_binary_started_on_trial_reports_the_new_one_was_not_installed() {
        let (report, ending) = pending(&trial(1)).unwrap();
        assert_eq!(report.callback.as_ref().map(Callback::as_str), Some("Agent/a-1"));
        assert_eq!(ending.outcome, Some(Outcome::Failed));
        assert_eq!(ending.reason.as_deref(), Some("the new binary was not installed"));
    }
}
