//! Real parts for the end-to-end tests: the `agent` and `agent-server` binaries as processes, an
//! admin HTTP client, a scripted fake server, and polling with a bound instead of sleeps.

#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod fake;
pub mod handle;
pub mod home;
pub mod medplum;
pub mod releases;
pub mod rig;
pub mod services;
pub mod sim;
pub mod tls;
pub mod wine;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use home::AgentHome;

/// The binaries under test, where `cargo build --bins` leaves them beside this crate's build (see
/// `build.rs`).
const AGENT: &str = concat!(env!("EDGE_AGENT_BIN_DIR"), "/agent");
const SERVER: &str = concat!(env!("EDGE_AGENT_BIN_DIR"), "/agent-server");

/// The `agent` binary under test, built and newer than its sources.
pub fn agent_bin() -> &'static str {
    binaries_built();
    AGENT
}

/// The `agent-server` binary under test, built and newer than its sources.
pub fn server_bin() -> &'static str {
    binaries_built();
    SERVER
}

/// `cargo test` builds no binary of another package, and these tests run the agent's and the
/// server's: once per test run, when either is missing or older than a source file of the
/// crates it is built from, they are built here (cargo's build lock is free while tests run).
/// `.ci/run` builds them first, so there this only looks.
fn binaries_built() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let crates = Path::new(WORKSPACE).join("crates");
        let newest = ["base", "wire", "release", "agent", "server"]
            .iter()
            .map(|c| newest_file(&crates.join(c)))
            .chain([newest_file(&Path::new(WORKSPACE).join("Cargo.lock"))])
            .max()
            .flatten();
        let built = |b: &str| std::fs::metadata(b).and_then(|m| m.modified()).ok();
        if [AGENT, SERVER].iter().all(|b| built(b).is_some_and(|t| Some(t) >= newest)) {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--bins", "-p", "edge-agent", "-p", "edge-agent-server"])
            .current_dir(WORKSPACE)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the binaries under test failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// When the newest file under `path` (itself, if a file) was last changed.
fn newest_file(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest_file(&e.path())).max()
}
/// The workspace's root directory, for its scripts and packaging files.
pub const WORKSPACE: &str = env!("EDGE_AGENT_WORKSPACE");
/// Scratch space for the tests inside the target directory (`target/tmp`).
pub fn scratch_dir() -> PathBuf {
    Path::new(env!("EDGE_AGENT_TARGET_DIR")).join("tmp")
}

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

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole process group: the supervisor and its worker.
        signal(-self.pid(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `agent-server` with its own data directory and an admin client.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub proc: Proc,
    pub http: reqwest::Client,
    admin: (String, String),
    extra: Vec<String>,
}

/// The quoted value of `key = "…"` in TOML text.
pub fn toml_value(text: &str, key: &str) -> String {
    let line =
        text.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap_or_else(|| panic!("no {key} in {text}"));
    line.split('"').nth(1).unwrap().to_string()
}

pub fn spawn_server(data: &Path, listen: &str, extra: &[String], log: PathBuf) -> (Proc, SocketAddr) {
    let mut child = Command::new(server_bin())
        .args(["--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .parse()
        .unwrap();
    (Proc { child, log }, addr)
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--data"]).arg(&data).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (proc, addr) = spawn_server(&data, "127.0.0.1:0", &extra, dir.path().join("server.log"));
        Server { dir, addr, proc, http: reqwest::Client::new(), admin, extra }
    }

    /// A server storing everything in the PostgreSQL database `db` (`--database`).
    pub async fn start_on_postgres(db: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--database", db]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--database".to_string(), db.to_string()]);
        let (proc, addr) = spawn_server(&dir.path().join("data"), "127.0.0.1:0", &extra, dir.path().join("server.log"));
        Server { dir, addr, proc, http: reqwest::Client::new(), admin, extra }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// The admin client's id and secret.
    pub fn admin(&self) -> (String, String) {
        self.admin.clone()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        self.start_again();
    }

    pub fn start_again(&mut self) {
        let log = self.dir.path().join("server.log");
        let (proc, addr) = spawn_server(&self.data(), &self.addr.to_string(), &self.extra, log);
        assert_eq!(addr, self.addr);
        self.proc = proc;
        // Pooled connections went with the old process.
        self.http = reqwest::Client::new();
    }

    /// Creates an agent; returns its id and a config file body for it.
    pub fn add_agent(&self, name: &str) -> (String, String) {
        let out = Command::new(server_bin())
            .args(["agent", "add", "--name", name, "--base-url", &self.url("/"), "--data"])
            .arg(self.data())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        (toml_value(&text, "agent_id"), text)
    }

    pub async fn token_for(&self, id: &str, secret: &str) -> String {
        let resp = self
            .http
            .post(self.url("oauth2/token"))
            .form(&[("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)])
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string()
    }

    pub async fn admin_token(&self) -> String {
        self.token_for(&self.admin.0.clone(), &self.admin.1.clone()).await
    }

    /// GET with the admin token: (status, JSON body).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let token = self.admin_token().await;
        let resp = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let token = self.admin_token().await;
        let resp = self.http.post(self.url(path)).bearer_auth(token).body(body.to_string()).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `$upgrade` of one agent: (HTTP status, OperationOutcome text).
    pub async fn upgrade(&self, agent_id: &str, query: &str) -> (u16, String) {
        let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$upgrade?{query}")).await;
        let text = v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
        (code, text)
    }

    /// `$status` of an agent as (status, version).
    pub async fn status(&self, agent_id: &str) -> (String, String) {
        let (code, v) = self.get(&format!("fhir/R4/Agent/{agent_id}/$status")).await;
        assert_eq!(code, 200, "{v}");
        let p = |name: &str| {
            v["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| {
                p.get("valueCode").or(p.get("valueString")).and_then(Value::as_str).unwrap_or_default().to_string()
            })
        };
        (p("status").unwrap(), p("version").unwrap())
    }

    pub async fn wait_status(&self, agent_id: &str, status: &str, version: &str, limit: Duration) {
        let want = (status.to_string(), version.to_string());
        eventually(limit, &format!("agent {agent_id} {status} at {version}"), || {
            let want = want.clone();
            async move { (self.status(agent_id).await == want).then_some(()) }
        })
        .await
    }
}

/// Fast settings so tests see reconnects and heartbeats in well under a second.
pub const FAST: &str = "heartbeat_interval = 0.3\nreconnect_min_delay = 0.05\nreconnect_max_delay = 0.3\n";

/// The version a second, genuinely different build of the agent reports.
pub fn next_version() -> String {
    let v = edge_agent_base::build_info::version();
    format!("{}.{}.0", v.major, v.minor + 1)
}

/// The agent built a second time, as [`next_version`]: a real build, in its own target directory,
/// done once per test run (cargo keeps it up to date between runs).
pub fn next_build() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let target = scratch_dir().join("next-build");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-p", "edge-agent", "--bin", "agent", "--target-dir"])
            .arg(&target)
            .current_dir(WORKSPACE)
            .env("EDGE_AGENT_VERSION", next_version())
            .output()
            .unwrap();
        assert!(out.status.success(), "building the next version failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let bin = target.join("debug").join("agent");
        let v = Command::new(&bin).args(["version", "--json"]).output().unwrap();
        let reported: Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(reported["version"], next_version().as_str(), "the second build reports its own version");
        bin
    })
}
