//! Upgrades end to end: a real server, a real release server, and two genuinely different builds
//! of the agent (the current one, and [`next_build`], built as [`next_version`]).

use std::path::Path;
use std::time::Duration;

use edge_agent::agent::VERSION;
use serde_json::{json, Value};

use crate::support::releases::{platform, sha256_hex, ReleaseServer};
use crate::support::{eventually, next_build, next_version, AgentHome, Proc, Server, AGENT, FAST};

const LIMIT: Duration = Duration::from_secs(30);

struct Rig {
    server: Server,
    releases: ReleaseServer,
}

async fn rig() -> Rig {
    let server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    let releases = ReleaseServer::start().await;
    releases.publish_file(VERSION, Path::new(AGENT));
    releases.publish_file(&next_version(), next_build());
    releases.set_latest(&next_version());
    Rig { server, releases }
}

impl Rig {
    /// An agent installed from `binary`, running, connected.
    async fn agent(&self, name: &str, binary: &Path, extra: &str) -> (String, AgentHome, Proc) {
        let (id, cfg) = self.server.add_agent(name);
        let home = AgentHome::new(&format!(
            "{cfg}{FAST}releases_url = \"{}\"\nhealth_window = 4\n{extra}",
            self.releases.url()
        ));
        home.install(binary);
        let proc = home.start(&[]);
        let version = Self::version_of(binary);
        self.server.wait_status(&id, "connected", &version, LIMIT).await;
        (id, home, proc)
    }

