//! The upgrade in flight: at most one per process, started by a request (journaled before any
//! network I/O) or taken over from a process that died before its swap; cancelled by a forced
//! request; its download progress, for `agent upgrade` on the host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edge_agent_base::build_info::{version, version_str};
use edge_agent_base::error::error_chain;
use edge_agent_base::id::random_hex;
use edge_agent_base::time::now_iso;
use edge_agent_wire::{Callback, Target};
use semver::Version;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::decide::Ask;
use super::error::UpgradeError;
use super::journal::{Ending, Event, Journal, Reply, Request, State, TransitionError};
use super::pipeline::{self, Done, Origin, Progress};
use super::store::StoreError;
use super::wire::{self, WireText};

/// How often a new worker takes over the same upgrade before it gives a definite error instead.
pub const MAX_RESUMES: u32 = 3;

/// How a started upgrade ended, before any restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing to do: the running version is the one asked for (or newer than latest).
    UpToDate,
    /// The new version is in place; the process must restart into it.
    Installed(Version),
    /// The `agent:error` body that says what went wrong.
    Failed(String),
}

/// An upgrade task: its number, what cancels it, and what says it has ended (its staging file is
/// no longer written to).
#[derive(Clone)]
struct Task {
    n: u64,
    cancel: CancellationToken,
    ended: CancellationToken,
}

/// The upgrade in flight in this process, if any.
pub struct Runner {
    running: Mutex<Option<Task>>,
    next: AtomicU64,
    pub progress: watch::Sender<Progress>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            running: Mutex::default(),
            next: AtomicU64::default(),
            progress: watch::channel(Progress::default()).0,
        }
    }
}

impl Runner {
    pub fn in_progress(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Accepts a request (protocol.md §3.1 checks that need no network, then the journal) and
    /// runs it; where its outcome will arrive, or the `agent:error` body of an immediate refusal.
    pub fn start(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        target: Target,
        force: bool,
        callback: Option<Callback>,
    ) -> Result<oneshot::Receiver<Outcome>, String> {
        self.start_from(ctx, target, force, callback, Origin::ReleaseSource)
    }

    /// [`Self::start`], with the release from `origin`.
    pub fn start_from(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        target: Target,
        force: bool,
        callback: Option<Callback>,
        origin: Origin,
    ) -> Result<oneshot::Receiver<Outcome>, String> {
        let mut running = self.running.lock().unwrap();
        if running.is_some() && !force {
            return Err(wire::text(WireText::InProgress));
        }
        let id = random_hex(8);
        let request = Request {
            id: id.clone(),
            callback,
            target: target.clone(),
            force,
            running: version().clone(),
            at: now_iso(),
        };
        match ctx.store.apply(Event::Accept(request)) {
            Ok(_) => {}
            Err(StoreError::Refused(TransitionError { state, .. })) => {
                tracing::info!(?state, "upgrade refused: the journal holds one that is not finished");
                return Err(wire::text(WireText::InProgress));
            }
            Err(e) => return Err(wire::text(WireText::Failed { target: &target, error: &e.into() })),
        }
        let previous = running.take().map(|prev| {
            tracing::info!("a forced upgrade request cancels the one in progress");
            prev.cancel.cancel();
            prev.ended
        });
        let task = self.claim(&mut running);
        drop(running);
        Ok(self.spawn(ctx, id, (Ask { target, force }, origin), task, previous))
    }

    /// Takes over the upgrade a dead process left before its swap: runs it again (its download
    /// resumes from the staging file), or, after [`MAX_RESUMES`] takeovers or when nobody waits
    /// for it (started on the host), closes it with a definite error. Where its outcome arrives.
    pub fn resume(self: &Arc<Self>, ctx: Arc<Context>, journal: &Journal) -> Option<oneshot::Receiver<Outcome>> {
        if !journal.state.before_swap() {
            return None;
        }
        let j = match ctx.store.apply_if(Some(&journal.id), Event::Resume) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("cannot take over the unfinished upgrade: {}", error_chain(&e));
                return None;
            }
        };
        if j.resumes > MAX_RESUMES || j.callback.is_none() {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(Outcome::Failed(interrupt(&ctx, &j)));
            return Some(rx);
        }
        tracing::info!(to = %j.target(), resumes = j.resumes, state = ?j.state, "taking over an upgrade a dead process left");
        let task = self.claim(&mut self.running.lock().unwrap());
        // Only upgrades with a callback are taken over: they came from the release source.
        let ask = Ask { target: j.target(), force: j.force };
        Some(self.spawn(ctx, j.id.clone(), (ask, Origin::ReleaseSource), task, None))
    }

    fn claim(&self, running: &mut Option<Task>) -> Task {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let task = Task { n, cancel: CancellationToken::new(), ended: CancellationToken::new() };
        *running = Some(task.clone());
        self.progress.send_replace(Progress::default());
        task
    }

    fn spawn(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        id: String,
        (ask, origin): (Ask, Origin),
        task: Task,
        previous: Option<CancellationToken>,
    ) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let runner = self.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("upgrade", from = version_str(), to = %ask.target);
            // The upgrade this one replaces stops writing its staging file first (it may be ours).
            if let Some(previous) = previous {
                previous.cancelled().await;
            }
            let result = tokio::select! {
                r = tracing::Instrument::instrument(run(&ctx, &id, &ask, &origin, &runner.progress), span) => r,
                _ = task.cancel.cancelled() => Err(UpgradeError::Cancelled),
            };
            task.ended.cancel();
            {
                let mut running = runner.running.lock().unwrap();
                if running.as_ref().is_some_and(|t| t.n == task.n) {
                    *running = None;
                }
            }
            let _ = tx.send(finish(&ctx, &id, &ask.target, result));
        });
        rx
    }
}

