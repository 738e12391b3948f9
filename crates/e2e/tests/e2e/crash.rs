//! Every upgrade request answered, whatever dies when: kill -9 of the worker during the
//! download, the verification or the self-check; a request lost with its socket; a supervisor
//! that re-executes itself from the installed binary after upgrades.

use std::path::Path;
use std::time::Duration;

use edge_agent::state_dir::StateDir;
use edge_agent::upgrade::journal::State;
use edge_agent::upgrade::runner::MAX_RESUMES;
use edge_agent::upgrade::store::Store;
use edge_agent_base::build_info::SOURCE_VERSION;

use edge_agent_e2e::rig::{assert_unharmed, rig, rig_with, same_bytes, LIMIT};
use edge_agent_e2e::{agent_bin, children, eventually, next_build, next_version, signal, unread_from, AgentHome, FAST};

/// The upgrades recorded in the agent's history to `version`, with their outcome, once the
/// journal is closed: the answer goes out before the journal closes and the history is written,
/// so both are read together under the journal's lock.
async fn recorded(home: &AgentHome, version: &str) -> Vec<String> {
    let store = Store::new(StateDir::new(home.state()));
    let history = eventually(LIMIT, "the upgrade journal closed", || {
        let snapshot = store.snapshot().unwrap();
        async move { (snapshot.0.state == State::Done).then_some(snapshot.1) }
    })
    .await;
    history
        .iter()
        .filter(|r| r.to.label() == version)
        .map(|r| serde_json::to_value(r.outcome).unwrap().as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_worker_mid_download_resumes_from_the_partial_file_and_answers() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, agent) = rig.agent("kill-download", Path::new(agent_bin()), "").await;
    rig.releases.faults().drip = Some((256 * 1024, Duration::from_millis(50)));
    let query = format!("version={next}&timeout=40000");
    let (answer, partial) = tokio::join!(rig.server.upgrade(&id, &query), async {
        home.wait_staged(&next, 1024 * 1024).await;
        assert_eq!(home.journal().unwrap()["state"], "downloading");
        signal(agent.worker_pid().await, "KILL");
        let partial = home.staged(&next).unwrap();
        rig.releases.faults().drip = None;
        partial
    });
    assert_eq!(answer, (200, "All OK".to_string()), "answered before the caller's timeout");
    let ranges = rig.releases.asset_ranges();
    assert_eq!(ranges.len(), 2, "one download, and one resumed by the next worker: {ranges:?}");
    assert_eq!(ranges[0], None);
    assert!(
        ranges[1].is_some_and(|from| from >= partial.min(1024 * 1024)),
        "resumed from the partial file: {ranges:?}"
    );
    assert!(same_bytes(&home.bin(), next_build()));
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(recorded(&home, &next).await, ["ok"], "one upgrade, though the request reached two workers");
    assert_eq!(home.strays(), Vec::<String>::new());
    rig.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_worker_during_verification_or_self_check_answers_without_downloading_again() {
    let rig = rig().await;
    let next = next_version();
    for (n, failpoint) in ["verifying", "self-check"].into_iter().enumerate() {
        let (id, home, mut agent) = rig.agent(&format!("kill-{failpoint}"), Path::new(agent_bin()), "").await;
        let old = home.daemon_status().and_then(|s| s["pid"].as_u64());
        agent.kill_all();
        let agent = home.start_at_failpoint(failpoint);
        home.wait_new_daemon(old).await;
        let query = format!("version={next}&timeout=40000");
        let (answer, ()) = tokio::join!(rig.server.upgrade(&id, &query), async {
            home.wait_failpoint().await;
            assert_eq!(home.journal().unwrap()["state"], "verifying");
            signal(agent.worker_pid().await, "KILL");
        });
        assert_eq!(answer, (200, "All OK".to_string()), "{failpoint}");
        assert_eq!(
            rig.releases.asset_ranges(),
            vec![None; n + 1],
            "{failpoint}: the staged file was not fetched again"
        );
        assert!(same_bytes(&home.bin(), next_build()));
        assert_eq!(recorded(&home, &next).await, ["ok"]);
        assert_eq!(home.strays(), Vec::<String>::new());
    }
    rig.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_keeps_dying_mid_upgrade_ends_in_a_definite_error() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, mut agent) = rig.agent("kill-always", Path::new(agent_bin()), "").await;
    let old = home.daemon_status().and_then(|s| s["pid"].as_u64());
    agent.kill_all();
    // Every worker pauses verifying; each is killed there. A takeover journals `verifying` before
    // it resolves the release again, so only the failpoint's mark says a worker is paused there;
    // removing it lets the next worker pause in turn.
    let agent = home.start_at_failpoint("verifying");
    home.wait_new_daemon(old).await;
    let query = format!("version={next}&timeout=56000");
    let ((code, text), ()) = tokio::join!(rig.server.upgrade(&id, &query), async {
        for resumes in 0..=MAX_RESUMES {
            home.wait_failpoint().await;
            let j = home.journal().unwrap();
            assert_eq!((&j["state"], &j["resumes"]), (&"verifying".into(), &resumes.into()), "paused verifying");
            std::fs::remove_file(home.failpoint_mark()).unwrap();
            signal(agent.worker_pid().await, "KILL");
        }
    });
    assert_eq!(code, 400);
    let expected = format!("Error during upgrading to version 'v{next}': interrupted: the agent restarted during the verification (taken over {} times)", MAX_RESUMES + 1);
    assert!(text.starts_with(&expected), "{text}");
    assert_eq!(home.journal().unwrap()["state"], "done");
    assert_eq!(rig.releases.asset_ranges(), vec![None], "downloaded once");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
    rig.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_lost_with_its_socket_is_sent_again_and_acted_on_once() {
    // No heartbeats from the server: what waits unread in the agent's socket is the request.
    let rig = rig_with(&["--heartbeat-interval", "60"]).await;
    let next = next_version();
    let (id, cfg) = rig.server.add_agent("redelivery");
    let slow = FAST.replace("heartbeat_interval = 0.3", "heartbeat_interval = 60");
    let home = AgentHome::new(&format!(
        "{cfg}{slow}releases_url = \"{}\"\n{}health_window = 10\n",
        rig.releases.url(),
        rig.releases.trust()
    ));
    home.install(Path::new(agent_bin()));
    let agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let worker = agent.worker_pid().await;
    signal(worker, "STOP");
    let port = rig.server.addr.port();
    let before = unread_from(port);
    let query = format!("version={next}&timeout=40000");
    // The request's frame alone is longer than this (its callback is 79 characters); the frames
    // the server sends at connect, which a loaded machine may deliver only now, are shorter.
    const REQUEST_BYTES: u64 = 100;
    let (answer, ()) = tokio::join!(rig.server.upgrade(&id, &query), async {
        eventually(LIMIT, "the request in the stopped worker's socket", || {
            let unread = unread_from(port);
            async move { (unread >= before + REQUEST_BYTES).then_some(()) }
        })
        .await;
        // The worker dies without reading it; the supervisor starts another.
        signal(worker, "KILL");
    });
    assert_eq!(answer, (200, "All OK".to_string()), "delivered again on the new worker's socket");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(recorded(&home, &next).await, ["ok"]);
    rig.join();
}

/// The file `/proc/<pid>/exe` maps and the installed binary are the same file.
fn runs_installed(pid: i32, home: &AgentHome) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(exe), Ok(bin)) = (std::fs::metadata(format!("/proc/{pid}/exe")), std::fs::metadata(home.bin())) else {
        return false;
    };
    exe.ino() == bin.ino() && exe.dev() == bin.dev()
}

