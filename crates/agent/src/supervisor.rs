//! `agent run`: a small supervising parent around the daemon. It starts the installed binary as
//! the worker (`agent run --worker`), starts it again at once when it exits to restart into an
//! upgrade, and rolls a new version back when it crashes, exits, or does not confirm within the
//! health window. It works the same under systemd and in a terminal with nothing else watching:
//! the rollback never depends on a service manager. A new version that reaches the server but is
//! told it cannot be served yet (503: the server's store is down) has proven its way to the
//! server: its trial waits for the server, a health window past its last such answer, up to
//! [`MAX_WAIT_FOR_SERVER`], so that an outage of the server never rolls a good version back.
//!
//! Once a new version is confirmed (and after a rollback), the supervisor re-executes itself from
//! the installed binary, keeping its pid (systemd sees the same main process) and adopting the
//! running worker: both processes then map the same file again, and share its pages.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::platform::{self, Worker};
use crate::upgrade::install;
use crate::upgrade::journal::{Ending, Event, Journal, Reply, State};
use crate::upgrade::store::{Outcome, Store};
use crate::upgrade::wire::{self, WireText};
use edge_agent_base::backoff::Backoff;
use edge_agent_base::error::error_chain;

/// Starts of a new version, during one trial, after which it is rolled back without a further try.
pub const MAX_TRIAL_STARTS: u32 = 3;
/// The environment variable that tells a worker which process supervises it.
pub const SUPERVISOR_PID_ENV: &str = "EDGE_AGENT_SUPERVISOR_PID";
/// The flag with which a re-executed supervisor adopts the running worker.
pub const ADOPT_FLAG: &str = "--adopt-worker";
/// What `version --json` lists when the binary can be re-executed as a supervisor that adopts.
pub const ADOPT_FEATURE: &str = "adopt-worker";
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long past its health window a new version may wait for a server that answers but cannot
/// confirm it (503: its store is down). The trial then ends a health window after the server's
/// last such answer, and never later than this past its window.
pub const MAX_WAIT_FOR_SERVER: Duration = Duration::from_secs(3600);

pub struct Supervisor {
    /// The installed binary, resolved once at start: after a swap, this process's own executable
    /// is the old, unlinked file, but the path holds the new one.
    pub installed: PathBuf,
    pub worker_args: Vec<OsString>,
    /// This process's own arguments (without [`ADOPT_FLAG`]), for re-executing it.
    pub own_args: Vec<OsString>,
    pub store: Store,
    pub health_window: Duration,
    /// A worker to adopt instead of starting one (after a re-execution).
    pub adopt: Option<u32>,
}

enum Ended {
    Exited(ExitStatus),
    Stopped,
    /// The trial ended unconfirmed; whether it waited for an unavailable server, and how long in all.
    TrialExpired {
        waited: Option<Duration>,
    },
}