/// The pipeline for `origin`: from the release source, or from a bundle.
async fn run(
    ctx: &Context,
    id: &str,
    ask: &Ask,
    origin: &Origin,
    progress: &watch::Sender<Progress>,
) -> Result<Done, UpgradeError> {
    match origin {
        Origin::ReleaseSource => pipeline::run(ctx, id, ask, progress).await,
        Origin::Bundle(path) => super::bundle::run(ctx, id, ask, path).await,
    }
}

/// Closes an upgrade that a dead process left before its swap with a definite error; its text.
pub fn interrupt(ctx: &Context, j: &Journal) -> String {
    let phase = match j.state {
        State::Accepted => "release lookup",
        State::Downloading => "download",
        _ => "verification",
    };
    let error = UpgradeError::Interrupted { phase, resumes: j.resumes };
    tracing::warn!(to = %j.target(), "{error}");
    super::download::clean_staging(ctx.install_dir(), None);
    close_failed(ctx, &j.id, &j.asked(), &error)
}

/// Journals how the pipeline ended; the outcome for the caller.
fn finish(ctx: &Context, id: &str, asked: &Target, result: Result<Done, UpgradeError>) -> Outcome {
    match result {
        Ok(Done::UpToDate) => {
            let end = Ending { reply: Reply::Ok, outcome: None, reason: None };
            if let Err(e) = ctx.store.apply_if(Some(id), Event::Close(end)) {
                tracing::error!("cannot close the upgrade journal: {}", error_chain(&e));
            }
            Outcome::UpToDate
        }
        Ok(Done::Installed(v)) => Outcome::Installed(v),
        // The forced request that replaced this one journaled its answer already.
        Err(e @ UpgradeError::Cancelled) => Outcome::Failed(wire::text(WireText::Failed { target: asked, error: &e })),
        Err(e) => {
            tracing::warn!("upgrade to {asked} failed: {}", error_chain(&e));
            let journal = ctx.store.load();
            let target = if journal.id == id { journal.asked() } else { asked.clone() };
            Outcome::Failed(close_failed(ctx, id, &target, &e))
        }
    }
}

/// Closes upgrade `id` with `error`; the `agent:error` body.
fn close_failed(ctx: &Context, id: &str, target: &Target, error: &UpgradeError) -> String {
    let text = wire::text(WireText::Failed { target, error });
    let end =
        Ending { reply: Reply::Error(text.clone()), outcome: Some(error.outcome()), reason: Some(error_chain(error)) };
    if let Err(e) = ctx.store.apply_if(Some(id), Event::Close(end)) {
        tracing::error!("cannot close the upgrade journal: {}", error_chain(&e));
    }
    text
}
