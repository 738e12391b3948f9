//! The Windows side of [`crate::platform`]. A running `.exe` cannot be overwritten, deleted or
//! renamed over, but it can be renamed aside: the swap does that, and the file renamed aside is
//! deleted once nothing runs it any more. The worker lives in a job object that kills it with its
//! supervisor, and is asked to stop by closing its standard input (there are no signals). The
//! control channel is a named pipe; the service control manager's side is [`service`].

mod control;
mod ffi;
pub mod service;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;

pub use control::{control_connect, ControlListener, ControlStream};

/// A process cannot replace its own image here: after an upgrade the supervisor keeps running
/// the file it started from (renamed aside) until the service restarts.
pub const CAN_REEXEC: bool = false;

/// Win32 errors that mean "the file is in use": access denied (a running image), sharing
/// violation, lock violation.
fn in_use(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(5 | 32 | 33))
}

/// `%ProgramData%\edge-agent`, where the configuration and the state live.
fn program_data() -> PathBuf {
    let base = std::env::var_os("ProgramData").unwrap_or_else(|| "C:\\ProgramData".into());
    PathBuf::from(base).join("edge-agent")
}

/// `%ProgramData%\edge-agent\agent.toml`.
pub fn default_config_path() -> PathBuf {
    program_data().join("agent.toml")
}

/// `%ProgramData%\edge-agent\state`.
pub fn default_state_dir() -> PathBuf {
    program_data().join("state")
}

/// Bytes available to this user on the volume holding `dir`.
pub fn available_space(dir: &Path) -> Option<u64> {
    ffi::free_bytes(dir)
}

/// Every file can be run here; nothing to mark.
pub fn make_executable(_path: &Path, _like: Option<&Path>) -> io::Result<()> {
    Ok(())
}

/// Replaces `target` with `staged` (same directory): flush, rename over it; when `target` runs
/// (Windows refuses to rename over a running image), rename it aside first, to be removed by
/// [`remove_stale_binaries`] once nothing runs it. Retried briefly while a scanner holds a file.
pub fn replace_file(staged: &Path, target: &Path) -> io::Result<()> {
    fs::OpenOptions::new().write(true).open(staged)?.sync_all()?;
    let mut tries = 0;
    loop {
        let e = match fs::rename(staged, target) {
            Ok(()) => return Ok(()),
            Err(e) if in_use(&e) && target.exists() => e,
            Err(e) => return Err(e),
        };
        let aside = aside_path(target);
        if fs::rename(target, &aside).is_ok() {
            tracing::debug!(aside = %aside.display(), "renamed the running binary aside");
            return fs::rename(staged, target).inspect_err(|_| {
                let _ = fs::rename(&aside, target);
            });
        }
        tries += 1;
        if tries >= 40 {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `.<name>.old-<random>` beside `target`.
fn aside_path(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.old-{}", edge_agent_base::id::random_hex(4)))
}

/// Deletes the files that swaps renamed aside beside `installed`; those still running stay
/// (Windows refuses) and go on a later start.
pub fn remove_stale_binaries(installed: &Path) {
    let Some(dir) = installed.parent() else { return };
    let prefix = format!(".{}.old-", installed.file_name().unwrap_or_default().to_string_lossy());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(path = %entry.path().display(), "removed a replaced binary");
        }
    }
}

/// Whether this process runs the file now at `path`. Only asked where [`CAN_REEXEC`] holds; here
/// the loader's name of this image, which a rename aside does not change.
pub fn runs_file(path: &Path) -> bool {
    std::env::current_exe().is_ok_and(|p| p == path)
}

/// Whether the process runs.
pub fn alive(pid: u32) -> bool {
    ffi::process_running(pid)
}

/// When process `pid` was created (a FILETIME), if it runs: with its pid, what tells it from a
/// later process given the same pid.
pub fn started(pid: u32) -> Option<u64> {
    ffi::process_created(pid)
}

/// Asks the daemon `pid` to restart into the installed binary: it is ended with the restart exit
/// code, which its supervisor answers by starting the installed binary at once.
pub fn request_restart(pid: u32) {
    ffi::end_process(pid, crate::exit::RESTART as u32);
}

/// Set in a worker: its supervisor holds the other end of its standard input.
static SUPERVISED: OnceLock<Notify> = OnceLock::new();

/// Resolves when the operator asks the process to stop (Ctrl-C, Ctrl-Break, the console closing,
/// shutdown), or, in a worker, when the supervisor closes its standard input.
pub async fn stop_requested() {
    use tokio::signal::windows;
    // Each handler, or a future that never resolves when it cannot be installed.
    macro_rules! received {
        ($handler:expr) => {
            async {
                match $handler {
                    Ok(mut h) => h.recv().await,
                    Err(_) => std::future::pending().await,
                }
            }
        };
    }
    let supervisor_gone = async {
        match SUPERVISED.get() {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = received!(windows::ctrl_c()) => {}
        _ = received!(windows::ctrl_break()) => {}
        _ = received!(windows::ctrl_close()) => {}
        _ = received!(windows::ctrl_shutdown()) => {}
        _ = supervisor_gone => {}
    }
}

/// There is no SIGHUP here: restarts are asked with [`request_restart`]. Never resolves.
pub async fn restart_requested() {
    std::future::pending::<()>().await
}

/// In a worker: stop when the supervisor `expected` closes our standard input or dies (its end
/// of the pipe closes with it; its job object also ends us). False when it is gone already.
pub fn bind_to_parent(expected: u32) -> bool {
    SUPERVISED.get_or_init(Notify::new);
    std::thread::spawn(|| {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        if let Some(n) = SUPERVISED.get() {
            n.notify_one();
        }
    });
    alive(expected)
}

/// A process cannot replace its own image on Windows ([`CAN_REEXEC`]).
pub fn exec(_binary: &Path, _args: &[OsString]) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "a process cannot re-execute itself on Windows")
}

