//! `agent run`: a small supervising parent around the daemon. It starts the installed binary as
//! the worker (`agent run --worker`), starts it again at once when it exits to restart into an
//! upgrade, and rolls a new version back when it crashes, exits, or does not confirm within the
//! health window. It works the same under systemd and in a terminal with nothing else watching:
//! the rollback never depends on a service manager.
//!
//! The supervisor itself stays the binary it was started as until the service restarts; it only
//! reads the journal, starts processes and copies one file, so it has little that could need an
//! upgrade.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::upgrade::install;
use crate::upgrade::journal::{self, Journal, Record, State};

/// The worker exits with this code to be started again at once, on the new binary.
pub const EXIT_RESTART: i32 = 75;
/// Starts of a new version, during one trial, after which it is rolled back without a further try.
pub const MAX_TRIAL_STARTS: u32 = 3;
/// The environment variable that tells a worker which process supervises it.
pub const SUPERVISOR_PID_ENV: &str = "EDGE_AGENT_SUPERVISOR_PID";
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Supervisor {
    /// The installed binary, resolved once at start: after a swap, this process's own executable
    /// is the old, unlinked file, but the path holds the new one.
    pub installed: PathBuf,
    pub worker_args: Vec<OsString>,
    pub state_dir: PathBuf,
    pub health_window: Duration,
}

enum Ended {
    Exited(ExitStatus),
    Stopped,
    TrialExpired,
}

impl Supervisor {
    /// Runs workers until shutdown; the process exit code.
    pub async fn run(&self, shutdown: CancellationToken) -> i32 {
        let mut crashes = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let trial = self.begin_trial();
            let started = Instant::now();
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(binary = %self.installed.display(), "cannot start the agent: {e}");
                    if let Some(j) = trial {
                        self.roll_back(j, format!("the new binary could not be started: {e}"));
                        continue;
                    }
                    return 1;
                }
            };
            let ended = self.watch(&mut child, trial.is_some(), &shutdown).await;
            let on_trial = self.on_trial();
            match ended {
                Ended::Stopped => return 0,
                Ended::TrialExpired => {
                    let secs = self.health_window.as_secs();
                    self.roll_back_current(format!("the new version did not connect and confirm within {secs} s"));
                }
                Ended::Exited(status) if status.code() == Some(EXIT_RESTART) => {
                    tracing::info!("restarting into the installed binary");
                }
                Ended::Exited(status) if on_trial => {
                    self.roll_back_current(format!("the new version exited with {status} during its trial"));
                }
                Ended::Exited(status) if status.code() == Some(crate::config::EXIT_CONFIG) => {
                    return crate::config::EXIT_CONFIG;
                }
                Ended::Exited(status) if status.success() => return 0,
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
        let mut j = Journal::load(&self.state_dir).filter(|j| j.state == State::Trial)?;
        j.starts += 1;
        if j.starts > MAX_TRIAL_STARTS {
            let reason = format!("the new version did not confirm in {MAX_TRIAL_STARTS} starts");
            self.roll_back(j, reason);
            return None;
        }
        if let Err(e) = j.save(&self.state_dir) {
            tracing::error!("cannot update the upgrade journal: {e}");
        }
        tracing::info!(version = %j.target_version, start = j.starts, window_secs = self.health_window.as_secs(), "new version on trial");
        Some(j)
    }

    fn on_trial(&self) -> bool {
        Journal::load(&self.state_dir).is_some_and(|j| j.state == State::Trial)
    }

    /// Starts the installed binary as the worker. A binary renamed into place an instant ago can
    /// be briefly "busy" (ETXTBSY) while a process forked meanwhile still holds its old descriptor.
    fn spawn(&self) -> std::io::Result<Child> {
        let mut tries = 0;
        loop {
            let started = Command::new(&self.installed)
                .args(&self.worker_args)
                .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
                .kill_on_drop(true)
                .spawn();
            match started {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    /// Waits for the worker to exit, for shutdown (the worker is stopped gracefully), or for the
    /// end of the health window of a trial that has not confirmed.
    async fn watch(&self, child: &mut Child, trial: bool, shutdown: &CancellationToken) -> Ended {
        let deadline = Instant::now() + self.health_window;
        let mut confirmed = !trial;
        loop {
            tokio::select! {
                status = child.wait() => return match status {
                    Ok(s) => Ended::Exited(s),
                    Err(e) => { tracing::error!("lost track of the agent process: {e}"); Ended::Stopped }
                },
                _ = shutdown.cancelled() => {
                    stop(child).await;
                    return Ended::Stopped;
                }
                _ = sleep(Duration::from_millis(200)), if !confirmed => {
                    if !self.on_trial() {
                        confirmed = true;
                    } else if Instant::now() >= deadline {
                        let _ = child.kill().await;
                        return Ended::TrialExpired;
                    }
                }
            }
        }
    }

    fn roll_back_current(&self, reason: String) {
        match Journal::load(&self.state_dir).filter(|j| j.state == State::Trial) {
            Some(j) => self.roll_back(j, reason),
            None => tracing::warn!("nothing to roll back: {reason}"),
        }
    }

    /// Puts the previous binary back and leaves the result for it to report.
    fn roll_back(&self, mut j: Journal, reason: String) {
        tracing::error!(from = %j.target_version, to = %j.previous_version, "rolling back: {reason}");
        match install::restore(&j) {
            Ok(()) => {
                j.state = State::RolledBack;
                j.reason = Some(reason);
            }
            Err(e) => {
                tracing::error!("cannot roll back, the new version stays: {e}");
                journal::record(
                    &self.state_dir,
                    Record::new(
                        &j.previous_version,
                        &j.target_version,
                        "failed",
                        Some(format!("{reason}; rollback failed: {e}")),
                    ),
                );
                j.state = State::Done;
            }
        }
        if let Err(e) = j.save(&self.state_dir) {
            tracing::error!("cannot write the upgrade journal: {e}");
        }
    }
}

/// SIGTERM, then SIGKILL after a grace period.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| Pid::from_raw(p as i32)) {
        let _ = kill_process(pid, Signal::TERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        tracing::warn!("the agent did not stop within {STOP_GRACE:?}; killing it");
        let _ = child.kill().await;
    }
}

/// In the worker: die with the supervisor, so a killed supervisor never leaves an orphan agent
/// connected beside the one a service manager starts next.
pub fn bind_to_supervisor() {
    let Some(expected) = std::env::var(SUPERVISOR_PID_ENV).ok().and_then(|p| p.parse::<i32>().ok()) else { return };
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(expected) {
        tracing::error!("the supervising process is gone; exiting");
        std::process::exit(0);
    }
}

/// The state directory's leftovers from a process killed mid-download.
pub fn clean_staging(installed: &Path) {
    if let Some(dir) = installed.parent() {
        crate::upgrade::download::clean_stale(dir);
    }
}
