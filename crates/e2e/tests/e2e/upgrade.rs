//! Upgrades end to end: a real server, a real release server, and two genuinely different builds
//! of the agent (the current one, and [`next_build`], built as [`next_version`]).

use std::path::Path;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::releases::{platform, sha256_hex};
use edge_agent_e2e::rig::{assert_unharmed, rig, same_bytes, LIMIT};
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, Server};

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_to_an_explicit_version_then_same_version_then_forced_reinstall() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("up-1", Path::new(agent_bin()), "").await;

    let (code, text) = rig.server.upgrade(&id, &format!("version={next}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    assert!(same_bytes(&home.bin(), next_build()), "the installed binary is the served artifact");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(home.journal().unwrap()["state"], "done");
    assert_eq!(home.journal().unwrap()["previousVersion"], SOURCE_VERSION);
    let manifest_get = rig.releases.seen().into_iter().find(|s| s.path == format!("v{next}.json")).unwrap();
    assert_eq!(manifest_get.query.as_deref(), Some(format!("a=edge-agent&c={SOURCE_VERSION}").as_str()));

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
    let (id, home, _agent) = rig.agent("down-1", Path::new(agent_bin()), "").await;

    let (code, text) = rig.server.upgrade(&id, "timeout=30000").await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "latest is the next version");
    rig.server.wait_status(&id, "connected", &next, LIMIT).await;

    rig.releases.set_latest(SOURCE_VERSION);
    let downloads = rig.releases.asset_gets().len();
    let (code, text) = rig.server.upgrade(&id, "").await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "latest older than running: a no-op");
    assert_eq!(rig.releases.asset_gets().len(), downloads);
    assert!(same_bytes(&home.bin(), next_build()));

    let (code, text) = rig.server.upgrade(&id, &format!("version={SOURCE_VERSION}&timeout=30000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"), "an explicit downgrade");
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));

    let (id2, home2, _agent2) = rig.agent("down-2", next_build(), "allow_downgrade = false\n").await;
    let (code, text) = rig.server.upgrade(&id2, &format!("version={SOURCE_VERSION}")).await;
    assert_eq!(code, 400);
    assert_eq!(
        text,
        format!("Error during upgrading to version 'v{SOURCE_VERSION}': downgrade from {next} to {SOURCE_VERSION} is not allowed by this agent's configuration (allow_downgrade = false)")
    );
    assert_unharmed(&rig, &id2, &home2, next_build()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn release_faults_are_reported_and_leave_the_binary_untouched() {
    let rig = rig().await;
    let (id, home, _agent) = rig.agent("faults", Path::new(agent_bin()), "").await;
    let small = b"#!/bin/sh\necho not really an agent\n".repeat(30);
    let p = platform();

    rig.releases.write_raw("v5.0.0.json", "{\"tag_name\": \"v5.0.0\", \"assets\": [oops");
    let mut no_asset = rig.releases.publish("5.0.1", &small);
    no_asset["assets"][0]["name"] = json!("agent-5.0.1-plan9-mips");
    no_asset["assets"].as_array_mut().unwrap().truncate(1);
    rig.releases.write_manifest("5.0.1", &no_asset);
    let mut unsummed = rig.releases.publish("5.0.2", &small);
    unsummed["assets"][0].as_object_mut().unwrap().remove("sha256");
    unsummed["assets"].as_array_mut().unwrap().retain(|a| !a["name"].as_str().unwrap().ends_with(".sha256"));
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
        assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
    }

    rig.releases.faults().truncate_always_at = Some(200);
    let (code, text) = rig.server.upgrade(&id, "version=5.0.5&timeout=50000").await;
    assert_eq!(code, 400);
    assert!(text.contains("body ended after 200 of") || text.contains("gave up after 6 attempts"), "{text}");
    rig.releases.faults().truncate_always_at = None;
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;

    rig.releases.faults().status.insert(format!("download/v5.0.5/agent-5.0.5-{p}"), 404);
    let (code, text) = rig.server.upgrade(&id, "version=5.0.5").await;
    assert_eq!((code, text.contains("HTTP 404")), (400, true), "{text}");
    assert_unharmed(&rig, &id, &home, Path::new(agent_bin())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_downloads_are_retried_and_resumed_with_range() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("resume", Path::new(agent_bin()), "").await;
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
    let (code, text) = rig.server.upgrade(&id, &format!("version={SOURCE_VERSION}&timeout=50000")).await;
    assert_eq!((code, text.as_str()), (200, "All OK"));
    assert!(same_bytes(&home.bin(), Path::new(agent_bin())));
    rig.server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
}

pub async fn last_updated(server: &Server, id: &str) -> String {
    let (_, v) = server.get(&format!("fhir/R4/Agent/{id}/$status")).await;
    v["parameter"][2]["valueInstant"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_download_keeps_heartbeats_flowing_and_a_second_request_is_told_to_wait() {
    let rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("slow", Path::new(agent_bin()), "").await;
    rig.releases.faults().drip = Some((512 * 1024, Duration::from_millis(60)));
    let server_url = rig.server.url(&format!("fhir/R4/Agent/{id}/$upgrade?version={next}&timeout=56000"));
    let token = rig.server.admin_token().await;
    let http = rig.server.http.clone();
    let first =
        tokio::spawn(
            async move { http.get(server_url).bearer_auth(token).send().await.unwrap().text().await.unwrap() },
        );
    home.wait_staged(&next, 1).await;

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
async fn the_result_is_reported_after_the_server_restarts_mid_upgrade() {
    let mut rig = rig().await;
    let next = next_version();
    let (id, home, _agent) = rig.agent("restart", Path::new(agent_bin()), "").await;
    rig.releases.faults().drip = Some((1024 * 1024, Duration::from_millis(80)));
    let url = rig.server.url(&format!("fhir/R4/Agent/{id}/$upgrade?version={next}"));
    let token = rig.server.admin_token().await;
    let http = rig.server.http.clone();
    let call = tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.map(|r| r.status()) });
    home.wait_staged(&next, 1).await;
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
    let (a, _home_a, _agent_a) = rig.agent("bulk-a", Path::new(agent_bin()), "").await;
    let (b, _home_b, _agent_b) = rig.agent("bulk-b", Path::new(agent_bin()), "").await;
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
