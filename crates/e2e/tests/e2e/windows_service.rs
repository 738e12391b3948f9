//! The Windows installer (NSIS) and zip, and the agent as a Windows service, under Wine: the
//! packages hold what they should; the installer installs the agent, writes its configuration,
//! registers and starts the service, which connects, upgrades itself in place and stops and starts
//! on command; the uninstaller removes it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;

use crate::windows::Releases;
use edge_agent_e2e::rig::same_bytes;
use edge_agent_e2e::wine::{wine, winpath, Wine};
use edge_agent_e2e::{eventually, next_version, FAST};

const LIMIT: Duration = Duration::from_secs(60);

/// The installer and the zip of this version's Windows build, made once by
/// `packaging/windows/build.sh`.
fn packages(wine: &Wine) -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = wine.dir.join("packages");
        let script = Path::new(edge_agent_e2e::WORKSPACE).join("packaging/windows/build.sh");
        let run = Command::new(script).arg(wine.exe(SOURCE_VERSION)).arg(SOURCE_VERSION).arg(&out).output().unwrap();
        assert!(run.status.success(), "packaging failed: {}", String::from_utf8_lossy(&run.stderr));
        let listed: Vec<PathBuf> = String::from_utf8(run.stdout).unwrap().lines().map(PathBuf::from).collect();
        let expected = (
            out.join(format!("edge-agent-{SOURCE_VERSION}-setup.exe")),
            out.join(format!("edge-agent-{SOURCE_VERSION}-windows-x86_64.zip")),
        );
        assert_eq!(listed, [expected.0.clone(), expected.1.clone()]);
        expected
    })
}

/// Waits until `$status` of agent `id` is `state` at `version`; on timeout, fails with the log.
async fn wait_status(rel: &Releases, id: &str, state: &str, version: &str, log: impl Fn() -> String) {
    let started = std::time::Instant::now();
    while rel.server.status(id).await != (state.to_string(), version.to_string()) {
        assert!(started.elapsed() < LIMIT, "agent not {state} at {version} after {LIMIT:?}; its log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the service `edge-agent` from the prefix when the test ends, passed or failed: a
/// service left running would keep Wine up and start again with the prefix.
struct RemoveService(&'static Wine);

impl Drop for RemoveService {
    fn drop(&mut self) {
        let _ = self.0.run(&self.0.exe(SOURCE_VERSION), &["service", "uninstall"]);
    }
}

fn output(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn the_installer_and_the_zip_hold_the_agent_its_example_configuration_and_docs() {
    let Some(wine) = wine() else { return };
    let (setup, zip) = packages(wine);
    let expected: BTreeSet<&str> = ["agent.exe", "agent.toml.example", "README.md", "LICENSE.txt"].into();

    let listing = String::from_utf8(output(Command::new("7z").args(["l", "-slt"]).arg(setup))).unwrap();
    // After the archive's own properties, one block per file.
    let files = listing.split("\n----------\n").nth(1).unwrap_or_else(|| panic!("{listing}"));
    let paths: BTreeSet<&str> = files.lines().filter_map(|l| l.strip_prefix("Path = ")).collect();
    let installed: BTreeSet<&str> = paths.iter().copied().filter(|p| !p.starts_with("$PLUGINSDIR")).collect();
    let mut with_uninstaller = expected.clone();
    with_uninstaller.insert("uninstall.exe");
    assert_eq!(installed, with_uninstaller, "{listing}");
    let payload = output(Command::new("7z").args(["e", "-so"]).arg(setup).arg("agent.exe"));
    assert!(
        payload == std::fs::read(wine.exe(SOURCE_VERSION)).unwrap(),
        "the installer carries this build's agent.exe"
    );

    let names = String::from_utf8(output(Command::new("unzip").arg("-Z1").arg(zip))).unwrap();
    assert_eq!(names.lines().collect::<BTreeSet<_>>(), expected);
    let payload = output(Command::new("unzip").arg("-p").arg(zip).arg("agent.exe"));
    assert!(payload == std::fs::read(wine.exe(SOURCE_VERSION)).unwrap(), "the zip carries this build's agent.exe");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installer_starts_a_service_that_upgrades_itself_in_place_and_stops_on_command() {
    let Some(wine) = wine() else { return };
    let next = next_version();
    let rel = Releases::start().await;
    rel.publish(SOURCE_VERSION, &[&wine.exe(SOURCE_VERSION)]);
    rel.publish(&next, &[&wine.exe(&next)]);
    let (id, cfg) = rel.server.add_agent("win-service");
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("state");
    let config = home.path().join("agent.toml");
    let body = format!("{cfg}{FAST}{}state_dir = \"Z:{}\"\n", rel.agent_config(), state.display());
    std::fs::write(&config, &body).unwrap();

    let (setup, _) = packages(wine);
    let _cleanup = RemoveService(wine);
    let (ok, said) = wine.run(setup, &["/S", &format!("/CONFIG={}", winpath(&config))]);
    assert!(ok, "the installer failed: {said}");
    let dir = wine.drive_c().join("Program Files/edge-agent");
    assert_eq!(std::fs::read_to_string(wine.drive_c().join("ProgramData/edge-agent/agent.toml")).unwrap(), body);
    let log = || std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
    wait_status(&rel, &id, "connected", SOURCE_VERSION, log).await;
    assert!(same_bytes(&dir.join("agent.exe"), &wine.exe(SOURCE_VERSION)));

    // The service upgrades itself: the same path now holds the next build, and runs it.
    let (code, text) = rel.server.upgrade(&id, &format!("version={next}&timeout=55000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "{}", log());
    wait_status(&rel, &id, "connected", &next, log).await;
    assert!(same_bytes(&dir.join("agent.exe"), &wine.exe(&next)), "the service's .exe is the next build");

    let agent = dir.join("agent.exe");
    assert_eq!(wine.run(&agent, &["service", "stop"]), (true, "stopped the service edge-agent\n".into()));
    wait_status(&rel, &id, "disconnected", &next, log).await;
    let (ok, said) = wine.run(&agent, &["service", "start"]);
    assert_eq!((ok, said.as_str()), (true, "started the service edge-agent\n"), "{}", log());
    wait_status(&rel, &id, "connected", &next, log).await;

    // The uninstaller stops and removes the service and the program; the configuration stays.
    // (It runs a copy of itself from the temporary directory, and returns at once.)
    let (ok, said) = wine.run(&dir.join("uninstall.exe"), &["/S"]);
    assert!(ok, "the uninstaller failed: {said}");
    wait_status(&rel, &id, "disconnected", &next, log).await;
    let installed = dir.join("agent.exe");
    eventually(LIMIT, "agent.exe removed", || {
        let gone = !installed.exists();
        async move { gone.then_some(()) }
    })
    .await;
    let (ok, said) = wine.run(&wine.exe(SOURCE_VERSION), &["service", "stop"]);
    assert!(!ok && said.contains("cannot open the service edge-agent"), "{said}");
    assert!(wine.drive_c().join("ProgramData/edge-agent/agent.toml").exists());
}

#[test]
fn on_linux_agent_service_says_to_use_the_systemd_unit() {
    let out = Command::new(edge_agent_e2e::agent_bin()).args(["service", "install"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "agent: `agent service` manages a Windows service; here, use the systemd unit (packaging/systemd/edge-agent.service)\n"
    );
}
