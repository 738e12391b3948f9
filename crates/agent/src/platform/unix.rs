//! The Unix side of [`crate::platform`] (Linux first; the `/proc` reads degrade gracefully
//! elsewhere).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal, WaitOptions};
use tokio::process::{Child, Command};

/// Bytes available to this user on the filesystem holding `dir`.
pub fn available_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Makes `path` executable, with the mode of `like` when it has one.
pub fn make_executable(path: &Path, like: Option<&Path>) -> io::Result<()> {
    let mode = like.and_then(|l| fs::metadata(l).ok()).map(|m| m.permissions().mode()).unwrap_or(0o755);
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Replaces `target` with `staged` atomically (same directory): fsync, rename, fsync the
/// directory. A reader sees the whole old file or the whole new one.
pub fn replace_file(staged: &Path, target: &Path) -> io::Result<()> {
    fs::File::open(staged)?.sync_all()?;
    fs::rename(staged, target)?;
    edge_agent_base::fs::sync_dir(target.parent().unwrap_or(Path::new("/")))
}

/// Whether this process runs the file now at `path` (after an upgrade replaced it, the process
/// still maps the old, unlinked one).
pub fn runs_file(path: &Path) -> bool {
    match (own_file(), fs::metadata(path)) {
        (Some(own), Ok(b)) => own == (b.dev(), b.ino()),
        _ => true,
    }
}

/// The (device, inode) of the file this process runs: the kernel's `/proc/self/exe`. Under an
/// emulator started by binfmt_misc (QEMU user mode, for an ARM build on another machine) that is
/// the emulator's own file, and the agent's is the one `current_exe` names (the emulator answers
/// for it), as it was when first asked: the supervisor asks as it starts, before any swap.
fn own_file() -> Option<(u64, u64)> {
    static EMULATED: std::sync::LazyLock<Option<(u64, u64)>> = std::sync::LazyLock::new(|| {
        let kernel = fs::metadata("/proc/self/exe").ok()?;
        let named = fs::metadata(std::env::current_exe().ok()?).ok()?;
        ((kernel.dev(), kernel.ino()) != (named.dev(), named.ino())).then(|| (named.dev(), named.ino()))
    });
    EMULATED.or_else(|| fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino())))
}

/// Whether the process runs (a zombie, exited but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    started(pid).is_some()
}

/// When process `pid` started (in clock ticks since boot), if it runs: with its pid, what tells
/// it from a later process given the same pid.
pub fn started(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command's name in parentheses (which may hold anything): state is the first
    // field, starttime the twentieth.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Asks the daemon `pid` to restart into the installed binary (SIGHUP).
pub fn request_restart(pid: u32) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process(p, Signal::HUP);
    }
}

/// Resolves when the operator asks the process to stop (SIGTERM, SIGINT).
pub async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Resolves when something asks the daemon to restart into the installed binary (SIGHUP).
pub async fn restart_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    hup.recv().await;
}

/// In a worker: die with the supervisor `expected`, so a killed supervisor never leaves an orphan
/// agent connected beside the one a service manager starts next. False when it is gone already.
pub fn bind_to_parent(expected: u32) -> bool {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
    rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) == Some(expected)
}

/// Replaces this process's image with `binary args` (same pid); returns only on failure.
pub fn exec(binary: &Path, args: &[OsString]) -> io::Error {
    std::process::Command::new(binary).args(args).exec()
}

/// The daemon's control socket (a Unix socket, mode 0600).
pub type ControlStream = tokio::net::UnixStream;

pub struct ControlListener(tokio::net::UnixListener);

impl ControlListener {
    pub fn bind(path: &Path) -> io::Result<ControlListener> {
        let _ = fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(ControlListener(l))
    }
    pub async fn accept(&self) -> io::Result<ControlStream> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

pub async fn control_connect(path: &Path) -> io::Result<ControlStream> {
    tokio::net::UnixStream::connect(path).await
}

/// A worker process: started by this supervisor, or adopted after this supervisor re-executed
/// itself (the worker stays its child across the exec).
pub enum Worker {
    Spawned(Child),
    /// Not a child tokio knows; on Linux a pidfd says at once when it exits.
    Adopted(Pid, Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>),
}

impl Worker {
    /// Starts `binary args` with `env`. A binary renamed into place an instant ago can be
    /// briefly "busy" (ETXTBSY) while a process forked meanwhile still holds its old descriptor.
    pub fn spawn(binary: &Path, args: &[OsString], env: (&str, String)) -> io::Result<Worker> {
        let mut tries = 0;
        loop {
            let started = Command::new(binary).args(args).env(env.0, &env.1).kill_on_drop(true).spawn();
            match started {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => return other.map(Worker::Spawned),
            }
        }
    }

    /// A child this process image did not start (it inherited it across `exec`).
    pub fn adopt(pid: u32) -> Option<Worker> {
        let pid = Pid::from_raw(pid as i32)?;
        Some(Worker::Adopted(pid, exit_notifier(pid)))
    }

    pub fn id(&self) -> Option<u32> {
        match self {
            Worker::Spawned(c) => c.id(),
            Worker::Adopted(p, _) => Some(p.as_raw_nonzero().get() as u32),
        }
    }

