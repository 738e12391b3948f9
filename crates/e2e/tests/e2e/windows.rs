//! The agent on Windows, under Wine, against the native `agent-server`: it connects and reports
//! its version, dies with its supervisor, upgrades itself between two genuinely different Windows
//! builds through a signed release (the running `.exe` renamed aside, the new one in its place),
//! and refuses or rolls back broken builds leaving the old `.exe` byte-identical. The installer
//! and the service are in `windows_service.rs`.

use std::path::Path;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::releases::Signed;
use edge_agent_e2e::rig::same_bytes;
use edge_agent_e2e::wine::{broken_build, wine, WinHome, Wine};
use edge_agent_e2e::{agent_bin, eventually, next_version, Proc, Server};

const LIMIT: Duration = Duration::from_secs(60);

/// A release directory signed by a fresh key, hosted by a real server.
pub struct Releases {
    pub signed: Signed,
    pub server: Server,
}

impl Releases {
    pub async fn start() -> Releases {
        let signed = Signed::new();
        let dir = signed.dir();
        let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", dir.to_str().unwrap()]).await;
        Releases { signed, server }
    }

    /// `agent release publish --version <version>` of these artifacts, signed.
    pub fn publish(&self, version: &str, artifacts: &[&Path]) -> String {
        self.signed.publish(version, artifacts)
    }

    /// The configuration lines that point an agent at these releases and trust the key.
    pub fn agent_config(&self) -> String {
        self.signed.agent_config(&self.server.url("releases/"))
    }

    /// An agent added to the server, installed from `exe` in a fresh home, running under Wine.
    pub async fn agent(&self, wine: &Wine, name: &str, exe: &Path) -> (String, WinHome, Proc) {
        let (id, cfg) = self.server.add_agent(name);
        let home = WinHome::new(&format!("{cfg}{}health_window = 20\n", self.agent_config()));
        home.install(exe);
        let proc = home.start(wine);
        self.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        (id, home, proc)
    }
}