/// No systemd here: the service's state goes to the service control manager ([`service`]).
pub fn sd_notify(_state: &str) {}

/// A worker process: started by this supervisor, in a job object that ends it (and what it
/// started) when the supervisor's handle closes, whichever way the supervisor ends.
pub struct Worker {
    child: Child,
    /// Closed to ask the worker to stop.
    stdin: Option<ChildStdin>,
    _job: Option<win32job::Job>,
}

impl Worker {
    /// Starts `binary args` with `env`. A file renamed into place an instant ago can be held
    /// briefly by a scanner (a sharing violation): try again shortly.
    pub fn spawn(binary: &Path, args: &[OsString], env: (&str, String)) -> io::Result<Worker> {
        let mut tries = 0;
        let mut child = loop {
            let mut cmd = Command::new(binary);
            cmd.args(args).env(env.0, &env.1).stdin(Stdio::piped()).kill_on_drop(true);
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(32) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let job = child.raw_handle().and_then(|h| match kill_on_close_job(h as isize) {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::warn!("the worker runs outside a job object: {e}");
                None
            }
        });
        Ok(Worker { stdin: child.stdin.take(), child, _job: job })
    }

    /// Workers are never adopted here ([`CAN_REEXEC`]).
    pub fn adopt(_pid: u32) -> Option<Worker> {
        None
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the worker to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Closes the worker's standard input (its stop request), then ends it after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        self.stdin = None;
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            tracing::warn!("the agent did not stop within {grace:?}; ending it");
            self.kill().await;
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.wait().await;
    }
}

/// A job object that ends its processes when its last handle closes, holding `process`.
fn kill_on_close_job(process: isize) -> Result<win32job::Job, win32job::JobError> {
    let mut info = win32job::ExtendedLimitInfo::new();
    info.limit_kill_on_job_close();
    let job = win32job::Job::create_with_limit_info(&info)?;
    job.assign_process(process)?;
    Ok(job)
}

/// This process's executable, as the loader named it (no `\\?\` form: the path is shown to
/// operators and written into the service's command line).
pub fn current_exe() -> io::Result<PathBuf> {
    std::env::current_exe()
}