    /// Waits for the worker to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Worker::Spawned(c) => c.wait().await,
            Worker::Adopted(pid, notifier) => loop {
                if let Some((_, status)) = rustix::process::waitpid(Some(*pid), WaitOptions::NOHANG)? {
                    return Ok(ExitStatus::from_raw(status.as_raw()));
                }
                match notifier {
                    Some(fd) => fd.readable().await?.clear_ready(),
                    // No pidfd here: poll (a few wakeups a second, nothing else).
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            },
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.id().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        self.signal(Signal::TERM);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            tracing::warn!("the agent did not stop within {grace:?}; killing it");
            self.kill().await;
        }
    }

    pub async fn kill(&mut self) {
        self.signal(Signal::KILL);
        let _ = self.wait().await;
    }
}

/// A descriptor that becomes readable when `pid` exits (Linux 5.3 and later).
#[cfg(target_os = "linux")]
fn exit_notifier(pid: Pid) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    // Deprecated because it cannot check that the descriptor stays open; an OwnedFd guarantees it.
    #[allow(deprecated)]
    tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()
}

#[cfg(not(target_os = "linux"))]
fn exit_notifier(_: Pid) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    None
}

/// This process's executable as a real path (a symlink is followed, so a rename replaces the file
/// rather than the link).
pub fn current_exe() -> io::Result<PathBuf> {
    installed_from(std::env::current_exe()?)
}

/// The installed path of the file this process started from, `exe` as the kernel names it. A file
/// renamed over it since (an upgrade or `agent rollback` while the supervisor re-executed itself)
/// leaves it named `<path> (deleted)` on Linux: the path is still the installed one.
fn installed_from(exe: PathBuf) -> io::Result<PathBuf> {
    fs::canonicalize(&exe).or_else(|e| match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => fs::canonicalize(path),
        None => Err(e),
    })
}

#[cfg(test)]
mod started_tests {
    use super::started;

    #[test]
    fn a_process_start_is_read_while_it_runs_and_not_after() {
        let me = started(std::process::id()).expect("this process runs");
        assert_eq!(started(std::process::id()), Some(me), "the same each time");
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let theirs = started(child.id()).expect("the child runs");
        assert!(theirs >= me, "started after this process: {theirs} < {me}");
        child.kill().unwrap();
        // Killed, not yet reaped: a zombie does not run.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while started(child.id()).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(started(child.id()), None);
        child.wait().unwrap();
        assert_eq!(started(child.id()), None);
    }
}

#[cfg(test)]
mod installed_tests {
    use super::installed_from;

    #[test]
    fn a_binary_replaced_since_it_started_is_found_at_its_installed_path() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"new binary").unwrap();
        let real = std::fs::canonicalize(&agent).unwrap();
        assert_eq!(installed_from(dir.path().join("agent (deleted)")).unwrap(), real);
        assert_eq!(installed_from(agent.clone()).unwrap(), real);
        assert!(installed_from(dir.path().join("gone")).is_err());
        assert!(installed_from(dir.path().join("gone (deleted)")).is_err());
    }
}

/// Unix re-executes the supervisor in place after an upgrade (same pid, adopts the worker).
pub const CAN_REEXEC: bool = true;

/// `/etc/edge-agent/agent.toml`.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/edge-agent/agent.toml")
}

/// `/var/lib/edge-agent`.
pub fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/edge-agent")
}

/// A rename over the installed binary leaves nothing behind here.
pub fn remove_stale_binaries(_installed: &Path) {}

/// Sends `state` (e.g. `READY=1`, `STATUS=connected`) to systemd when it runs us
/// (`$NOTIFY_SOCKET`); a no-op otherwise.
pub fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        abstract_addr(name).and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify {state:?}: {e}");
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(io::ErrorKind::Unsupported.into())
}

/// `agent service`: Windows only; systemd runs the agent here.
pub mod service {
    use std::path::Path;

    use tokio_util::sync::CancellationToken;

    use super::super::service_error::ServiceError;

    const UNIT: &str = "packaging/systemd/edge-agent.service";

    /// Whether this system has a service manager `agent service` drives: not here.
    pub fn available() -> Result<(), ServiceError> {
        Err(ServiceError::Unsupported(UNIT))
    }

    pub fn install(_name: &str, _binary: &Path, _config: &Path) -> Result<String, ServiceError> {
        Err(ServiceError::Unsupported(UNIT))
    }
    pub fn uninstall(_name: &str) -> Result<String, ServiceError> {
        Err(ServiceError::Unsupported(UNIT))
    }
    pub fn start(_name: &str, _log: &Path) -> Result<String, ServiceError> {
        Err(ServiceError::Unsupported(UNIT))
    }
    pub fn stop(_name: &str) -> Result<String, ServiceError> {
        Err(ServiceError::Unsupported(UNIT))
    }
    pub fn run(_name: &str, _body: Box<dyn FnOnce(CancellationToken) -> i32 + Send>) -> Result<(), ServiceError> {
        Err(ServiceError::Unsupported(UNIT))
    }
}
