//! Fleet rollouts end to end: a real server, real agents upgrading between two real builds, each
//! agent with its own release server so that the test can count what each one was asked.

use std::path::Path;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::releases::ReleaseServer;
use edge_agent_e2e::rig::LIMIT;
use edge_agent_e2e::{agent_bin, eventually, next_build, next_version, AgentHome, Proc, Server, FAST};

/// One agent of a rollout test, with the release server only it uses.
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) home: AgentHome,
    pub(crate) releases: ReleaseServer,
    pub(crate) proc: Option<Proc>,
}

impl Member {
    /// How many times this agent was asked for `version` (each ask reads its manifest once).
    pub(crate) fn asks(&self, version: &str) -> usize {
        self.asked_at(version).len()
    }
    /// When this agent was asked for `version` (milliseconds since the epoch), each time.
    pub(crate) fn asked_at(&self, version: &str) -> Vec<i64> {
        self.releases.seen().iter().filter(|s| s.path == format!("v{version}.json")).map(|s| s.at_ms).collect()
    }
    pub(crate) fn start(&mut self) {
        self.proc = Some(self.home.start(&[]));
    }
}

/// An agent on the current build; `broken` publishes a next version that fails its self-check.
pub(crate) async fn member(server: &Server, name: &str, broken: bool, online: bool) -> Member {
    let releases = ReleaseServer::start().await;
    releases.publish_file(SOURCE_VERSION, Path::new(agent_bin()));
    if broken {
        releases.publish(&next_version(), b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n");
    } else {
        releases.publish_file(&next_version(), next_build());
    }
    let (id, cfg) = server.add_agent(name);
    let home = AgentHome::new(&format!(
        "{cfg}{FAST}releases_url = \"{}\"\n{}health_window = 10\n",
        releases.url(),
        releases.trust()
    ));
    home.install(Path::new(agent_bin()));
    let mut m = Member { id, home, releases, proc: None };
    if online {
        m.start();
        server.wait_status(&m.id, "connected", SOURCE_VERSION, LIMIT).await;
    }
    m
}

async fn server() -> Server {
    Server::start(&["--heartbeat-interval", "0.3"]).await
}

/// `POST Agent/$upgrade` with `Prefer: respond-async`: (status, body, Content-Location).
async fn start(server: &Server, query: &str, body: Value) -> (u16, Value, Option<String>) {
    let token = server.admin_token().await;
    let resp = server
        .http
        .post(server.url(&format!("fhir/R4/Agent/$upgrade?{query}")))
        .bearer_auth(token)
        .header("prefer", "respond-async")
        .body(if body.is_null() { String::new() } else { body.to_string() })
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let location = resp.headers().get("content-location").map(|v| v.to_str().unwrap().to_string());
    (code, resp.json().await.unwrap_or(Value::Null), location)
}

/// Polls the rollout until `done` holds for its status.
async fn wait(server: &Server, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(60), what, || async {
        let (_, status) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
        done(&status).then_some(status)
    })
    .await
}

fn count(status: &Value, state: &str) -> u64 {
    status["counts"][state].as_u64().unwrap_or(0)
}

