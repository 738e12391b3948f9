//! Signed releases by default: an agent installs only what a key in its `trusted_keys` signed.
//! Unsigned and tampered releases are refused before anything runs them (a marker file the
//! published script would create proves it), an agent configured the old way (no keys, no
//! `allow_unsigned`) refuses every upgrade with what to add, and `allow_unsigned = true` works
//! and is reported as a warning at start-up, by `agent status` and in `agent:stats`.

use std::path::{Path, PathBuf};

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::releases::{platform, sha256_hex};
use edge_agent_e2e::rig::{assert_unharmed, rig, Rig, LIMIT};
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, AgentHome, Proc, FAST};

/// A shell script that creates `marker` when anything runs it, and would pass the self-check as
/// `version`: only a check before it runs can stop it.
fn marking_script(marker: &Path, version: &str) -> Vec<u8> {
    format!("#!/bin/sh\ntouch '{}'\necho '{{\"version\":\"{version}\"}}'\n", marker.display()).into_bytes()
}

/// Runs the agent binary with `args` and `--config`: (exit code, stdout).
fn agent_command(home: &AgentHome, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(agent_bin()).args(args).arg("--config").arg(home.config()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The stats the agent sends the server, as the server relays them (`$stats`).
async fn stats(rig: &Rig, id: &str) -> Value {
    let (code, stats) = rig.server.get(&format!("fhir/R4/Agent/{id}/$stats")).await;
    assert_eq!(code, 200, "{stats}");
    serde_json::from_str(stats["parameter"][0]["valueString"].as_str().unwrap()).unwrap()
}

fn marker() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("the-script-ran");
    (dir, marker)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_release_is_refused_and_its_script_never_runs() {
    let rig = rig().await;
    let (_m, marker) = marker();
    let (id, home, _agent) = rig.agent("unsigned", Path::new(agent_bin()), "").await;
    rig.releases.publish_unsigned("8.0.0", &marking_script(&marker, "8.0.0"));

    let (code, text) = rig.server.upgrade(&id, "version=8.0.0").await;
    let p = platform();
    let expected = format!(
        "Error during upgrading to version 'v8.0.0': signature check failed for agent-8.0.0-{p}: \
         no .minisig signature published, and this agent requires one"
    );
    assert_eq!((code, text.as_str()), (400, expected.as_str()));
    assert!(!marker.exists(), "the unsigned script never ran");
    assert!(rig.releases.asset_gets().is_empty(), "refused from its manifest: nothing downloaded");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
    assert_eq!(stats(&rig, &id).await["warnings"], json!([]), "a signed configuration warns of nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_signed_by_an_untrusted_key_is_refused_before_its_asset_is_downloaded() {
    let rig = rig().await;
    let (_m, marker) = marker();
    let (id, home, _agent) = rig.agent("untrusted-key", Path::new(agent_bin()), "").await;
    let script = marking_script(&marker, "8.0.1");
    rig.releases.publish("8.0.1", &script);
    // A well-formed signature of these very bytes, naming this file and version, by a key the
    // agent does not trust.
    let (other, name) =
        (minisign::KeyPair::generate_unencrypted_keypair().unwrap(), format!("agent-8.0.1-{}", platform()));
    let comment = format!("timestamp:0\tfile:{name}\tversion:8.0.1");
    let sig = minisign::sign(Some(&other.pk), &other.sk, &script[..], Some(&comment), None).unwrap();
    let sig_path = rig.releases.dir.path().join(format!("download/v8.0.1/{name}.minisig"));
    std::fs::write(sig_path, sig.into_string()).unwrap();

    let (code, text) = rig.server.upgrade(&id, "version=8.0.1").await;
    let expected = format!(
        "Error during upgrading to version 'v8.0.1': signature check failed for {name}: \
         signed by a key that is not in trusted_keys"
    );
    assert_eq!((code, text.as_str()), (400, expected.as_str()));
    assert!(!marker.exists(), "the script never ran");
    assert!(rig.releases.asset_gets().is_empty(), "refused from its signature: nothing downloaded");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_manifest_listing_a_script_with_its_correct_sha256_is_never_executed() {
    let rig = rig().await;
    let (_m, marker) = marker();
    let next = next_version();
    let (id, home, _agent) = rig.agent("tampered", Path::new(agent_bin()), "").await;
    // The signed next build, replaced by a script; the manifest lists the script's own sha256
    // and size, as an attacker who controls the release host would.
    let mut manifest = rig.releases.publish_file(&next, next_build());
    let script = marking_script(&marker, &next);
    let asset = rig.releases.dir.path().join(manifest["assets"][0]["browser_download_url"].as_str().unwrap());
    std::fs::write(&asset, &script).unwrap();
    std::fs::write(asset.with_file_name(format!("agent-{next}-{}.sha256", platform())), sha256_hex(&script)).unwrap();
    manifest["assets"][0]["sha256"] = json!(sha256_hex(&script));
    manifest["assets"][0]["size"] = json!(script.len());
    manifest["assets"][0].as_object_mut().unwrap().retain(|k, _| !["compressed", "patches"].contains(&k.as_str()));
    rig.releases.write_manifest(&next, &manifest);

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}")).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.ends_with("the signature does not match the downloaded bytes"), "{text}");
    assert!(!marker.exists(), "the tampered script never ran");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_configured_without_keys_refuses_upgrades_and_says_what_to_add() {
    let rig = rig().await;
    let (_m, marker) = marker();
    rig.releases.publish_unsigned("8.1.0", &marking_script(&marker, "8.1.0"));
    // As `agent add` wrote configurations before signatures became the default: no trusted_keys.
    let (id, cfg) = rig.server.add_agent("old-style");
    let home = AgentHome::new(&format!("{cfg}{FAST}releases_url = \"{}\"\n", rig.releases.url()));
    home.install(Path::new(agent_bin()));
    let _agent = home.start(&[]);
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    for version in ["8.1.0", &next_version()] {
        let (code, text) = rig.server.upgrade(&id, &format!("version={version}")).await;
        let expected = format!(
            "Error during upgrading to version 'v{version}': no trusted_keys configured, and this agent installs \
             only signed releases: add trusted_keys = [\"<release public key>\"] to the agent's configuration \
             (the key `agent release keygen` made, which `agent-server agent add` writes when the server knows \
             it), or allow_unsigned = true to accept unsigned releases"
        );
        assert_eq!((code, text.as_str()), (400, expected.as_str()));
    }
    assert!(!marker.exists(), "nothing ran");
    assert!(rig.releases.asset_gets().is_empty(), "nothing was even downloaded");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;

    // The agent says so where an operator looks: `agent status`, and the stats the server relays.
    let (code, out) = agent_command(&home, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("releases:  not configured\nwarning:   no trusted_keys configured: every upgrade is refused; add trusted_keys = ["), "{out}");
    let stats = stats(&rig, &id).await;
    assert_eq!(stats["releases"], "not configured");
    assert!(stats["warnings"][0].as_str().unwrap().starts_with("no trusted_keys configured"), "{stats}");
}

/// An agent with `allow_unsigned = true`, started, connected.
async fn unsigned_agent(rig: &Rig) -> (String, AgentHome, Proc) {
    rig.agent("allow-unsigned", Path::new(agent_bin()), "allow_unsigned = true\n").await
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_unsigned_installs_an_unsigned_release_and_is_reported_as_a_warning_everywhere() {
    let rig = rig().await;
    let next = next_version();
    rig.releases.publish_unsigned(&next, &std::fs::read(next_build()).unwrap());
    let (id, home, agent) = unsigned_agent(&rig).await;
    let warning = "allow_unsigned = true: releases are installed without a signature check (sha256 only)";

    // Start-up: a WARN line.
    eventually(LIMIT, "the start-up warning", || {
        let log = agent.log();
        async move { log.lines().any(|l| l.contains("WARN") && l.contains(warning)).then_some(()) }
    })
    .await;
    // `agent status`, as text and as JSON.
    let (_, text) = agent_command(&home, &["status"]);
    assert!(text.contains(&format!("releases:  unsigned allowed\nwarning:   {warning}")), "{text}");
    let (_, out) = agent_command(&home, &["status", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["releases"], "unsigned allowed");
    assert!(status["warnings"][0].as_str().unwrap().starts_with(warning), "{status}");
    // What the server sees: the agent's stats, relayed by `$stats`.
    let stats = stats(&rig, &id).await;
    assert_eq!(stats["releases"], "unsigned allowed");
    assert!(stats["warnings"][0].as_str().unwrap().starts_with(warning), "{stats}");

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert!(agent.log().contains("installing without a signature check: allow_unsigned = true"));
}
