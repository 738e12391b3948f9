//! Rollback and crash safety: broken builds, kill -9 at every step, a full disk and a read-only
//! install directory. Each leaves a whole, working binary and a consistent report.

use std::path::Path;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::rig::{assert_unharmed, rig, same_bytes, LIMIT};
use edge_agent_e2e::{agent_bin, next_build, next_version, AgentHome, FAST};

#[tokio::test(flavor = "multi_thread")]
async fn broken_builds_are_rolled_back_and_not_tried_again_without_force() {
    let rig = rig().await;
    let (id, home, _agent) = rig.agent("broken", Path::new(agent_bin()), "").await;
    rig.publish_script("3.0.0", "echo '{\"version\":\"2.9.9\"}'");
    rig.publish_script(
        "3.1.0",
        "[ \"$1\" = version ] && echo '{\"version\":\"3.1.0\"}' && exit 0\necho crashing >&2\nexit 1",
    );
    rig.publish_script("3.2.0", "[ \"$1\" = version ] && echo '{\"version\":\"3.2.0\"}' && exit 0\nexec sleep 600");

    let (code, text) = rig.server.upgrade(&id, "version=3.0.0").await;
    assert_eq!(code, 400);
    assert_eq!(text, "Error during upgrading to version 'v3.0.0': self-check failed: the new binary reports version 2.9.9, expected 3.0.0");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;

    let (code, text) = rig.server.upgrade(&id, "version=3.1.0&timeout=30000").await;
    assert_eq!(code, 400);
    assert!(
        text.starts_with(&format!("Failed to upgrade to version 3.1.0. Agent still running with version {SOURCE_VERSION}. Rolled back: the new version exited with exit status: 1")),
        "{text}"
    );
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;

    let (code, text) = rig.server.upgrade(&id, "version=3.2.0&timeout=30000").await;
    assert_eq!(code, 400);
    assert!(text.ends_with("Rolled back: the new version did not connect and confirm within 4 s"), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
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
    assert!(history.as_array().unwrap().iter().all(|r| r["from"] == SOURCE_VERSION && r["at"].is_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_after_the_swap_and_during_the_trial_completes_the_upgrade() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, mut agent) = rig.agent("crash", Path::new(agent_bin()), "").await;

    // Right after the swap, and during the trial of the new version: the upgrade completes on
    // restart and its result reaches the caller that is still waiting.
    for failpoint in ["after-swap", "before-confirm"] {
        let target = if failpoint == "after-swap" { next.clone() } else { SOURCE_VERSION.to_string() };
        let old = if failpoint == "after-swap" { SOURCE_VERSION.to_string() } else { next.clone() };
        let old_daemon = home.daemon_status().and_then(|s| s["pid"].as_u64());
        agent.kill_all();
        let paused = home.start_at_failpoint(failpoint);
        // The server may still hold the killed process's socket for a moment: wait for the new one.
        home.wait_new_daemon(old_daemon).await;
        rig.server.wait_status(&id, "connected", &old, LIMIT).await;
        let query = format!("version={target}&timeout=40000");
        let pending = rig.server.upgrade(&id, &query);
        let ((code, text), restarted) = tokio::join!(pending, async {
            let mut paused = paused;
            home.wait_failpoint().await;
            paused.kill_all();
            let expected = if target == SOURCE_VERSION { Path::new(agent_bin()) } else { next_build() };
            assert!(same_bytes(&home.bin(), expected), "{failpoint}: the new binary is whole in place");
            home.start(&[])
        });
        agent = restarted;
        assert_eq!((code, text.as_str()), (200, "All OK"), "{failpoint}");
        rig.server.wait_status(&id, "connected", &target, LIMIT).await;
        assert_eq!(home.journal().unwrap()["state"], "done");
        assert_eq!(home.strays(), Vec::<String>::new());
    }
    rig.releases.handle.join();
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
    let home =
        AgentHome::new(&format!("{cfg}{FAST}releases_url = \"{}\"\n{}", rig.releases.url(), rig.releases.trust()));
    let size = std::fs::metadata(agent_bin()).unwrap().len();
    let mount = Mount::tmpfs(home.bin().parent().unwrap(), size + 512 * 1024);
    home.install(Path::new(agent_bin()));
    let mut agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    let big = std::fs::read(next_build()).unwrap();
    rig.releases.publish("6.0.0", &big);
    let (code, text) = rig.server.upgrade(&id, "version=6.0.0").await;
    assert_eq!(code, 400);
    assert!(text.starts_with("Error during upgrading to version 'v6.0.0': not enough disk space in"), "{text}");
    assert!(text.contains(&format!("{} bytes needed", big.len())), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;

    let mut unsized_manifest = rig.releases.publish("6.0.1", &big);
    unsized_manifest["assets"][0].as_object_mut().unwrap().remove("size");
    rig.releases.write_manifest("6.0.1", &unsized_manifest);
    let (code, text) = rig.server.upgrade(&id, "version=6.0.1&timeout=30000").await;
    assert_eq!(code, 400);
    assert!(text.starts_with("Error during upgrading to version 'v6.0.1': disk full while writing"), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;

    mount.read_only();
    rig.releases.publish("6.0.2", b"small enough to fit");
    let (code, text) = rig.server.upgrade(&id, "version=6.0.2").await;
    assert_eq!(code, 400);
    assert!(text.contains("the install directory") && text.contains("is not writable"), "{text}");
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    agent.kill_all();
}
