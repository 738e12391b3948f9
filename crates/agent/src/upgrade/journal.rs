//! The upgrade journal as a state machine: typed [`State`]s and [`Event`]s, and one pure
//! [`transition`] that refuses what is not allowed with a [`TransitionError`] naming both. The
//! journal is persisted as `upgrade.json` (Medplum's fields `previousVersion`, `targetVersion`,
//! `callback`, plus ours) by [`super::store`], the only writer.
//!
//! ```text
//!  Idle/Done ─Accept─▶ Accepted ─Resolve─▶ Downloading ─Downloaded─▶ Verifying ─Swap─▶ Trial
//!                       │  ▲ Resume (a new worker takes it over)  │                    │ ▲ TrialStart,
//!                       │  │                                      │                    │ │ ServerUnavailable
//!                       └──┴────────── Close (up to date, failed) ┴──────▶ Done ◀─Close┤
//!                                                                            ▲         RollBack
//!                                                                            └─Close── RolledBack
//! ```

use std::path::PathBuf;

use edge_agent_wire::{Callback, Target};
use semver::Version;
use serde::{Deserialize, Serialize};

/// Where an upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No upgrade was ever journaled here.
    Idle,
    /// A request is accepted and journaled; nothing is downloaded yet.
    Accepted,
    /// The release is resolved; its download is staged beside the installed binary.
    Downloading,
    /// The download is complete; checksum, signature and self-check are running.
    Verifying,
    /// The new binary is installed (or about to be) and has not confirmed yet.
    Trial,
    /// The new binary failed its trial; the previous one is back and must report.
    RolledBack,
    /// The upgrade ended and its answer is in [`Journal::reply`].
    Done,
}

pub const STATES: [State; 7] =
    [State::Idle, State::Accepted, State::Downloading, State::Verifying, State::Trial, State::RolledBack, State::Done];

impl State {
    /// Before the swap: the installed binary is untouched and a new worker can take the upgrade over.
    pub fn before_swap(self) -> bool {
        matches!(self, State::Accepted | State::Downloading | State::Verifying)
    }
}

/// The answer an upgrade's callback gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    /// `agent:upgrade:response`, status 200.
    Ok,
    /// `agent:error` with this body.
    Error(String),
    /// A forced request replaced this upgrade (to this target) before its swap.
    Cancelled(Target),
}

/// A callback that was answered, kept so that a redelivered request gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub callback: Callback,
    pub reply: Reply,
}

/// How many answered callbacks the journal remembers.
pub const ANSWERED_KEPT: usize = 20;

/// An accepted request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// A random id: a task that was replaced by a forced request must not close its successor.
    pub id: String,
    pub callback: Option<Callback>,
    /// What was asked for.
    pub target: Target,
    pub force: bool,
    /// The running version.
    pub running: Version,
    /// When it was accepted (ISO 8601): the caller's clock, so that this module reads none.
    pub at: String,
}

/// What was swapped in.
#[derive(Debug, Clone, PartialEq)]
pub struct Swapped {
    pub installed_binary: PathBuf,
    pub previous_binary: PathBuf,
}

/// How a finished upgrade attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Before the swap: nothing of it ran.
    Failed,
    /// The new binary failed its self-check.
    Broken,
    /// It failed its trial.
    RolledBack,
    /// `agent rollback` on the host.
    ManualRollback,
}

/// How an upgrade ended, for its answer and for the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub reply: Reply,
    /// What goes into `history.json`; None for a no-op (already up to date).
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
}

/// Something that happens to an upgrade.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request is accepted (before any network I/O). With `force`, it replaces one before its swap.
    Accept(Request),
    /// The release is resolved to this version.
    Resolve(Version),
    /// The staged download is complete, with this sha256.
    Downloaded(String),
    /// A new worker found the upgrade unfinished before its swap and takes it over.
    Resume,
    /// The new binary is renamed over the installed one (the journal is written first).
    Swap(Swapped),
    /// The supervisor starts a process on the new binary during its trial.
    TrialStart,
    /// During its trial, the new binary reached the server, which answered that it cannot serve
    /// now (its store is down: 503), at this time (ms since the epoch). The supervisor waits for
    /// the server rather than rolling back a version whose way to it works.
    ServerUnavailable(i64),
    /// The new binary failed its trial, or the operator rolled it back; the previous one is back.
    RollBack(String),
    /// The upgrade ends with this answer.
    Close(Ending),
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Accept(r) if r.force => "accept a forced request",
            Event::Accept(_) => "accept a request",
            Event::Resolve(_) => "resolve the release",
            Event::Downloaded(_) => "finish the download",
            Event::Resume => "resume",
            Event::Swap(_) => "swap the binary",
            Event::TrialStart => "start a trial",
            Event::ServerUnavailable(_) => "note the server unavailable",
            Event::RollBack(_) => "roll back",
            Event::Close(_) => "close",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} when the upgrade journal is {state:?}")]
pub struct TransitionError {
    pub state: State,
    pub event: &'static str,
}

