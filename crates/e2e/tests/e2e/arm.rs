//! The agent on ARM Linux (aarch64 and armv7 hard-float), under QEMU user mode, against the
//! native `agent-server`: the builds `.ci/arm` makes connect and report their target, take their
//! own platform's asset from a release that has every platform's, upgrade between two ARM
//! builds to `All OK` by a patch, roll a broken ARM build back, and install from their Debian
//! packages with `dpkg -i`, then run from the installed layout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use futures_util::future::join_all;
use serde_json::Value;

use edge_agent_e2e::debroot::Root;
use edge_agent_e2e::qemu::{arm, Arm};
use edge_agent_e2e::releases::Signed;
use edge_agent_e2e::rig::same_bytes;
use edge_agent_e2e::{agent_bin, next_build, next_version, AgentHome, Proc, Server, FAST, WORKSPACE};

/// Emulation is slow: more time for each step than natively.
const LIMIT: Duration = Duration::from_secs(90);

/// A signed release directory, hosted by a real server.
struct Releases {
    signed: Signed,
    server: Server,
}

impl Releases {
    async fn start() -> Releases {
        let signed = Signed::new();
        let dir = signed.dir();
        let server = Server::start(&["--heartbeat-interval", "0.3", "--releases", dir.to_str().unwrap()]).await;
        Releases { signed, server }
    }

    /// An agent of `arm`'s build of this version, running under QEMU and connected.
    async fn agent(&self, arm: &Arm, name: &str) -> (String, AgentHome, Proc) {
        let (id, cfg) = self.server.add_agent(&format!("{name}-{}", arm.arch));
        let releases = self.signed.agent_config(&self.server.url("releases/"));
        let home = AgentHome::new(&format!("{cfg}{FAST}{releases}health_window = 60\n"));
        home.install(&arm.build(SOURCE_VERSION));
        let proc = home.start(&arm.env());
        self.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        (id, home, proc)
    }

