//! The operator's commands on the host, against a real server and release source, with and
//! without a running daemon: status, rollback, check-config, upgrade.

use std::path::Path;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::rig::{rig, same_bytes, LIMIT};
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, AgentHome};

/// Runs the installed `agent <args> --config <home>`: (exit code, stdout, stderr).
fn host_command(home: &AgentHome, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(home.bin());
    cmd.args(args)
        .arg("--config")
        .arg(home.config())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = edge_agent_e2e::spawn_retrying(&mut cmd).wait_with_output().unwrap();
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
    let (id, home, mut agent) = rig.agent("host", Path::new(agent_bin()), "").await;

    let s = status_json(&home);
    assert_eq!(s["version"], SOURCE_VERSION);
    assert_eq!(s["daemon"]["connected"], true);
    assert_eq!((s["previous"].is_null(), s["lastUpgrades"].as_array().unwrap().len()), (true, 0));
    let (_, text, _) = host_command(&home, &["status"]);
    assert!(text.contains(&format!("version:   {SOURCE_VERSION}")) && text.contains("connected since"), "{text}");

    let before = home.daemon_status().and_then(|s| s["pid"].as_u64());
    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    // The server sees the new worker connected a moment before the worker writes its status file
    // (what the host commands read): wait for that too.
    home.wait_new_daemon(before).await;
    let s = status_json(&home);
    assert_eq!((s["version"].as_str(), s["previous"]["version"].as_str()), (Some(next.as_str()), Some(SOURCE_VERSION)));
    assert_eq!(s["lastUpgrades"][0]["outcome"], "ok");

    // With the daemon running: the previous binary goes back and the daemon restarts into it.
    let (code, out, err) = host_command(&home, &["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("rolled back {next} -> {SOURCE_VERSION}")) && out.contains("restarts into"), "{out}");
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));

    // Without a daemon: the swap alone, and status says nothing runs.
    agent.kill_all();
    eventually(LIMIT, "status to see no daemon", || {
        let gone = status_json(&home)["daemon"].is_null();
        async move { gone.then_some(()) }
    })
    .await;
    let (code, out, _) = host_command(&home, &["rollback"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("rolled back {SOURCE_VERSION} -> {next}")) && out.contains("no daemon is running"),
        "{out}"
    );
    assert!(same_bytes(&home.bin(), next_build()));
    agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    drop(agent);

    // No previous binary: a clear refusal.
    let (_, cfg) = rig.server.add_agent("host-fresh");
    let fresh = AgentHome::new(&cfg);
    fresh.install(Path::new(agent_bin()));
    let (code, _, err) = host_command(&fresh, &["rollback"]);
    assert_eq!(code, 1);
    assert!(err.contains("no previous binary at") && err.contains("nothing to roll back to"), "{err}");

    // check-config: good, wrong secret, unreachable server, invalid file.
    let (code, out, err) = host_command(&fresh, &["check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("issued a token"), "{out}");
    assert!(!fresh.state().exists(), "check-config creates no state directory");
    let wrong = AgentHome::new(&cfg.replace("client_secret = \"", "client_secret = \"x"));
    wrong.install(Path::new(agent_bin()));
    let (code, _, err) = host_command(&wrong, &["check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("refused this agent's client credentials"), "{err}");
    let port = rig.server.addr.port();
    let gone = AgentHome::new(&cfg.replace(&format!(":{port}/"), ":1/"));
    gone.install(Path::new(agent_bin()));
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
    let (id, home, agent) = rig.agent("host-upgrade", Path::new(agent_bin()), "").await;

    let (code, out, err) = host_command(&home, &["upgrade", "--version", &next]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("upgraded {SOURCE_VERSION} -> {next}: confirmed by the new daemon")), "{out}");
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
    let (code, out, err) = host_command(&home, &["upgrade", "--version", SOURCE_VERSION]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("installed {SOURCE_VERSION} (no daemon is running)")), "{out}");
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));
    assert_eq!(home.journal().unwrap()["state"], "trial");
    let _agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    eventually(LIMIT, "the trial confirmed", || {
        let state = home.journal().map(|j| j["state"].clone());
        async move { (state == Some(json!("done"))).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_during_a_trial_ends_the_trial_and_says_so() {
    let mut rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("host-trial", Path::new(agent_bin()), "health_window = 60\n").await;

    // With the server down, a new version cannot confirm: its trial stays open.
    let _ = rig.server.proc.child.kill();
    let _ = rig.server.proc.child.wait();
    let upgrading = {
        let (bin, config) = (home.bin(), home.config());
        let next = next.clone();
        std::thread::spawn(move || {
            std::process::Command::new(bin)
                .args(["upgrade", "--version", &next, "--config"])
                .arg(config)
                .output()
                .unwrap()
        })
    };
    eventually(LIMIT, "the new version on trial", || {
        let on_trial = home.journal().is_some_and(|j| j["state"] == "trial" && j["starts"].as_u64() >= Some(1));
        async move { on_trial.then_some(()) }
    })
    .await;
    let (code, out, err) = host_command(&home, &["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("rolled back {next} -> {SOURCE_VERSION}")) && out.contains("restarts into"), "{out}");
    assert_eq!(home.journal().unwrap()["state"], "rolled_back");

    rig.server.start_again();
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let out = upgrading.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("upgrade to {next} rolled back: rolled back by the operator (agent rollback)")),
        "{err}"
    );
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));
    assert_eq!(home.journal().unwrap()["state"], "done");
}

#[test]
fn status_and_rollback_answer_from_local_state_without_credentials() {
    let next = next_version();
    // A configuration as a fresh install has it: a state directory, no server, no credentials.
    let home = AgentHome::new("");
    home.install(Path::new(agent_bin()));
    let (code, text, err) = host_command(&home, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!("version:   {SOURCE_VERSION}")) && text.contains("daemon:    not running"),
        "{text}"
    );
    let line = text.lines().find(|l| l.starts_with("credentials: ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("base_url, client_id, client_secret, agent_id not set"), "{line}");
    assert!(line.contains(&home.config().display().to_string()), "names the file: {line}");
    let s = status_json(&home);
    assert_eq!(s["credentials"]["ok"], false);
    assert_eq!(s["credentials"]["missing"], json!(["base_url", "client_id", "client_secret", "agent_id"]));
    assert_eq!(s["version"], SOURCE_VERSION);

    // Rollback too: the previous binary goes back, and the missing credentials are said.
    let previous = home.state().join("previous").join("agent");
    std::fs::create_dir_all(previous.parent().unwrap()).unwrap();
    std::fs::copy(next_build(), &previous).unwrap();
    let (code, out, err) = host_command(&home, &["rollback"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("rolled back {SOURCE_VERSION} -> {next}")), "{out}");
    assert!(out.contains("credentials: base_url, client_id, client_secret, agent_id not set"), "{out}");
    assert!(same_bytes(&home.bin(), next_build()) && same_bytes(&previous, Path::new(agent_bin())));

    // With credentials, the line says so; a broken file is still an error.
    std::fs::write(
        home.config(),
        format!(
            "base_url = \"http://127.0.0.1:1/\"\nclient_id = \"c\"\nclient_secret = \"s\"\nagent_id = \"a\"\n\
             state_dir = \"{}\"\n",
            home.state().display()
        ),
    )
    .unwrap();
    assert_eq!(status_json(&home)["credentials"], json!({"ok": true}));
    std::fs::write(home.config(), "base_url = [\n").unwrap();
    let (code, _, err) = host_command(&home, &["status"]);
    assert_eq!(code, 64, "{err}");
}
