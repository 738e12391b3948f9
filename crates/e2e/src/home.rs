//! An agent's home for a test: its config file, state directory and installed binary, and the
//! state a test waits on (staging file, failpoint mark, status file, journal, history).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins::agent_bin;
use crate::process::{eventually, spawn_retrying, Proc};
use crate::releases::ReleaseServer;

/// Fast settings so tests see reconnects and heartbeats in well under a second.
pub const FAST: &str = "heartbeat_interval = 0.3\nreconnect_min_delay = 0.05\nreconnect_max_delay = 0.3\n";

/// A directory with an agent config file in it.
pub struct AgentHome {
    pub dir: tempfile::TempDir,
    /// The installed binary's file name: `agent`, or `agent.exe` for a Windows agent.
    exe: &'static str,
}

impl AgentHome {
    /// A fast agent from `cfg` (as `agent-server agent add` prints it): releases from `releases`,
    /// whose key it trusts, judged healthy after `health_window` seconds; installed from the
    /// current build and started.
    pub fn started(cfg: &str, releases: &ReleaseServer, health_window: u64) -> (AgentHome, Proc) {
        let home = AgentHome::new(&format!(
            "{cfg}{FAST}releases_url = \"{}\"\n{}health_window = {health_window}\n",
            releases.url(),
            releases.trust()
        ));
        home.install(Path::new(agent_bin()));
        let proc = home.start(&[]);
        (home, proc)
    }

    pub fn new(config: &str) -> AgentHome {
        AgentHome::with_state(config, "agent", |state| state.display().to_string())
    }
    /// A home whose binary is named `exe`, and whose configuration names its state directory as
    /// `state_dir` writes it (Wine sees `/` as `Z:`).
    pub fn with_state(config: &str, exe: &'static str, state_dir: impl Fn(&Path) -> String) -> AgentHome {
        let dir = tempfile::tempdir().unwrap();
        let state = state_dir(&dir.path().join("state"));
        let body = format!("{config}\nstate_dir = \"{state}\"\n");
        std::fs::write(dir.path().join("agent.toml"), body).unwrap();
        AgentHome { dir, exe }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// Starts `binary run --config …` in its own process group, with stderr in `agent.log`.
    pub fn run_with(&self, binary: &Path, envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(binary);
        cmd.envs(envs.iter().copied());
        self.spawn_run(cmd, self.config())
    }
    /// Starts `cmd run --config <config>` in its own process group, with stderr in `agent.log`.
    pub fn spawn_run(&self, mut cmd: Command, config: impl AsRef<std::ffi::OsStr>) -> Proc {
        use std::os::unix::process::CommandExt;
        let log = self.dir.path().join("agent.log");
        cmd.args(["run", "--config"])
            .arg(config)
            .process_group(0)
            .env("EDGE_AGENT_LOG", "info,edge_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap());
        Proc { child: spawn_retrying(&mut cmd), log }
    }
    pub fn run(&self) -> Proc {
        self.run_with(Path::new(agent_bin()), &[])
    }
    /// Where the agent is installed (its own copy, so an upgrade can replace it).
    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin").join(self.exe)
    }
    /// Copies `binary` to [`Self::bin`].
    pub fn install(&self, binary: &Path) {
        std::fs::create_dir_all(self.bin().parent().unwrap()).unwrap();
        std::fs::copy(binary, self.bin()).unwrap();
    }
    /// Runs the installed copy.
    pub fn start(&self, envs: &[(&str, &str)]) -> Proc {
        self.run_with(&self.bin(), envs)
    }
    /// The files beside the installed binary other than the binary itself (partial downloads).
    pub fn strays(&self) -> Vec<String> {
        std::fs::read_dir(self.bin().parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != self.exe)
            .collect()
    }
    /// The size of the staging file of `version` beside the installed binary, if there is one.
    pub fn staged(&self, version: &str) -> Option<u64> {
        let path = self.bin().parent().unwrap().join(format!(".edge-agent-download-{version}"));
        std::fs::metadata(path).ok().map(|m| m.len())
    }
    /// Waits until the staging file of `version` holds at least `bytes`.
    pub async fn wait_staged(&self, version: &str, bytes: u64) {
        eventually(Duration::from_secs(30), &format!("{bytes} bytes of {version} staged"), || {
            let have = self.staged(version).unwrap_or(0);
            async move { (have >= bytes).then_some(()) }
        })
        .await
    }
    /// The file a failpoint creates when it pauses (`EDGE_AGENT_FAILPOINT_ONCE`).
    pub fn failpoint_mark(&self) -> PathBuf {
        self.dir.path().join("failpoint.reached")
    }
    /// Starts the installed agent so that the first of its processes to reach `failpoint`
    /// pauses there (once: the processes after it go on).
    pub fn start_at_failpoint(&self, failpoint: &str) -> Proc {
        let _ = std::fs::remove_file(self.failpoint_mark());
        let mark = self.failpoint_mark().display().to_string();
        self.start(&[("EDGE_AGENT_FAILPOINT", failpoint), ("EDGE_AGENT_FAILPOINT_ONCE", &mark)])
    }
    pub async fn wait_failpoint(&self) {
        let mark = self.failpoint_mark();
        eventually(Duration::from_secs(30), "the failpoint", || {
            let there = mark.exists();
            async move { there.then_some(()) }
        })
        .await
    }
    /// The daemon's status file, as JSON.
    pub fn daemon_status(&self) -> Option<Value> {
        std::fs::read(self.state().join("status.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }
    /// Waits until a daemon other than `old_pid` is connected (from its status file).
    pub async fn wait_new_daemon(&self, old_pid: Option<u64>) -> u64 {
        eventually(Duration::from_secs(30), "a new daemon connected", || {
            let s = self.daemon_status();
            async move {
                let s = s?;
                let pid = s["pid"].as_u64()?;
                (Some(pid) != old_pid && s["connected"] == true).then_some(pid)
            }
        })
        .await
    }
    pub fn history(&self) -> Vec<Value> {
        std::fs::read(self.state().join("history.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    pub fn journal(&self) -> Option<Value> {
        std::fs::read(self.state().join("upgrade.json")).ok().map(|b| serde_json::from_slice(&b).unwrap())
    }
}