fn ended(status: &Value) -> bool {
    !matches!(status["state"].as_str(), Some("active" | "paused"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_build_halts_at_the_canary_and_nobody_else_is_asked() {
    let server = server().await;
    let mut members = Vec::new();
    for n in 0..3 {
        members.push(member(&server, &format!("canary-{n}"), true, true).await);
    }
    let next = next_version();
    let (code, created, location) = start(&server, "name=canary-", json!({"version": next})).await;
    assert_eq!(code, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location.unwrap(), server.url(&format!("fhir/R4/Rollout/{id}")));

    let status = wait(&server, &id, "the rollout to halt", ended).await;
    assert_eq!(status["state"], "halted", "{status}");
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.starts_with("the canary canary-0 failed: Error during upgrading to version"), "{reason}");
    assert_eq!((count(&status, "failed"), count(&status, "skipped")), (1, 2), "{status}");
    assert!(status["failures"][0]["reason"].as_str().unwrap().contains("self-check"), "{status}");
    assert_eq!(members.iter().map(|m| m.asks(&next)).collect::<Vec<_>>(), [1, 0, 0], "only the canary was asked");
    for m in &members {
        assert!(edge_agent_e2e::rig::same_bytes(&m.home.bin(), Path::new(agent_bin())), "every agent kept its binary");
    }
    let (code, http_status) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
    assert_eq!((code, http_status["state"].as_str()), (200, Some("halted")), "an ended rollout polls as 200");
    // The agent's last rollout result shows in $status and in search results.
    let (_, st) = server.get(&format!("fhir/R4/Agent/{}/$status", members[0].id)).await;
    let last = st["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "lastRollout").unwrap().clone();
    assert_eq!(last["part"][2], json!({"name": "result", "valueCode": "failed"}));
    let (_, found) = server.get("fhir/R4/Agent?name=canary-1").await;
    let ext = &found["entry"][0]["resource"]["extension"][0];
    assert_eq!(
        (ext["url"].as_str(), ext["extension"][2]["valueCode"].as_str()),
        (Some("urn:edge-agent:last-rollout"), Some("skipped"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_failure_threshold_halts_mid_rollout_and_skips_the_rest() {
    let server = server().await;
    let mut members = Vec::new();
    for (n, broken) in [false, false, true, false, false].into_iter().enumerate() {
        members.push(member(&server, &format!("wave-{n}"), broken, true).await);
    }
    let next = next_version();
    let (code, created, _) = start(&server, &format!("name=wave-&version={next}"), Value::Null).await;
    assert_eq!(code, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let status =
        wait(&server, id, "the rollout to halt and settle", |s| ended(s) && count(s, "in-progress") == 0).await;
    assert_eq!(status["state"], "halted", "{status}");
    assert!(status["reason"].as_str().unwrap().ends_with("failed (threshold 10%)"), "{status}");
    assert_eq!((count(&status, "succeeded"), count(&status, "failed"), count(&status, "skipped")), (2, 1, 2));
    let asked: Vec<usize> = members.iter().map(|m| m.asks(&next)).collect();
    assert_eq!(asked, [1, 1, 1, 0, 0], "the canary, then a wave of two; the rest never asked");
    server.wait_status(&members[1].id, "connected", &next, LIMIT).await;
    let events: Vec<&str> = status["events"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert!(events.contains(&"wave 1 started (2 agents)"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_members_are_upgraded_when_they_connect_or_expire_at_the_deadline() {
    let server = server().await;
    let online = member(&server, "late-0", false, true).await;
    let mut comes_back = member(&server, "late-1", false, false).await;
    let never = member(&server, "late-2", false, false).await;
    let next = next_version();
    let (code, created, _) = start(&server, "name=late-", json!({"version": next, "offlineDeadline": 20})).await;
    assert_eq!(code, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    comes_back.start();
    server.wait_status(&comes_back.id, "connected", &next, LIMIT).await;
    let status = wait(&server, id, "the rollout to complete", ended).await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!((count(&status, "succeeded"), count(&status, "expired")), (2, 1), "{status}");
    assert_eq!((online.asks(&next), comes_back.asks(&next), never.asks(&next)), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_survives_a_server_kill_and_asks_nobody_twice() {
    let mut server = server().await;
    let mut members = Vec::new();
    for n in 0..4 {
        members.push(member(&server, &format!("kill-{n}"), false, true).await);
    }
    let next = next_version();
    let strategy = json!({"version": next, "growth": 1, "maxInFlight": 1});
    let (code, created, _) = start(&server, "name=kill-", strategy).await;
    assert_eq!(code, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    wait(&server, &id, "the second member in flight", |s| count(s, "succeeded") >= 1 && count(s, "in-progress") == 1)
        .await;
    server.restart();
    let status = wait(&server, &id, "the rollout to complete after the restart", ended).await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(count(&status, "succeeded"), 4, "every member in exactly one final state: {status}");
    assert_eq!(members.iter().map(|m| m.asks(&next)).collect::<Vec<_>>(), [1, 1, 1, 1], "nobody asked twice");
    for m in &members {
        server.wait_status(&m.id, "connected", &next, LIMIT).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_and_cancel() {
    let server = server().await;
    let mut members = Vec::new();
    for n in 0..4 {
        members.push(member(&server, &format!("steer-{n}"), false, true).await);
    }
    let next = next_version();
    let (_, created, _) = start(&server, "name=steer-", json!({"version": next, "growth": 1, "bake": 2})).await;
    let id = created["id"].as_str().unwrap().to_string();
    wait(&server, &id, "the canary in flight", |s| count(s, "in-progress") == 1).await;
    // An action takes no parameter: one given is refused, and the rollout goes on as it was.
    for (path, body, said) in [
        (
            format!("fhir/R4/Rollout/{id}/$cancel"),
            json!({"reason": "x"}),
            "$cancel takes no parameter: send it with an empty body",
        ),
        (format!("fhir/R4/Rollout/{id}/$pause?force=true"), Value::Null, "Unknown parameter: force (this takes none)"),
    ] {
        let (code, refused) = server.post(&path, body).await;
        assert_eq!((code, refused["issue"][0]["details"]["text"].as_str()), (400, Some(said)), "{path}");
    }
    let (_, still) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
    assert_eq!(still["state"], "active", "{still}");
    let (code, paused) = server.post(&format!("fhir/R4/Rollout/{id}/$pause"), Value::Null).await;
    assert_eq!((code, paused["state"].as_str()), (200, Some("paused")), "{paused}");
    wait(&server, &id, "the canary in flight to finish while paused", |s| count(s, "in-progress") == 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, still) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
    assert_eq!(count(&still, "pending"), 3, "nobody new is asked while paused: {still}");

    let (code, resumed) = server.post(&format!("fhir/R4/Rollout/{id}/$resume"), Value::Null).await;
    assert_eq!((code, resumed["state"].as_str()), (200, Some("active")));
    wait(&server, &id, "the next member in flight", |s| count(s, "in-progress") == 1 || count(s, "succeeded") >= 2)
        .await;
    let (code, cancelled) = server.post(&format!("fhir/R4/Rollout/{id}/$cancel"), Value::Null).await;
    assert_eq!((code, cancelled["state"].as_str()), (200, Some("cancelled")));
    let status = wait(&server, &id, "in-flight members to finish", |s| count(s, "in-progress") == 0).await;
    assert_eq!(count(&status, "succeeded") + count(&status, "skipped"), 4, "{status}");
    assert_eq!(count(&status, "succeeded"), 2, "the member in flight finished: {status}");
    let asked: usize = members.iter().map(|m| m.asks(&next)).sum();
    assert_eq!(asked, 2, "no new member is asked after the cancel");

    let (code, refused) = server.post(&format!("fhir/R4/Rollout/{id}/$resume"), Value::Null).await;
    assert_eq!(code, 409);
    assert_eq!(
        refused["issue"][0]["details"]["text"],
        format!("rollout {id} is cancelled: only a paused rollout can be resumed")
    );
    // Each step is in the audit trail, written with the rollout's new state; the calls refused
    // (the bad parameters above, the resume after the cancel) too, with what their callers were told.
    let (events, _) = crate::audit::trail(&server, &server.admin_token().await, "").await;
    let steps: Vec<(String, String, String)> = events
        .iter()
        .filter(|e| {
            e["subtype"][0]["code"].as_str().is_some_and(|c| c.starts_with("rollout-") && c != "rollout-create")
        })
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (e["subtype"][0]["code"].as_str().unwrap().to_string(), text("outcome"), text("outcomeDesc"))
        })
        .collect();
    let step = |code: &str, outcome: &str, desc: &str| (code.to_string(), outcome.to_string(), desc.to_string());
    assert_eq!(
        steps,
        [
            step("rollout-cancel", "4", "400 Bad Request: $cancel takes no parameter: send it with an empty body"),
            step("rollout-pause", "4", "400 Bad Request: Unknown parameter: force (this takes none)"),
            step("rollout-pause", "0", "Rollout paused"),
            step("rollout-resume", "0", "Rollout resumed"),
            step("rollout-cancel", "0", "Rollout cancelled"),
            step(
                "rollout-resume",
                "4",
                &format!("409 Conflict: rollout {id} is cancelled: only a paused rollout can be resumed")
            ),
        ],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn overlaps_bad_strategies_and_empty_selections_are_refused() {
    let server = server().await;
    let _a = member(&server, "ov-0", false, false).await;
    let next = next_version();
    let text = |v: &Value| v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
    let (code, first, _) = start(&server, "name=ov-", json!({"version": next})).await;
    assert_eq!(code, 202);
    let first_id = first["id"].as_str().unwrap();
    let (code, overlap, _) = start(&server, "name=ov-0", json!({"version": next})).await;
    assert_eq!(code, 409);
    let why = text(&overlap);
    assert!(why.contains(&format!("would overlap rollout {first_id}")) && why.contains("on agent ov-0"), "{why}");

    let cases = [
        ("name=nobody", json!({"version": next}), "no agent(s) for given query: a rollout needs at least one member"),
        ("nmae=ov-", json!({"version": next}), "Unknown search parameter: nmae"),
        (
            "name=ov-&_count=5",
            json!({"version": next}),
            "_count does not apply: a rollout takes every agent the search finds",
        ),
        ("name=ov-", json!({"version": "one"}), "'one' is not a valid version"),
        (
            "name=ov-",
            json!({}),
            "version=latest needs this server to host releases (--releases); otherwise name the version",
        ),
        (
            "name=ov-",
            json!({"version": next, "canary": 0}),
            "Invalid value '0' for rollout parameter 'canary': expected 1 to 1000000",
        ),
        (
            "name=ov-",
            json!({"version": next, "window": "late"}),
            "Invalid value 'late' for rollout parameter 'window': expected a daily range such as 02:00-04:00",
        ),
        (
            "name=ov-",
            json!({"version": next, "maxInflight": 50}),
            "Unknown rollout parameter: maxInflight (expected one of: version, force, canary, growth, maxInFlight, \
             bake, maxFailures, maxFailurePercent, minFinished, timeout, offlineDeadline, window, timeZone)",
        ),
    ];
    for (query, body, want) in cases {
        let (code, v, _) = start(&server, query, body).await;
        assert_eq!((code, text(&v)), (400, want.to_string()), "{query}");
    }
    let token = server.admin_token().await;
    let resp = server
        .http
        .get(server.url(&format!("fhir/R4/Agent/$upgrade?name=ov-&version={next}")))
        .bearer_auth(token)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400, "rollouts start with POST");
    let (code, list) = server.get("fhir/R4/Rollout").await;
    assert_eq!((code, list["rollouts"].as_array().unwrap().len()), (200, 1), "nothing made by refused requests");
    // The one made is in the audit trail with its rollout (written in the transaction that stored
    // it); the two refused once they were known to be creations, with what their callers were
    // told and no rollout named.
    let (events, _) = crate::audit::trail(&server, &server.admin_token().await, "").await;
    let creations: Vec<(String, String, Value)> = events
        .iter()
        .filter(|e| e["subtype"][0]["code"] == "rollout-create")
        .map(|e| {
            (e["outcome"].as_str().unwrap().into(), e["outcomeDesc"].as_str().unwrap().into(), e["entity"].clone())
        })
        .collect();
    assert_eq!(creations.len(), 3, "{creations:?}");
    let made = json!([{"what": {"reference": format!("Rollout/{first_id}"), "display": format!("to {next}")}}]);
    assert_eq!(creations[0], ("0".into(), "Rollout started: 1 agent chosen".into(), made));
    assert_eq!((creations[1].0.as_str(), &creations[1].2), ("4", &Value::Null));
    assert!(creations[1].1.starts_with("409 Conflict: ") && creations[1].1.contains(first_id), "{creations:?}");
    let empty = "400 Bad Request: no agent(s) for given query: a rollout needs at least one member";
    assert_eq!(creations[2], ("4".into(), empty.into(), Value::Null));
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_are_listed_a_page_at_a_time() {
    let server = server().await;
    let next = next_version();
    let mut made = Vec::new();
    for i in 0..5 {
        // Agents that never connect: each rollout stays open, and none overlaps another.
        server.add_agent(&format!("page-{i}"));
        let (code, created, _) = start(&server, &format!("name=page-{i}"), json!({"version": next})).await;
        assert_eq!(code, 202, "{created}");
        made.push(created["id"].as_str().unwrap().to_string());
    }
    made.reverse();
    let ids = |v: &Value| {
        v["rollouts"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let next_link = |v: &Value| {
        v["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string())
    };
    let (code, first) = server.get("fhir/R4/Rollout?_count=2").await;
    assert_eq!((code, ids(&first), first["total"].clone()), (200, made[..2].to_vec(), json!(5)), "newest first");
    assert_eq!(first["rollouts"][0]["counts"]["pending"], 1, "{first}");
    let url = next_link(&first).expect("a next page");
    assert!(url.ends_with("fhir/R4/Rollout?_count=2&_offset=2"), "{url}");
    let (_, last) = server.get("fhir/R4/Rollout?_count=2&_offset=4").await;
    assert_eq!((ids(&last), next_link(&last)), (made[4..].to_vec(), None));
    let (_, all) = server.get("fhir/R4/Rollout").await;
    assert_eq!(ids(&all), made, "a default page of {} holds them all", 100);
    let text = |v: &Value| v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
    for (query, want) in [
        ("state=active", "Unknown parameter: state (Rollout takes _count and _offset)"),
        ("_count=1001", "'_count' of 1001 is greater than max of 1000"),
        ("_offset=1000001", "'_offset' of 1000001 is greater than max of 1000000"),
        ("_count=two", "Invalid value 'two' provided for integer parameter '_count'"),
    ] {
        let (code, v) = server.get(&format!("fhir/R4/Rollout?{query}")).await;
        assert_eq!((code, text(&v)), (400, want.to_string()), "{query}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_command_starts_watches_and_lists() {
    let server = server().await;
    let _m = member(&server, "cli-0", false, true).await;
    let (admin_id, secret) = server.admin();
    let cli = |args: &[&str]| {
        std::process::Command::new(edge_agent_e2e::server_bin())
            .arg("rollout")
            .args(args)
            .env("AGENT_SERVER_URL", server.url("/"))
            .env("AGENT_SERVER_CLIENT_ID", &admin_id)
            .env("AGENT_SERVER_CLIENT_SECRET", &secret)
            .output()
            .unwrap()
    };
    let next = next_version();
    let out = cli(&["start", "--select", "name=cli-", "--version", &next, "--max-in-flight", "5", "--watch"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(&format!("to {next}: completed")) && stdout.contains("succeeded 1"), "{stdout}");
    let out = cli(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("completed") && listed.contains("1/1 done"), "{listed}");
    let out = cli(&["start", "--select", "name=cli-", "--canary", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version=latest needs this server to host releases"), "{err}");
    let out = std::process::Command::new(edge_agent_e2e::server_bin())
        .args(["rollout", "list"])
        .env_remove("AGENT_SERVER_CLIENT_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "no credentials: a usage error");
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_is_resolved_once_when_this_server_hosts_releases() {
    let releases = tempfile::tempdir().unwrap();
    let next = next_version();
    std::fs::write(releases.path().join("latest.json"), json!({"version": next}).to_string()).unwrap();
    let dir = releases.path().to_str().unwrap().to_string();
    let server = Server::start(&["--releases", &dir]).await;
    let _offline = member(&server, "latest-0", false, false).await;
    let (code, created, _) = start(&server, "name=latest-", json!({"offlineDeadline": 3600})).await;
    assert_eq!(code, 202, "{created}");
    assert_eq!(created["version"], next.as_str(), "latest resolved at creation");
    // Publishing a newer latest later does not change the rollout's target.
    std::fs::write(releases.path().join("latest.json"), json!({"version": "99.0.0"}).to_string()).unwrap();
    let (_, status) = server.get(&format!("fhir/R4/Rollout/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(status["version"], next.as_str());
}