/// Whether process `pid` has a handler for SIGTERM (bit 15 of `SigCgt` in `/proc/<pid>/status`).
fn catches_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim);
    caught.and_then(|hex| u64::from_str_radix(hex, 16).ok()).is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_supervisor_re_executes_itself_from_the_installed_binary_after_each_upgrade() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, mut agent) = rig.agent("reexec", Path::new(agent_bin()), "").await;
    let supervisor = agent.pid();
    for target in [next.as_str(), SOURCE_VERSION, next.as_str()] {
        let (code, text) = rig.server.upgrade(&id, &format!("version={target}&timeout=40000")).await;
        assert_eq!((code, text.as_str()), (200, "All OK"), "to {target}");
        rig.server.wait_status(&id, "connected", target, LIMIT).await;
        eventually(LIMIT, "the supervisor running the installed file, with its worker", || {
            let ok = runs_installed(supervisor, &home) && children(supervisor).len() == 1;
            async move { ok.then_some(()) }
        })
        .await;
        let worker = children(supervisor)[0];
        assert!(runs_installed(worker, &home), "the worker runs the installed file too");
    }
    assert_eq!(agent.child.try_wait().unwrap(), None, "the same supervisor process, same pid");
    // The adopted worker is still supervised: stopping the supervisor stops it cleanly. The
    // re-executed image catches SIGTERM only once it has started its runtime.
    eventually(LIMIT, "the re-executed supervisor catching SIGTERM", || {
        let ready = catches_sigterm(supervisor);
        async move { ready.then_some(()) }
    })
    .await;
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(LIMIT).await, Some(0));
    rig.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_request_answers_the_one_it_cancels_and_finishes_the_download() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("forced", Path::new(agent_bin()), "").await;
    rig.releases.faults().drip = Some((256 * 1024, Duration::from_millis(50)));
    let first = format!("version={next}&timeout=40000");
    let forced = format!("version={next}&force=true&timeout=40000");
    let (cancelled, finished) = tokio::join!(rig.server.upgrade(&id, &first), async {
        home.wait_staged(&next, 512 * 1024).await;
        rig.releases.faults().drip = None;
        rig.server.upgrade(&id, &forced).await
    });
    assert_eq!(
        cancelled,
        (400, format!("Error during upgrading to version 'v{next}': cancelled by a forced upgrade request"))
    );
    assert_eq!(finished, (200, "All OK".to_string()));
    let ranges = rig.releases.asset_ranges();
    assert!(
        ranges.len() == 2 && ranges[1].is_some_and(|from| from > 0),
        "the forced one resumed the partial file: {ranges:?}"
    );
    assert!(same_bytes(&home.bin(), next_build()));
    assert_eq!(recorded(&home, &next).await, ["ok"]);
    assert_eq!(home.strays(), Vec::<String>::new());
    rig.join();
}