    fn version_of(binary: &Path) -> String {
        let out = std::process::Command::new(binary).args(["version", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["version"].as_str().unwrap().to_string()
    }

    /// Publishes a shell script standing in for a broken build of `version`.
    fn publish_script(&self, version: &str, script: &str) {
        self.releases.publish(version, format!("#!/bin/sh\n{script}\n").as_bytes());
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    sha256_hex(&std::fs::read(a).unwrap()) == sha256_hex(&std::fs::read(b).unwrap())
}

/// What every failed upgrade must leave: the old binary, no partial files, a connected agent.
async fn assert_unharmed(rig: &Rig, id: &str, home: &AgentHome, original: &Path) {
    assert!(same_bytes(&home.bin(), original), "the installed binary is byte-for-byte what it was");
    assert_eq!(home.strays(), Vec::<String>::new(), "no temporary files beside the binary");
    rig.server.wait_status(id, "connected", &Rig::version_of(original), LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_to_an_explicit_version_then_same_version_then_forced_reinstall() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("up-1", Path::new(AGENT), "").await;

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    assert!(same_bytes(&home.bin(), next_build()), "the installed binary is the served artifact");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(home.journal().unwrap()["state"], "done");
    assert_eq!(home.journal().unwrap()["previousVersion"], VERSION);
    let manifest_get = rig.releases.seen().into_iter().find(|s| s.path == format!("v{next}.json")).unwrap();
    assert_eq!(manifest_get.query.as_deref(), Some(format!("a=edge-agent&c={VERSION}").as_str()));

    let downloads = rig.releases.asset_gets().len();
    let (code, text) = rig.server.upgrade(&id, &format!("version={next}")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "same version: a no-op");
    assert_eq!(rig.releases.asset_gets().len(), downloads, "nothing downloaded for the same version");

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&force=true&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    assert_eq!(rig.releases.asset_gets().len(), downloads + 1, "force reinstalls");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_never_downgrades_but_an_explicit_downgrade_does_unless_forbidden() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("down-1", Path::new(AGENT), "").await;

    let (code, text) = rig.server.upgrade(&id, "timeout=30000").await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "latest is the next version");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;

    rig.releases.set_latest(VERSION);
    let downloads = rig.releases.asset_gets().len();
    let (code, text) = rig.server.upgrade(&id, "").await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "latest older than running: a no-op");
    assert_eq!(rig.releases.asset_gets().len(), downloads);
    assert!(same_bytes(&home.bin(), next_build()));

    let (code, text) = rig.server.upgrade(&id, &format!("version={VERSION}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "an explicit downgrade");
    rig.server.wait_status(&id, "connected", VERSION, LIMIT).await;
    assert!(same_bytes(&home.bin(), Path::new(AGENT)));

    let (id2, home2, _agent2) = rig.agent("down-2", next_build(), "allow_downgrade = false\n").await;
    let (code, text) = rig.server.upgrade(&id2, &format!("version={VERSION}")).await;
    assert_eq!(code, 400);
    assert_eq!(
        text,
        format!("Error during upgrading to version 'v{VERSION}': downgrade from {next} to {VERSION} is not allowed by this agent's configuration (allow_downgrade = false)")
    );
    assert_unharmed(&rig, &id2, &home2, next_build()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn release_faults_are_reported_and_leave_the_binary_untouched() {
    let rig = rig().await;
    let (id, home, _agent) = rig.agent("faults", Path::new(AGENT), "").await;
    let small = b"#!/bin/sh\necho not really an agent\n".repeat(30);
    let p = platform();

    rig.releases.write_raw("v5.0.0.json", "{\"tag_name\": \"v5.0.0\", \"assets\": [oops");
    let mut no_asset = rig.releases.publish("5.0.1", &small);
    no_asset["assets"][0]["name"] = json!("agent-5.0.1-plan9-mips");
    no_asset["assets"].as_array_mut().unwrap().truncate(1);
    rig.releases.write_manifest("5.0.1", &no_asset);
    let mut unsummed = rig.releases.publish("5.0.2", &small);
    unsummed["assets"][0].as_object_mut().unwrap().remove("sha256");
    unsummed["assets"].as_array_mut().unwrap().truncate(1);
    rig.releases.write_manifest("5.0.2", &unsummed);
    let mut wrong = rig.releases.publish("5.0.3", &small);
    wrong["assets"][0]["sha256"] = json!(sha256_hex(b"other bytes"));
    rig.releases.write_manifest("5.0.3", &wrong);
    let mut undersized = rig.releases.publish("5.0.4", &small);
    undersized["assets"][0]["size"] = json!(100);
    rig.releases.write_manifest("5.0.4", &undersized);
    rig.releases.publish("5.0.5", &small);
    let mut sidecar_only = rig.releases.publish("5.0.6", &small);
    sidecar_only["assets"][0].as_object_mut().unwrap().remove("sha256");
    rig.releases.write_manifest("5.0.6", &sidecar_only);
    std::fs::write(
        rig.releases.dir.path().join(format!("download/v5.0.6/agent-5.0.6-{p}.sha256")),
        format!("{}  x\n", sha256_hex(b"x")),
    )
    .unwrap();

    let cases: Vec<(&str, String)> = vec![
        ("version=1.2.3", "Error during upgrading to version 'v1.2.3'. '1.2.3' is not a valid version".into()),
        (
            "version=not-a-version",
            "Error during upgrading to version 'vnot-a-version'. 'not-a-version' is not a valid version".into(),
        ),
        ("version=5.0.0", "Error during upgrading to version 'v5.0.0': invalid release manifest".into()),
        (
            "version=5.0.1",
            format!("Error during upgrading to version 'v5.0.1': No download URL found for release 'v5.0.1' for {p}"),
        ),
        (
            "version=5.0.2",
            format!("Error during upgrading to version 'v5.0.2': no sha256 published for agent-5.0.2-{p}"),
        ),
        ("version=5.0.3", "Error during upgrading to version 'v5.0.3': checksum mismatch for".into()),
        ("version=5.0.4", "Error during upgrading to version 'v5.0.4': the download of".into()),
        ("version=5.0.6", "Error during upgrading to version 'v5.0.6': checksum mismatch".into()),
    ];
    for (query, expected) in cases {
        let (code, text) = rig.server.upgrade(&id, query).await;
        assert_eq!(code, 400, "{query}: {text}");
        assert!(text.starts_with(&expected), "{query}: {text:?} should start with {expected:?}");
        assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;
    }

    rig.releases.faults().truncate_always_at = Some(200);
    let (code, text) = rig.server.upgrade(&id, "version=5.0.5&timeout=50000").await;
    assert_eq!(code, 400);
    assert!(text.contains("body ended after 200 of") || text.contains("gave up after 6 attempts"), "{text}");
    rig.releases.faults().truncate_always_at = None;
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;

    rig.releases.faults().status.insert(format!("download/v5.0.5/agent-5.0.5-{p}"), 404);
    let (code, text) = rig.server.upgrade(&id, "version=5.0.5").await;
    assert_eq!((code, text.contains("HTTP 404")), (400, true), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_downloads_are_retried_and_resumed_with_range() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("resume", Path::new(AGENT), "").await;
    {
        let mut f = rig.releases.faults();
        f.fail_first = 2;
        f.truncate_first_at = Some(4 * 1024 * 1024);
    }
    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&timeout=50000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    let gets = rig.releases.asset_gets();
    assert_eq!(gets.len(), 4, "503, 503, cut short, resumed: {gets:?}");
    let resumed_from: u64 = gets[3]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    assert!(resumed_from > 0, "the last request resumes instead of starting over: {gets:?}");
    assert!(same_bytes(&home.bin(), next_build()));

    // A server that ignores Range: the agent starts over and still installs exactly the artifact.
    {
        let mut f = rig.releases.faults();
        f.ignore_range = true;
        f.truncate_first_at = Some(4 * 1024 * 1024);
    }
    let (code, text) = rig.server.upgrade(&id, &format!("version={VERSION}&timeout=50000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    assert!(same_bytes(&home.bin(), Path::new(AGENT)));
    rig.server.wait_status(&id, "connected", VERSION, LIMIT).await;
}

async fn last_updated(server: &Server, id: &str) -> String {
    let (_, v) = server.get(&format!("fhir/R4/Agent/{id}/$status")).await;
    v["parameter"][2]["valueInstant"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_download_keeps_heartbeats_flowing_and_a_second_request_is_told_to_wait() {
    let rig = rig().await;
    let next = next_version();
    let (id, _home, agent) = rig.agent("slow", Path::new(AGENT), "").await;
    rig.releases.faults().drip = Some((512 * 1024, Duration::from_millis(60)));
    let server_url = rig.server.url(&format!("fhir/R4/Agent/{id}/$upgrade?version={next}&timeout=56000"));
    let token = rig.server.admin_token().await;
    let http = rig.server.http.clone();
    let first =
        tokio::spawn(
            async move { http.get(server_url).bearer_auth(token).send().await.unwrap().text().await.unwrap() },
        );
    agent.wait_log("downloading", LIMIT).await;

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}")).await;
    assert_eq!((code, text.as_str()), (400, "Pending upgrade is already in progress"));
    let before = last_updated(&rig.server, &id).await;
    eventually(LIMIT, "a heartbeat during the download", || {
        let before = before.clone();
        let server = &rig.server;
        let id = &id;
        async move { (last_updated(server, id).await > before).then_some(()) }
    })
    .await;
    assert!(!first.is_finished(), "still downloading while heartbeats flow");
    let body: Value = serde_json::from_str(&first.await.unwrap()).unwrap();
    assert_eq!(body["issue"][0]["details"]["text"], "All OK");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_builds_are_rolled_back_and_not_tried_again_without_force() {
    let rig = rig().await;
    let (id, home, _agent) = rig.agent("broken", Path::new(AGENT), "").await;
    rig.publish_script("3.0.0", "echo '{\"version\":\"2.9.9\"}'");
    rig.publish_script(
        "3.1.0",
        "[ \"$1\" = version ] && echo '{\"version\":\"3.1.0\"}' && exit 0\necho crashing >&2\nexit 1",
    );
    rig.publish_script("3.2.0", "[ \"$1\" = version ] && echo '{\"version\":\"3.2.0\"}' && exit 0\nexec sleep 600");

    let (code, text) = rig.server.upgrade(&id, "version=3.0.0").await;
    assert_eq!(code, 400);
    assert_eq!(text, "Error during upgrading to version 'v3.0.0': self-check failed: the new binary reports version 2.9.9, expected 3.0.0");
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;

    let (code, text) = rig.server.upgrade(&id, "version=3.1.0&timeout=30000").await;
    assert_eq!(code, 400);
    assert!(
        text.starts_with(&format!("Failed to upgrade to version 3.1.0. Agent still running with version {VERSION}. Rolled back: the new version exited with exit status: 1")),
        "{text}"
    );
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;

    let (code, text) = rig.server.upgrade(&id, "version=3.2.0&timeout=30000").await;
    assert_eq!(code, 400);
    assert!(text.ends_with("Rolled back: the new version did not connect and confirm within 4 s"), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;
    assert_eq!(home.journal().unwrap()["state"], "done");

    for (v, why) in [
        ("3.0.0", "broken: self-check failed"),
        ("3.1.0", "rolled back: the new version exited"),
        ("3.2.0", "rolled back: the new version did not"),
    ] {
        let downloads = rig.releases.asset_gets().len();
        let (code, text) = rig.server.upgrade(&id, &format!("version={v}")).await;
        assert_eq!(code, 400);
        assert!(
            text.contains(&format!("version {v} failed here before ({why}"))
                && text.ends_with("use force to try it again"),
            "{text}"
        );
        assert_eq!(rig.releases.asset_gets().len(), downloads, "refused without downloading");
    }
    let (code, text) = rig.server.upgrade(&id, "version=3.0.0&force=true").await;
    assert_eq!((code, text.contains("self-check failed")), (400, true), "force tries again: {text}");

    // The record the agent keeps, which agent:stats reports.
    let history: Value = serde_json::from_slice(&std::fs::read(home.state().join("history.json")).unwrap()).unwrap();
    let outcomes: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["to"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    for expected in [("3.0.0", "broken"), ("3.1.0", "rolled_back"), ("3.2.0", "rolled_back")] {
        assert!(outcomes.contains(&expected), "{expected:?} in {outcomes:?}");
    }
    assert!(history.as_array().unwrap().iter().all(|r| r["from"] == VERSION && r["at"].is_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_at_any_step_leaves_a_whole_binary_and_a_consistent_report() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, mut agent) = rig.agent("crash", Path::new(AGENT), "").await;

    // During the download.
    rig.releases.faults().drip = Some((256 * 1024, Duration::from_millis(50)));
    let query = format!("version={next}&timeout=2000");
    let pending = rig.server.upgrade(&id, &query);
    let (_, ()) = tokio::join!(pending, async {
        agent.wait_log("downloading url=", LIMIT).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent.kill_all();
    });
    rig.releases.faults().drip = None;
    let mut agent = home.start(&[]);
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;

    // Right after the swap, and during the trial of the new version: the upgrade completes on
    // restart and its result reaches the caller that is still waiting.
    for failpoint in ["after-swap", "before-confirm"] {
        let target = if failpoint == "after-swap" { next.clone() } else { VERSION.to_string() };
        let old = if failpoint == "after-swap" { VERSION.to_string() } else { next.clone() };
        agent.kill_all();
        let connects = home.connects();
        let paused = home.start(&[("EDGE_AGENT_FAILPOINT", failpoint)]);
        // The server may still hold the killed process's socket for a moment: wait for the new one.
        home.wait_connects(connects + 1).await;
        rig.server.wait_status(&id, "connected", &old, LIMIT).await;
        let query = format!("version={target}&timeout=40000");
        let pending = rig.server.upgrade(&id, &query);
        let ((code, text), restarted) = tokio::join!(pending, async {
            let mut paused = paused;
            paused.wait_log(&format!("failpoint reached: pausing failpoint=\"{failpoint}\""), LIMIT).await;
            paused.kill_all();
            let expected = if target == VERSION { Path::new(AGENT) } else { next_build() };
            assert!(same_bytes(&home.bin(), expected), "{failpoint}: the new binary is whole in place");
            home.start(&[])
        });
        agent = restarted;
        assert_eq!((code, text.as_str()), (200, "All OK"), "{failpoint}");
        rig.server.wait_status(&id, "connected", &target, LIMIT).await;
        assert_eq!(home.journal().unwrap()["state"], "done");
        assert_eq!(home.strays(), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_result_is_reported_after_the_server_restarts_mid_upgrade() {
    let mut rig = rig().await;
    let next = next_version();
    let (id, _home, agent) = rig.agent("restart", Path::new(AGENT), "").await;
    rig.releases.faults().drip = Some((1024 * 1024, Duration::from_millis(80)));
    let url = rig.server.url(&format!("fhir/R4/Agent/{id}/$upgrade?version={next}"));
    let token = rig.server.admin_token().await;
    let http = rig.server.http.clone();
    let call = tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.map(|r| r.status()) });
    agent.wait_log("downloading url=", LIMIT).await;
    rig.server.restart();
    assert!(call.await.unwrap().is_err(), "the caller lost its server");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    eventually(LIMIT, "the late reply, dropped quietly", || {
        let log = rig.server.proc.log();
        async move { log.contains("late reply dropped").then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_upgrade_answers_for_every_agent_including_a_disconnected_one() {
    let rig = rig().await;
    let next = next_version();
    let (a, _home_a, _agent_a) = rig.agent("bulk-a", Path::new(AGENT), "").await;
    let (b, _home_b, _agent_b) = rig.agent("bulk-b", Path::new(AGENT), "").await;
    let (c, _) = rig.server.add_agent("bulk-c");
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "version", "valueString": next},
        {"name": "timeout", "valueInteger": 40000},
    ]});
    let (code, bundle) = rig.server.post("fhir/R4/Agent/$upgrade?name=bulk-", body).await;
    assert_eq!(code, 200, "{bundle}");
    assert_eq!(bundle["type"], "collection");
    let results: std::collections::HashMap<String, String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let p = &e["resource"]["parameter"];
            (
                p[0]["resource"]["id"].as_str().unwrap().to_string(),
                p[1]["resource"]["issue"][0]["details"]["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[&a], "All OK");
    assert_eq!(results[&b], "All OK");
    assert_eq!(results[&c], "Agent not connected");
    rig.server.wait_status(&a, "connected", &next, LIMIT).await;
    rig.server.wait_status(&b, "connected", &next, LIMIT).await;
}

/// A small tmpfs mounted for one test (CI runs as root), unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, bytes: u64) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(dir.to_path_buf())
    }
    fn read_only(&self) {
        let out = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_and_a_read_only_install_directory_are_clear_errors() {
    let rig = rig().await;
    let (id, cfg) = rig.server.add_agent("disk");
    let home = AgentHome::new(&format!("{cfg}{FAST}releases_url = \"{}\"\n", rig.releases.url()));
    let size = std::fs::metadata(AGENT).unwrap().len();
    let mount = Mount::tmpfs(home.bin().parent().unwrap(), size + 512 * 1024);
    home.install(Path::new(AGENT));
    let mut agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", VERSION, LIMIT).await;

    let big = std::fs::read(next_build()).unwrap();
    rig.releases.publish("6.0.0", &big);
    let (code, text) = rig.server.upgrade(&id, "version=6.0.0").await;
    assert_eq!(code, 400);
    assert!(text.starts_with("Error during upgrading to version 'v6.0.0': not enough disk space in"), "{text}");
    assert!(text.contains(&format!("{} bytes needed", big.len())), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;

    let mut unsized_manifest = rig.releases.publish("6.0.1", &big);
    unsized_manifest["assets"][0].as_object_mut().unwrap().remove("size");
    rig.releases.write_manifest("6.0.1", &unsized_manifest);
    let (code, text) = rig.server.upgrade(&id, "version=6.0.1&timeout=30000").await;
    assert_eq!(code, 400);
    assert!(text.starts_with("Error during upgrading to version 'v6.0.1': disk full while writing"), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(AGENT)).await;

    mount.read_only();
    rig.releases.publish("6.0.2", b"small enough to fit");
    let (code, text) = rig.server.upgrade(&id, "version=6.0.2").await;
    assert_eq!(code, 400);
    assert!(text.contains("the install directory") && text.contains("is not writable"), "{text}");
    assert!(same_bytes(&home.bin(), Path::new(AGENT)));
    rig.server.wait_status(&id, "connected", VERSION, LIMIT).await;
    agent.kill_all();
}

/// Runs the installed `agent <args> --config <home>`: (exit code, stdout, stderr).
fn host_command(home: &AgentHome, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(home.bin()).args(args).arg("--config").arg(home.config()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn status_json(home: &AgentHome) -> Value {
    let (code, out, err) = host_command(home, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_rollback_and_check_config_on_the_host_with_and_without_a_daemon() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, mut agent) = rig.agent("host", Path::new(AGENT), "").await;

    let s = status_json(&home);
    assert_eq!(s["version"], VERSION);
    assert_eq!(s["daemon"]["connected"], true);
    assert_eq!((s["previous"].is_null(), s["lastUpgrades"].as_array().unwrap().len()), (true, 0));
    let (_, text, _) = host_command(&home, &["status"]);
    assert!(text.contains(&format!("version:   {VERSION}")) && text.contains("connected since"), "{text}");

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    let s = status_json(&home);
    assert_eq!((s["version"].as_str(), s["previous"]["version"].as_str()), (Some(next.as_str()), Some(VERSION)));
    assert_eq!(s["lastUpgrades"][0]["outcome"], "ok");

    // With the daemon running: the previous binary goes back and the daemon restarts into it.
    let (code, out, err) = host_command(&home, &["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("rolled back {next} -> {VERSION}")) && out.contains("restarts into"), "{out}");
    rig.server.wait_status(&id, "connected", VERSION, LIMIT).await;
    assert!(same_bytes(&home.bin(), Path::new(AGENT)));

    // Without a daemon: the swap alone, and status says nothing runs.
    agent.kill_all();
    eventually(LIMIT, "status to see no daemon", || {
        let gone = status_json(&home)["daemon"].is_null();
        async move { gone.then_some(()) }
    })
    .await;
    let (code, out, _) = host_command(&home, &["rollback"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("rolled back {VERSION} -> {next}")) && out.contains("no daemon is running"), "{out}");
    assert!(same_bytes(&home.bin(), next_build()));
    agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    drop(agent);

    // No previous binary: a clear refusal.
    let (_, cfg) = rig.server.add_agent("host-fresh");
    let fresh = AgentHome::new(&cfg);
    fresh.install(Path::new(AGENT));
    let (code, _, err) = host_command(&fresh, &["rollback"]);
    assert_eq!(code, 1);
    assert!(err.contains("no previous binary at") && err.contains("nothing to roll back to"), "{err}");

    // check-config: good, wrong secret, unreachable server, invalid file.
    let (code, out, err) = host_command(&fresh, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("issued a token"), "{out}");
    let wrong = AgentHome::new(&cfg.replace("client_secret = \"", "client_secret = \"x"));
    wrong.install(Path::new(AGENT));
    let (code, _, err) = host_command(&wrong, &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("refused this agent's client credentials"), "{err}");
    let port = rig.server.addr.port();
    let gone = AgentHome::new(&cfg.replace(&format!(":{port}/"), ":1/"));
    gone.install(Path::new(AGENT));
    let (code, _, err) = host_command(&gone, &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("token request to http://127.0.0.1:1/oauth2/token failed"), "{err}");
    std::fs::write(gone.config(), "base_url = \"nope\"\n").unwrap();
    let (code, _, err) = host_command(&gone, &["check-config"]);
    assert_eq!(code, 64);
    assert!(err.contains("`base_url` = \"nope\" is invalid"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_upgrade_on_the_host_through_the_daemon_and_alone() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, agent) = rig.agent("host-upgrade", Path::new(AGENT), "").await;

    let (code, out, err) = host_command(&home, &["upgrade", "--version", &next]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("upgraded {VERSION} -> {next}: confirmed by the new daemon")), "{out}");
    assert!(err.contains("(100%)") && err.contains("MiB/s"), "progress lines: {err}");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert!(same_bytes(&home.bin(), next_build()));

    let (code, _, err) = host_command(&home, &["upgrade", "--version", "9.9.9"]);
    assert_eq!(code, 1);
    assert!(err.contains("Error during upgrading to version 'v9.9.9'. '9.9.9' is not a valid version"), "{err}");
    let (code, out, _) = host_command(&home, &["upgrade", "--version", &next]);
    assert_eq!((code, out.contains(&format!("already up to date: running {next}"))), (0, true), "{out}");

    // No daemon: the command does the work itself; the next `agent run` confirms it on trial.
    drop(agent);
    eventually(LIMIT, "status to see no daemon", || {
        let gone = status_json(&home)["daemon"].is_null();
        async move { gone.then_some(()) }
    })
    .await;
    let (code, out, err) = host_command(&home, &["upgrade", "--version", VERSION]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("installed {VERSION} (no daemon is running)")), "{out}");
    assert!(same_bytes(&home.bin(), Path::new(AGENT)));
    assert_eq!(home.journal().unwrap()["state"], "trial");
    let _agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", VERSION, LIMIT).await;
    eventually(LIMIT, "the trial confirmed", || {
        let state = home.journal().map(|j| j["state"].clone());
        async move { (state == Some(json!("done"))).then_some(()) }
    })
    .await;
}