    /// The `download/` files the server sent, by name, from its access log.
    fn sent(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.server.dir.path().join("server.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("release file served") && l.contains("/download/"))
            .filter_map(|l| l.split("path=").nth(1)?.split_whitespace().next()?.rsplit('/').next().map(str::to_owned))
            .collect()
    }
}

/// Publishes this version and the next for the host and both ARM targets, in one manifest each.
fn publish_all(rel: &Releases, targets: &[Arm]) {
    for (version, native) in
        [(SOURCE_VERSION.to_string(), PathBuf::from(agent_bin())), (next_version(), next_build().into())]
    {
        let builds: Vec<PathBuf> = targets.iter().map(|a| a.build(&version)).chain([native]).collect();
        let said = rel.signed.publish(&version, &builds.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        for a in targets {
            assert!(said.contains(&format!("published agent-{version}-{} (signed)", a.platform)), "{said}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arm_agents_connect_and_upgrade_between_two_arm_builds_by_a_patch() {
    let Some(targets) = arm() else { return };
    let next = next_version();
    let rel = Releases::start().await;
    publish_all(&rel, targets);
    let upgrade = |a: &'static Arm| {
        let (rel, next) = (&rel, next.clone());
        async move {
            let (id, home, agent) = rel.agent(a, "arm-upgrade").await;
            let (code, stats) = rel.server.get(&format!("fhir/R4/Agent/{id}/$stats")).await;
            assert_eq!(code, 200, "{stats}");
            let stats: Value = serde_json::from_str(stats["parameter"][0]["valueString"].as_str().unwrap()).unwrap();
            assert_eq!(stats["target"].as_str(), Some(a.triple), "{stats}");
            let (code, text) = rel.server.upgrade(&id, &format!("version={next}&timeout=56000")).await;
            assert_eq!((code, text.as_str()), (200, "All OK"), "{}: {}", a.arch, agent.log());
            rel.server.wait_status(&id, "connected", &next, LIMIT).await;
            assert!(same_bytes(&home.bin(), &a.build(&next)), "{}: the installed binary is the next ARM build", a.arch);
            assert!(home.history().last().is_some_and(|r| r["outcome"] == "ok"), "{:?}", home.history());
            (home, agent)
        }
    };
    let _agents = join_all(targets.iter().map(upgrade)).await;
    // Each took its own platform's patch: nothing built for another platform was downloaded.
    let sent = rel.sent();
    for a in targets {
        let patch = format!("agent-{next}-{}.patch-from-{SOURCE_VERSION}.zst", a.platform);
        assert!(sent.contains(&patch), "{}: {sent:?}", a.arch);
    }
    assert!(sent.iter().all(|f| targets.iter().any(|a| f.contains(a.platform))), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_arm_build_is_rolled_back_leaving_the_binary_byte_identical() {
    let Some(targets) = arm() else { return };
    let rel = Releases::start().await;
    let broken: Vec<PathBuf> = targets.iter().map(|a| a.broken_build(rel.signed.work.path(), "3.1.0")).collect();
    let said = rel.signed.publish("3.1.0", &broken.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    for a in targets {
        assert!(
            said.contains(&format!("agent-3.1.0-{}", a.platform)),
            "the C build's header says {}: {said}",
            a.platform
        );
    }
    let roll_back = |a: &'static Arm| {
        let rel = &rel;
        async move {
            let (id, home, agent) = rel.agent(a, "arm-broken").await;
            let (code, text) = rel.server.upgrade(&id, "version=3.1.0&timeout=56000").await;
            assert_eq!(code, 400, "{text}");
            let expected = format!("Failed to upgrade to version 3.1.0. Agent still running with version {SOURCE_VERSION}. Rolled back: the new version exited with exit status: 1 during its trial");
            assert!(text.starts_with(&expected), "{}: {text}\n{}", a.arch, agent.log());
            rel.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
            assert!(same_bytes(&home.bin(), &a.build(SOURCE_VERSION)), "{}: rolled back byte for byte", a.arch);
        }
    };
    join_all(targets.iter().map(roll_back)).await;
}

/// The ARM packages: built by `packaging/build-deb.sh` for their architecture, installed with
/// `dpkg -i` into a throwaway ARM root (their scripts run there, the agent among them, under
/// QEMU), then run from the installed layout: an operator's `agent version`, and the daemon as
/// the package's user, with the package's state directory, connected to the server.
#[tokio::test(flavor = "multi_thread")]
async fn arm_debian_packages_install_with_dpkg_and_their_agent_runs_and_connects() {
    let Some(targets) = arm() else { return };
    let server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    for a in targets {
        let out = tempfile::tempdir().unwrap();
        // The ARM job's debug build, packaged as is (a build here would race the running tests).
        let built = Command::new(Path::new(WORKSPACE).join("packaging/build-deb.sh"))
            .env("TARGET", a.triple)
            .env("PROFILE", "dev")
            .env("NO_BUILD", "1")
            .arg("--output")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(built.status.success(), "{}: {}", a.arch, String::from_utf8_lossy(&built.stderr));
        let deb = out.path().join(format!("edge-agent_{SOURCE_VERSION}-1_{}.deb", a.deb_arch));
        let field = |f: &str| {
            let o = Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        assert_eq!((field("Package"), field("Architecture")), ("edge-agent".into(), a.deb_arch.to_string()));
        let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("./usr/lib/edge-agent/agent") && !listing.contains("agent-server"), "{listing}");

        let root = Root::new();
        let said = root.install(&deb, Some(a));
        assert!(!said.contains("Warning") && !said.contains("keeping"), "{}: {said}", a.arch);
        assert!(root.ok(&["dpkg", "-s", "edge-agent"]).contains(&format!("Architecture: {}", a.deb_arch)));
        assert_eq!(root.ok(&["readlink", "/usr/bin/agent"]).trim(), "/var/lib/edge-agent/bin/agent");
        assert_eq!(root.stat("/var/lib/edge-agent/bin/agent"), "755 edge-agent");
        // The live copy the package's script seeded is the packaged ARM build, byte for byte.
        let sums = root.ok(&["sha256sum", "/usr/lib/edge-agent/agent", "/var/lib/edge-agent/bin/agent"]);
        let sums: Vec<&str> = sums.lines().filter_map(|l| l.split_whitespace().next()).collect();
        assert!(sums.len() == 2 && sums[0] == sums[1], "{}: the live copy is not the packaged build: {sums:?}", a.arch);
        let unit = root.ok(&["cat", "/lib/systemd/system/edge-agent.service"]);
        assert!(unit.contains("Type=notify"), "{unit}");

        // An operator who is not root runs the installed agent: this ARM build, under QEMU.
        root.ok(&["useradd", "--no-create-home", "fleet-op"]);
        let v = root.ok(&["runuser", "-u", "fleet-op", "--", "/usr/bin/agent", "version", "--json"]);
        let v: Value = serde_json::from_str(&v).unwrap_or_else(|_| panic!("{}: {v}", a.arch));
        assert_eq!((v["version"].as_str(), v["target"].as_str()), (Some(SOURCE_VERSION), Some(a.triple)));

        // The service as the unit runs it: the package's user, its configuration and state.
        let (id, cfg) = server.add_agent(&format!("deb-{}", a.arch));
        let config = format!("{cfg}{FAST}state_dir = \"/var/lib/edge-agent/state\"\n");
        std::fs::write(out.path().join("agent.toml"), config).unwrap();
        let staged = root.path("/etc/edge-agent/agent.toml");
        let (ok, o, e) =
            root.run(false, &["cp", out.path().join("agent.toml").to_str().unwrap(), staged.to_str().unwrap()]);
        assert!(ok, "{o}{e}");
        let dir = root.dir.path().to_str().unwrap();
        let log = std::fs::File::create(out.path().join("agent.log")).unwrap();
        let mut daemon = root
            .command(false, &["chroot", "--userspec=edge-agent:edge-agent", dir, "/usr/bin/agent", "run"])
            .args(["--config", "/etc/edge-agent/agent.toml"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let connected = tokio::time::timeout(LIMIT, server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT)).await;
        let status = root.run(true, &["runuser", "-u", "edge-agent", "--", "/usr/bin/agent", "status", "--json"]);
        edge_agent_e2e::signal(daemon.id() as i32, "TERM");
        let stopped = tokio::time::timeout(Duration::from_secs(30), async {
            while daemon.try_wait().unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let agent_log = std::fs::read_to_string(out.path().join("agent.log")).unwrap_or_default();
        assert!(connected.is_ok(), "{}: the installed agent did not connect:\n{agent_log}", a.arch);
        let status: Value = serde_json::from_str(&status.1).unwrap_or_else(|_| panic!("{status:?}"));
        assert_eq!(status["version"], SOURCE_VERSION, "{status}");
        assert_eq!(status["binary"], "/var/lib/edge-agent/bin/agent", "{status}");
        if stopped.is_err() {
            let _ = daemon.kill();
            panic!("{}: the installed agent did not stop on SIGTERM:\n{agent_log}", a.arch);
        }
        assert!(root.stat("/var/lib/edge-agent/state") == "700 edge-agent");
    }
}