impl Supervisor {
    /// Runs workers until shutdown; the process exit code.
    pub async fn run(&mut self, shutdown: CancellationToken) -> i32 {
        let mut crashes = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            // Binaries that earlier swaps renamed aside (Windows), once nothing runs them.
            platform::remove_stale_binaries(&self.installed);
            let adopted = self.adopt.take().and_then(Worker::adopt);
            let trial = if adopted.is_some() { None } else { self.begin_trial() };
            let started = Instant::now();
            let mut worker = match adopted.map(Ok).unwrap_or_else(|| self.spawn()) {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!(binary = %self.installed.display(), "cannot start the agent: {e}");
                    if let Some(j) = trial {
                        self.roll_back(&j, format!("the new binary could not be started: {e}"));
                        continue;
                    }
                    return 1;
                }
            };
            tracing::debug!(pid = worker.id(), "the agent runs");
            let ended = self.watch(&mut worker, trial.is_some(), &shutdown).await;
            let on_trial = self.store.on_trial();
            match ended {
                Ended::Stopped => return 0,
                Ended::TrialExpired { waited } => {
                    let secs = self.health_window.as_secs();
                    let also = waited.map_or(String::new(), |w| {
                        format!(" of the server's last 'unavailable' answer ({} s in all)", w.as_secs())
                    });
                    self.roll_back_current(format!(
                        "the new version did not connect and confirm within {secs} s{also}"
                    ));
                }
                Ended::Exited(status) if status.code() == Some(crate::exit::RESTART) => {
                    tracing::info!("restarting into the installed binary");
                }
                Ended::Exited(status) if on_trial => {
                    self.roll_back_current(format!("the new version exited with {status} during its trial"));
                }
                Ended::Exited(status) if status.code() == Some(crate::exit::CONFIG) => {
                    return crate::exit::CONFIG;
                }
                Ended::Exited(status) if status.success() => {
                    tracing::info!("the agent exited with {status}; stopping");
                    return 0;
                }
                Ended::Exited(status) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        crashes.reset();
                    }
                    let delay = crashes.next_delay();
                    tracing::error!(
                        delay_ms = delay.as_millis() as u64,
                        "the agent exited with {status}; starting it again"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return 0,
                        _ = sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// The journal of a new version on trial, counting this start; rolled back at once when it has
    /// already had its starts.
    fn begin_trial(&self) -> Option<Journal> {
        if !self.store.on_trial() {
            return None;
        }
        let j = match self.store.apply(Event::TrialStart) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("cannot update the upgrade journal: {}", error_chain(&e));
                return None;
            }
        };
        if j.starts > MAX_TRIAL_STARTS {
            self.roll_back(&j, format!("the new version did not confirm in {MAX_TRIAL_STARTS} starts"));
            return None;
        }
        tracing::info!(version = %j.target(), start = j.starts, window_secs = self.health_window.as_secs(), "new version on trial");
        Some(j)
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        Worker::spawn(&self.installed, &self.worker_args, (SUPERVISOR_PID_ENV, std::process::id().to_string()))
    }

    /// Waits for the worker to exit, for shutdown (the worker is stopped gracefully), or for the
    /// end of the health window of a trial that has not confirmed. Once the worker runs confirmed,
    /// the supervisor re-executes itself from the installed binary if it runs another file.
    async fn watch(&self, worker: &mut Worker, trial: bool, shutdown: &CancellationToken) -> Ended {
        let began = Instant::now();
        let mut deadline = began + self.health_window;
        let latest = deadline + MAX_WAIT_FOR_SERVER;
        let mut waited = false;
        let mut confirmed = !trial;
        if confirmed {
            self.reexec_if_stale(worker);
        }
        loop {
            tokio::select! {
                status = worker.wait() => return match status {
                    Ok(s) => Ended::Exited(s),
                    Err(e) => { tracing::error!("lost track of the agent process: {e}"); Ended::Stopped }
                },
                _ = shutdown.cancelled() => {
                    worker.stop(STOP_GRACE).await;
                    return Ended::Stopped;
                }
                _ = sleep(Duration::from_millis(200)), if !confirmed => {
                    let journal = self.store.load();
                    if journal.state != State::Trial {
                        confirmed = true;
                        self.reexec_if_stale(worker);
                        continue;
                    }
                    if let Some(until) = self.server_wait(&journal).map(|u| u.min(latest)).filter(|u| *u > deadline) {
                        if !waited {
                            tracing::warn!(
                                window_secs = self.health_window.as_secs(),
                                "the server answers but cannot confirm the new version yet (its store is unavailable): \
                                 the trial waits for it, a health window past its last such answer"
                            );
                        }
                        (deadline, waited) = (until, true);
                    }
                    if Instant::now() >= deadline {
                        worker.kill().await;
                        return Ended::TrialExpired { waited: waited.then(|| began.elapsed()) };
                    }
                }
            }
        }
    }

    /// A health window after the new version last found the server up but unable to serve, if it
    /// did during this trial (the journal's time is the wall clock's).
    fn server_wait(&self, journal: &Journal) -> Option<Instant> {
        let at = journal.server_unavailable_at?;
        let age = Duration::from_millis(edge_agent_base::time::now_ms().saturating_sub(at).max(0) as u64);
        Some(Instant::now() + self.health_window.saturating_sub(age))
    }

    /// Replaces this process's image with the installed binary, adopting `worker`, when this
    /// process still runs an older file and the installed one knows how to adopt.
    fn reexec_if_stale(&self, worker: &Worker) {
        if !platform::CAN_REEXEC || platform::runs_file(&self.installed) {
            return;
        }
        let (Some(pid), true) = (worker.id(), can_adopt(&self.installed)) else {
            return tracing::info!("the installed binary cannot take over as supervisor: this one stays");
        };
        tracing::info!(binary = %self.installed.display(), worker = pid, "re-executing the supervisor from the installed binary");
        let mut args = self.own_args.clone();
        args.extend([ADOPT_FLAG.into(), pid.to_string().into()]);
        let e = platform::exec(&self.installed, &args);
        tracing::error!("cannot re-execute the supervisor, this one stays: {e}");
    }

    fn roll_back_current(&self, reason: String) {
        let j = self.store.load();
        match j.state {
            State::Trial => self.roll_back(&j, reason),
            _ => tracing::warn!("nothing to roll back: {reason}"),
        }
    }

    /// Puts the previous binary back and leaves the result for it to report.
    fn roll_back(&self, j: &Journal, reason: String) {
        tracing::error!(from = %j.target(), to = ?j.previous_version.as_ref().map(|v| v.to_string()), "rolling back: {reason}");
        let previous = j.previous_binary.clone().unwrap_or_else(|| self.store.dir().previous_binary());
        let installed = j.installed_binary.clone().unwrap_or_else(|| self.installed.clone());
        let event = match install::restore(&previous, &installed) {
            Ok(()) => Event::RollBack(reason),
            Err(e) => {
                tracing::error!("cannot roll back, the new version stays: {}", error_chain(&e));
                let why = format!("{reason}; rollback failed: {}", error_chain(&e));
                let text = wire::text(WireText::Failed { target: &j.asked(), error: &e });
                Event::Close(Ending { reply: Reply::Error(text), outcome: Some(Outcome::Failed), reason: Some(why) })
            }
        };
        if let Err(e) = self.store.apply_if(Some(&j.id), event) {
            tracing::error!("cannot write the upgrade journal: {}", error_chain(&e));
        }
    }
}

/// Whether `binary` lists [`ADOPT_FEATURE`] in `version --json`.
fn can_adopt(binary: &std::path::Path) -> bool {
    let Ok(out) = std::process::Command::new(binary).args(["version", "--json"]).output() else { return false };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["features"].as_array().is_some_and(|f| f.iter().any(|x| x == ADOPT_FEATURE))
}

/// In the worker: die with the supervisor, so a killed supervisor never leaves an orphan agent
/// connected beside the one a service manager starts next.
pub fn bind_to_supervisor() {
    let Some(expected) = std::env::var(SUPERVISOR_PID_ENV).ok().and_then(|p| p.parse::<u32>().ok()) else { return };
    if !platform::bind_to_parent(expected) {
        tracing::error!("the supervising process is gone; exiting");
        std::process::exit(0);
    }
}
