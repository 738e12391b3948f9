//! Processes under test: polling with a bound instead of sleeps, signals, what a stopped process
//! has not read, children, and a child killed when dropped.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `check` until it returns Some, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal; a negative pid names a process group.
pub fn signal(pid: i32, sig: &str) {
    Command::new("kill").args([&format!("-{sig}"), "--", &pid.to_string()]).stderr(Stdio::null()).status().unwrap();
}

/// Bytes received but not yet read on the loopback TCP sockets connected to `port` (IPv4), from
/// `/proc/net/tcp`: what a stopped process has not read yet.
pub fn unread_from(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = u16::from_str_radix(f.get(2)?.split(':').nth(1)?, 16).ok()?;
            let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            (remote_port == port).then_some(rx)
        })
        .sum()
}

/// The processes whose parent is `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Spawns `cmd`, retrying while the binary is "busy": a binary just copied into place can still be
/// open for writing in a process that another test thread forked at that instant (ETXTBSY).
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    for _ in 0..50 {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
        }
    }
    panic!("{cmd:?}: the binary stayed busy")
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }
    /// SIGKILL to the supervisor and its worker at once, as a power cut would.
    pub fn kill_all(&mut self) {
        signal(-self.pid(), "KILL");
        let _ = self.child.wait();
    }
    /// The worker process that `agent run` supervises, once it is there.
    pub async fn worker_pid(&self) -> i32 {
        let pid = self.pid();
        eventually(Duration::from_secs(10), "the worker process", || async move { children(pid).first().copied() })
            .await
    }
    /// Waits for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = &mut self.child;
        eventually(limit, "process exit", || {
            let r = child.try_wait().unwrap().map(|s| s.code());
            async move { r }
        })
        .await
    }
}

/// Lines of a process's log a failing test shows.
const LOG_TAIL: usize = 40;

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole process group: the supervisor and its worker.
        signal(-self.pid(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A test failing shows, with its failure, what each of its processes said last (its log
        // files go with its temporary directories).
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL).collect();
            eprintln!("--- the last {} lines of {} ---", tail.len(), self.log.display());
            tail.iter().rev().for_each(|line| eprintln!("{line}"));
        }
    }
}