/// The journal of the current (or last) upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    pub state: State,
    #[serde(default)]
    pub id: String,
    /// Medplum's field: the version that ran when the request was accepted.
    pub previous_version: Option<Version>,
    /// Medplum's field: the version asked for, or resolved from "latest".
    pub target_version: Option<Version>,
    /// Medplum's field: the request's callback; None for an upgrade started on the host.
    pub callback: Option<Callback>,
    #[serde(default)]
    pub force: bool,
    /// Whether the target was named in the request (else "latest" was asked for).
    #[serde(default)]
    pub explicit: bool,
    #[serde(default, alias = "startedAt")]
    pub accepted_at: String,
    /// How many times a new worker took this upgrade over after its process died.
    #[serde(default)]
    pub resumes: u32,
    #[serde(default)]
    pub sha256: Option<String>,
    /// How many times a process has been started on the new binary during its trial.
    #[serde(default)]
    pub starts: u32,
    /// When the new binary last found the server up but unable to serve, during its trial (ms
    /// since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_unavailable_at: Option<i64>,
    #[serde(default)]
    pub installed_binary: Option<PathBuf>,
    #[serde(default)]
    pub previous_binary: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Reply>,
    /// Recently answered callbacks, newest last.
    #[serde(default)]
    pub answered: Vec<Answered>,
}

impl Journal {
    /// No upgrade yet.
    pub fn idle() -> Journal {
        Journal {
            state: State::Idle,
            id: String::new(),
            previous_version: None,
            target_version: None,
            callback: None,
            force: false,
            explicit: false,
            accepted_at: String::new(),
            resumes: 0,
            sha256: None,
            starts: 0,
            server_unavailable_at: None,
            installed_binary: None,
            previous_binary: None,
            reason: None,
            reply: None,
            answered: vec![],
        }
    }

    /// The answer a callback got, if this journal remembers one.
    pub fn answer_for(&self, callback: &Callback) -> Option<&Reply> {
        if self.state == State::Done && self.callback.as_ref() == Some(callback) {
            return self.reply.as_ref();
        }
        self.answered.iter().rev().find(|a| &a.callback == callback).map(|a| &a.reply)
    }

    /// Whether this journal's own upgrade, still unfinished, carries `callback`.
    pub fn runs(&self, callback: &Callback) -> bool {
        self.state != State::Done && self.state != State::Idle && self.callback.as_ref() == Some(callback)
    }

    /// The target as far as it is known: the version asked for or resolved, else `latest`.
    pub fn target(&self) -> Target {
        Target::from(self.target_version.clone())
    }

    /// What the request asked for, as the wire texts name it: its version, or the latest.
    pub fn asked(&self) -> Target {
        if self.explicit {
            self.target()
        } else {
            Target::Latest
        }
    }
}

/// The one door: the journal after `event`, or why `event` is not allowed now. Pure: no I/O, no
/// clock.
pub fn transition(j: &Journal, event: Event) -> Result<Journal, TransitionError> {
    use State::*;
    let refuse = |e: &Event| TransitionError { state: j.state, event: e.name() };
    let mut next = j.clone();
    match (j.state, event) {
        (Idle | Done, Event::Accept(r)) => next = accepted(j, r, None),
        (Accepted | Downloading | Verifying, Event::Accept(r)) if r.force => {
            let cancelled = Reply::Cancelled(j.target());
            next = accepted(j, r, j.callback.clone().map(|callback| Answered { callback, reply: cancelled }));
        }
        (Accepted | Downloading | Verifying, Event::Resolve(v)) => {
            next.state = Downloading;
            next.target_version = Some(v);
        }
        (Downloading, Event::Downloaded(sha)) => {
            next.state = Verifying;
            next.sha256 = Some(sha);
        }
        // Counters saturate: a journal may hold any number, and past its limit it still counts.
        (Accepted | Downloading | Verifying, Event::Resume) => next.resumes = j.resumes.saturating_add(1),
        (Verifying, Event::Swap(s)) => {
            next.state = Trial;
            next.starts = 0;
            next.server_unavailable_at = None;
            next.installed_binary = Some(s.installed_binary);
            next.previous_binary = Some(s.previous_binary);
        }
        (Trial, Event::TrialStart) => next.starts = j.starts.saturating_add(1),
        (Trial, Event::ServerUnavailable(at)) => next.server_unavailable_at = Some(at),
        (Trial, Event::RollBack(reason)) => {
            next.state = RolledBack;
            next.reason = Some(reason);
        }
        (Accepted | Downloading | Verifying | Trial | RolledBack, Event::Close(end)) => {
            next.state = Done;
            next.reason = end.reason.or(next.reason);
            if let Some(cb) = &j.callback {
                remember(&mut next.answered, Answered { callback: cb.clone(), reply: end.reply.clone() });
            }
            next.reply = Some(end.reply);
        }
        (_, e) => return Err(refuse(&e)),
    }
    Ok(next)
}

fn accepted(j: &Journal, r: Request, cancelled: Option<Answered>) -> Journal {
    let mut answered = j.answered.clone();
    if let Some(a) = cancelled {
        remember(&mut answered, a);
    }
    Journal {
        state: State::Accepted,
        id: r.id,
        previous_version: Some(r.running),
        explicit: r.target != Target::Latest,
        target_version: r.target.version().cloned(),
        callback: r.callback,
        force: r.force,
        accepted_at: r.at,
        answered,
        ..Journal::idle()
    }
}

fn remember(answered: &mut Vec<Answered>, a: Answered) {
    answered.retain(|x| x.callback != a.callback);
    answered.push(a);
    let skip = answered.len().saturating_sub(ANSWERED_KEPT);
    answered.drain(..skip);
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