/// Whether a Linux process (a Windows process under Wine is one) still exists.
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The worker's pid, from the status file it writes (Wine's pids are its own; the Linux pid is
/// found by the worker's command line).
async fn worker_linux_pid(home: &WinHome) -> u32 {
    let config = edge_agent_e2e::wine::winpath(&home.config());
    eventually(LIMIT, "the Windows worker process", || {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(&config) && cmdline.contains("--worker")).then(|| e.file_name().to_str()?.parse().ok())?
        });
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_agent_connects_reports_its_version_and_dies_with_its_supervisor() {
    let Some(wine) = wine() else { return };
    let rel = Releases::start().await;
    let (id, home, mut agent) = rel.agent(wine, "win-connect", &wine.exe(SOURCE_VERSION)).await;

    let (code, stats) = rel.server.get(&format!("fhir/R4/Agent/{id}/$stats")).await;
    assert_eq!(code, 200, "{stats}");
    let stats: Value = serde_json::from_str(stats["parameter"][0]["valueString"].as_str().unwrap()).unwrap();
    assert_eq!(
        (stats["version"].as_str(), stats["target"].as_str()),
        (Some(SOURCE_VERSION), Some("x86_64-pc-windows-gnu"))
    );
    let status: Value = serde_json::from_slice(&std::fs::read(home.state().join("status.json")).unwrap()).unwrap();
    assert!(status["binary"].as_str().unwrap().ends_with("\\bin\\agent.exe"), "{status}");

    // The supervisor killed outright: its job object ends the worker, which the server sees.
    let worker = worker_linux_pid(&home).await;
    assert!(exists(worker));
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    eventually(LIMIT, "the worker to end with its supervisor", || async move { (!exists(worker)).then_some(()) }).await;
    rel.server.wait_status(&id, "disconnected", SOURCE_VERSION, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_agent_upgrades_itself_to_the_next_windows_build_and_keeps_running() {
    let Some(wine) = wine() else { return };
    let next = next_version();
    let rel = Releases::start().await;
    rel.publish(SOURCE_VERSION, &[&wine.exe(SOURCE_VERSION), Path::new(agent_bin())]);
    let said = rel.publish(&next, &[&wine.exe(&next), Path::new(agent_bin())]);
    assert!(said.contains(&format!("published agent-{next}-windows-x86_64.exe (signed)")), "{said}");
    let (id, home, mut agent) = rel.agent(wine, "win-upgrade", &wine.exe(SOURCE_VERSION)).await;

    let (code, text) = rel.server.upgrade(&id, &format!("version={next}&timeout=55000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "{}", agent.log());
    rel.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert!(same_bytes(&home.bin(), &wine.exe(&next)), "the installed .exe is the next build");
    let previous = home.state().join("previous").join("agent.exe");
    assert!(same_bytes(&previous, &wine.exe(SOURCE_VERSION)), "the previous build is kept for rollback");
    // The running supervisor still maps the old .exe, renamed aside (Windows cannot delete it).
    let strays = home.strays();
    assert!(strays.len() == 1 && strays[0].starts_with(".agent.exe.old-"), "{strays:?}");
    assert_eq!(agent.child.try_wait().unwrap(), None, "the supervisor process stays");

    // Started again (a service restart): the new build runs, the old .exe is gone.
    drop(agent);
    let _again = home.start(wine);
    rel.server.wait_status(&id, "connected", &next, LIMIT).await;
    eventually(LIMIT, "the renamed-aside .exe to be removed", || {
        let strays = home.strays();
        async move { strays.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_windows_builds_are_refused_or_rolled_back_leaving_the_exe_byte_identical() {
    let Some(wine) = wine() else { return };
    let rel = Releases::start().await;
    // The next build published under a version it does not report; a build that cannot run.
    rel.publish("3.0.0", &[&wine.exe(&next_version())]);
    rel.publish("3.1.0", &[&broken_build(rel.signed.work.path(), "3.1.0")]);
    let (id, home, agent) = rel.agent(wine, "win-broken", &wine.exe(SOURCE_VERSION)).await;

    let (code, text) = rel.server.upgrade(&id, "version=3.0.0&timeout=55000").await;
    assert_eq!(code, 400, "{text}");
    let expected = format!(
        "Error during upgrading to version 'v3.0.0': self-check failed: the new binary reports version {}, expected 3.0.0",
        next_version()
    );
    assert_eq!(text, expected);
    assert!(same_bytes(&home.bin(), &wine.exe(SOURCE_VERSION)), "refused: the .exe is byte-identical");
    assert_eq!(home.strays(), Vec::<String>::new(), "no partial download left");

    let (code, text) = rel.server.upgrade(&id, "version=3.1.0&timeout=55000").await;
    assert_eq!(code, 400, "{text}");
    let expected = format!("Failed to upgrade to version 3.1.0. Agent still running with version {SOURCE_VERSION}. Rolled back: the new version exited with exit code: 1 during its trial");
    assert!(text.starts_with(&expected), "{text}\n{}", agent.log());
    rel.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(same_bytes(&home.bin(), &wine.exe(SOURCE_VERSION)), "rolled back: the .exe is byte-identical");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_commands_on_windows_upgrade_through_the_control_pipe_and_roll_back() {
    let Some(wine) = wine() else { return };
    let next = next_version();
    let rel = Releases::start().await;
    rel.publish(&next, &[&wine.exe(&next)]);
    let (id, home, agent) = rel.agent(wine, "win-host", &wine.exe(SOURCE_VERSION)).await;
    let config = edge_agent_e2e::wine::winpath(&home.config());
    let host = |args: &[&str]| wine.run(&home.bin(), &[args, &["--config", &config]].concat());

    let (ok, out) = host(&["status", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{ok} {out}"));
    assert_eq!(
        (status["version"].as_str(), status["daemon"]["connected"].as_bool()),
        (Some(SOURCE_VERSION), Some(true))
    );

    // `agent upgrade` asks the running daemon over its named pipe, and follows it to the end.
    let (ok, out) = host(&["upgrade", "--version", &next]);
    assert!(ok && out.contains(&format!("upgraded {SOURCE_VERSION} -> {next}: confirmed by the new daemon")), "{out}");
    rel.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert!(same_bytes(&home.bin(), &wine.exe(&next)));

    // `agent rollback` swaps the running .exe back and restarts the worker into it.
    let (ok, out) = host(&["rollback"]);
    assert!(
        ok && out.contains(&format!("rolled back {next} -> {SOURCE_VERSION}")) && out.contains("restarts into"),
        "{out}"
    );
    rel.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(same_bytes(&home.bin(), &wine.exe(SOURCE_VERSION)), "{}", agent.log());
}
