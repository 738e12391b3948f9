//! The agent connects, stays connected, reconnects, and survives bad input both ways.

use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use edge_agent_e2e::fake::FakeServer;
use edge_agent_e2e::{agent_bin, eventually, signal, AgentHome, Server, FAST};

const LIMIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn status_follows_a_real_agent_from_connected_to_disconnected() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("lab-1");
    assert_eq!(server.status(&id).await, ("unknown".into(), "unknown".into()));
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let mut agent = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)).await, Some(0), "SIGTERM exits 0:\n{}", agent.log());
    server.wait_status(&id, "disconnected", SOURCE_VERSION, LIMIT).await;
    let secret = cfg.lines().find(|l| l.starts_with("client_secret")).unwrap().split('"').nth(1).unwrap().to_string();
    assert!(!agent.log().contains(&secret), "the secret never reaches a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reconnects_by_itself_after_the_server_restarts() {
    let mut server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    let (id, cfg) = server.add_agent("lab-2");
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let agent = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    let before = home.daemon_status().unwrap()["since"].clone();
    server.restart();
    // Right after the restart the database says disconnected; the agent must come back alone.
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    // The server counts the agent connected a moment before the agent records its handshake.
    eventually(LIMIT, "the agent's second connection", || {
        let s = home.daemon_status();
        let before = before.clone();
        async move { s.filter(|s| s["connected"] == true && s["since"] != before).map(|_| ()) }
    })
    .await;
    let log = agent.log();
    assert!(log.contains("connection lost"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_stops_answering_heartbeats_is_dropped() {
    let mut fake = FakeServer::start().await;
    let home = AgentHome::new(&format!(
        "{}heartbeat_interval = 0.2\nreconnect_min_delay = 0.05\nreconnect_max_delay = 0.2\n",
        fake.config()
    ));
    let agent = home.run();
    let mut first = fake.next_conn().await;
    // The fake never answers: after two unanswered heartbeats the agent opens a new socket.
    let second = fake.next_conn().await;
    let mut sent = 0;
    while let Ok(text) = first.from_agent.try_recv() {
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["type"], "agent:heartbeat:request");
        sent += 1;
    }
    assert!(sent >= 2, "the agent sent {sent} heartbeats before giving up");
    assert!(agent.log().contains("no heartbeat from the server"), "{}", agent.log());
    drop(second);
    fake.handle.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_keeps_working_across_token_expiries() {
    let server = Server::start(&["--token-ttl", "1", "--heartbeat-interval", "0.2"]).await;
    let (id, cfg) = server.add_agent("lab-3");
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let agent = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await; // the token it connected with is expired now
                                                               // Freeze the agent until the server drops it as silent, then let it notice and reconnect.
        let worker = agent.worker_pid().await;
        signal(worker, "STOP");
        server.wait_status(&id, "disconnected", SOURCE_VERSION, LIMIT).await;
        signal(worker, "CONT");
        server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    }
    assert!(
        !agent.log().contains("Invalid access token"),
        "a fresh token is fetched for every socket:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_and_wrong_agent_id_are_reported_and_retried() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("lab-4");
    let (other_id, _) = server.add_agent("lab-5");

    let wrong_secret = cfg
        .lines()
        .map(|l| if l.starts_with("client_secret") { "client_secret = \"not-the-secret\"" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let home = AgentHome::new(&format!("{wrong_secret}\n{FAST}"));
    let mut agent = home.run();
    eventually(LIMIT, "two refused attempts", || {
        let log = agent.log();
        async move { (log.matches("refused this agent's client credentials").count() >= 2).then_some(()) }
    })
    .await;
    assert!(agent.child.try_wait().unwrap().is_none(), "still running, still retrying");
    assert!(!agent.log().contains("not-the-secret"));

    let wrong_agent = cfg.replace(&id, &other_id);
    let home = AgentHome::new(&format!("{wrong_agent}{FAST}"));
    let agent = home.run();
    eventually(LIMIT, "handshake refused", || {
        let log = agent.log();
        async move {
            log.contains("the server refused the handshake: This token may not connect as this agent").then_some(())
        }
    })
    .await;
    assert_eq!(server.status(&other_id).await.0, "unknown", "credentials of one agent never connect as another");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_to_the_agent_get_errors_and_the_connection_stays() {
    let mut fake = FakeServer::start().await;
    let home = AgentHome::new(&format!("{}max_message_bytes = 4096\n", fake.config()));
    let _agent = home.run();
    let mut conn = fake.next_conn().await;
    let oversized = json!({"type": "agent:logs:request", "callback": "big", "pad": "x".repeat(5000)}).to_string();
    let cases = [
        ("{not json", None, "Invalid JSON"),
        (r#"{"type":"agent:nope","callback":"cb-1"}"#, Some("cb-1"), "Unknown message type: agent:nope"),
        (r#"{"callback":"cb-2"}"#, Some("cb-2"), "missing 'type'"),
        (
            r#"{"type":"agent:transmit:request","callback":"cb-3","remote":"r","contentType":"x","body":"b"}"#,
            Some("cb-3"),
            "no channels",
        ),
        (r#"{"type":"agent:transmit:request","callback":"cb-4"}"#, Some("cb-4"), "missing field"),
        (&oversized, Some("big"), "Message too large"),
    ];
    for (frame, callback, text) in cases {
        conn.to_agent.send(frame.to_string()).await.unwrap();
        let reply = conn.next_non_heartbeat().await;
        assert_eq!(reply["type"], "agent:error", "{frame} → {reply}");
        assert!(reply["body"].as_str().unwrap().contains(text), "{frame} → {reply}");
        assert_eq!(reply["callback"].as_str(), callback, "{frame} → {reply}");
    }
    // Still the same connection, still answering.
    conn.to_agent.send(r#"{"type":"agent:heartbeat:request","callback":"hb"}"#.into()).await.unwrap();
    let hb = loop {
        let v: Value = serde_json::from_str(&conn.from_agent.recv().await.unwrap()).unwrap();
        if v["type"] == "agent:heartbeat:response" {
            break v;
        }
    };
    assert_eq!(hb, json!({"type": "agent:heartbeat:response", "version": SOURCE_VERSION, "callback": "hb"}));
    conn.to_agent.send(r#"{"type":"agent:stats:request","callback":"st"}"#.into()).await.unwrap();
    let stats = conn.next_non_heartbeat().await;
    assert_eq!(stats["statusCode"], 200);
    assert_eq!(stats["stats"]["version"], SOURCE_VERSION);
    assert_eq!(stats["stats"]["connection"], "connected");
    conn.to_agent.send(r#"{"type":"agent:logs:request","limit":5,"callback":"lg"}"#.into()).await.unwrap();
    let logs = conn.next_non_heartbeat().await;
    assert_eq!(logs["callback"], "lg");
    let records = logs["logs"].as_array().unwrap();
    assert!(!records.is_empty() && records.len() <= 5, "{logs}");
    assert!(records.iter().all(|r| r["level"].is_string() && r["msg"].is_string() && r["timestamp"].is_string()));
    fake.handle.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn reloadconfig_applies_a_good_file_and_keeps_the_running_one_on_a_bad_one() {
    let mut fake = FakeServer::start().await;
    let home = AgentHome::new(&fake.config());
    let _agent = home.run();
    let mut conn = fake.next_conn().await;
    let good = std::fs::read_to_string(home.config()).unwrap();

    std::fs::write(home.config(), format!("{good}heartbeat_interval = 5\n")).unwrap();
    conn.to_agent.send(r#"{"type":"agent:reloadconfig:request","callback":"r1"}"#.into()).await.unwrap();
    assert_eq!(
        conn.next_non_heartbeat().await,
        json!({"type": "agent:reloadconfig:response", "statusCode": 200, "callback": "r1"})
    );

    std::fs::write(home.config(), "base_url = 12\n").unwrap();
    conn.to_agent.send(r#"{"type":"agent:reloadconfig:request","callback":"r2"}"#.into()).await.unwrap();
    let reply = conn.next_non_heartbeat().await;
    assert_eq!(reply["type"], "agent:error");
    assert_eq!(reply["callback"], "r2");
    assert!(reply["body"].as_str().unwrap().starts_with("Failed to reload config"), "{reply}");
    conn.to_agent.send(r#"{"type":"agent:stats:request","callback":"s"}"#.into()).await.unwrap();
    assert_eq!(conn.next_non_heartbeat().await["statusCode"], 200, "still serving with the old config");
    fake.handle.join();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_to_the_server_get_errors_and_the_connection_stays() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("lab-6");
    let client_id = cfg.lines().find(|l| l.starts_with("client_id")).unwrap().split('"').nth(1).unwrap().to_string();
    let secret = cfg.lines().find(|l| l.starts_with("client_secret")).unwrap().split('"').nth(1).unwrap().to_string();
    let token = server.token_for(&client_id, &secret).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/agent", server.addr)).await.unwrap();
    let mut roundtrip = async |frame: String| -> Value {
        ws.send(Frame::text(frame)).await.unwrap();
        loop {
            let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("socket closed") };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "agent:heartbeat:request" {
                return v;
            }
        }
    };
    let connect = |token: &str, agent: &str| {
        json!({"type": "agent:connect:request", "accessToken": token, "agentId": agent}).to_string()
    };
    assert_eq!(roundtrip(connect("", &id)).await["body"], "Missing access token");
    assert_eq!(roundtrip(connect(&token, "")).await["body"], "Missing agent ID");
    assert_eq!(roundtrip(connect("forged", &id)).await["body"], "Invalid access token");
    // A good token for the wrong agent, or an admin's for no agent, says so (found by an
    // attacker's probe: both were "Invalid access token").
    let (other, _) = server.add_agent("another");
    assert_eq!(
        roundtrip(connect(&token, &other)).await["body"],
        "This token may not connect as this agent: an agent connects with its own credentials (or an admin's)"
    );
    let admin = server.admin_token().await;
    assert_eq!(
        roundtrip(connect(&admin, "no-such-agent")).await["body"],
        "Unknown agent ID: no agent has it (removed, or never added)"
    );
    assert_eq!(
        roundtrip(connect(&token, "no-such-agent")).await["body"],
        "This token may not connect as this agent: an agent connects with its own credentials (or an admin's)",
        "only an admin learns whether an agent exists"
    );
    assert_eq!(roundtrip(connect(&token, &id)).await["type"], "agent:connect:response");

    let big = json!({"type": "agent:heartbeat:response", "version": "x".repeat(2 << 20)}).to_string();
    for (frame, text) in [
        ("][".to_string(), "Invalid JSON"),
        (r#"{"type":"agent:bogus","callback":"c9"}"#.to_string(), "Unknown message type: agent:bogus"),
        (r#"{"type":"agent:heartbeat:response"}"#.to_string(), "missing field `version`"),
        (big, "Message too large"),
    ] {
        let reply = roundtrip(frame.clone()).await;
        assert_eq!(reply["type"], "agent:error", "{reply}");
        assert!(reply["body"].as_str().unwrap().contains(text), "{} → {reply}", &frame[..frame.len().min(60)]);
    }
    let hb = roundtrip(r#"{"type":"agent:heartbeat:request"}"#.into()).await;
    assert_eq!(hb["type"], "agent:heartbeat:response", "the connection is still up");
    ws.send(Frame::text(r#"{"type":"agent:heartbeat:response","version":"7.7.7"}"#)).await.unwrap();
    server.wait_status(&id, "connected", "7.7.7", LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_unreadable_configuration_exit_64_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("client_id = \"c\"\nclient_secret = \"hunter2\"\nagent_id = \"a\"\n", "`base_url` is missing"),
        ("base_url = \"http://x/\"\nclient_id = \"c\"\nagent_id = \"a\"\n", "`client_secret` is missing"),
        ("base_url = \"http://x/\"\nclient_id = \"c\"\nclient_secret = \"hunter2\"\nagent_id = \"a\"\nheartbeat_interval = 0\n", "`heartbeat_interval`"),
    ];
    for (body, expected) in cases {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, body).unwrap();
        let out = std::process::Command::new(agent_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(expected), "{stderr:?} should contain {expected:?}");
        assert!(!stderr.contains("hunter2"));
    }
    // A directory where a file should be, and a file that does not exist.
    for path in [dir.path().to_path_buf(), dir.path().join("missing.toml")] {
        let out = std::process::Command::new(agent_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("cannot read config file"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn version_reports_what_the_binary_was_built_as() {
    let out = std::process::Command::new(agent_bin()).args(["version", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], SOURCE_VERSION);
    assert!(v["target"].as_str().unwrap().contains("linux"));
    assert!(v["commit"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_with_an_extra_ca_file_and_a_clear_error_without_it() {
    let server = Server::start(&[]).await;
    let front = edge_agent_e2e::tls::TlsFront::start(server.addr).await;
    let (id, cfg) = server.add_agent("tls");
    let https = cfg.replace(&format!("http://{}/", server.addr), &format!("https://localhost:{}/", front.addr.port()));
    assert_ne!(https, cfg);

    // Without the CA the certificate is not trusted: the agent says so and keeps trying.
    let untrusted = AgentHome::new(&format!("{https}{FAST}"));
    let agent = untrusted.run();
    eventually(LIMIT, "a certificate error", || {
        let log = agent.log();
        async move { (log.contains("UnknownIssuer") || log.contains("invalid peer certificate")).then_some(()) }
    })
    .await;
    drop(agent);
    assert_eq!(server.status(&id).await.0, "unknown");

    let trusted = AgentHome::new(&format!("{https}{FAST}ca_file = \"{}\"\n", front.ca().display()));
    let agent = trusted.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert!(
        agent.log().contains(&format!("connected url=wss://localhost:{}/ws/agent", front.addr.port())),
        "{}",
        agent.log()
    );
}

/// The server asks an agent for a heartbeat only when the agent's own is late: one that answered
/// the server's first and then sends its own is not asked again (nor is its socket woken for a
/// tick that would send nothing); when it falls silent it is asked an interval and a quarter
/// after its last, and dropped once nothing came from it for more than three intervals. Its
/// `lastUpdated` moves with its own heartbeats.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_sending_its_own_heartbeats_is_asked_for_one_only_when_it_falls_silent() {
    use crate::hostile_agent::{agent, closed_with, connected};
    let interval = Duration::from_secs(2);
    let server = Server::start(&["--heartbeat-interval", "2"]).await;
    let (id, token) = agent(&server, "own-heartbeats").await;
    let mut ws = connected(&server, &token, &id).await;
    let first = next(&mut ws, LIMIT).await.expect("the server's first heartbeat request");
    assert_eq!(first["type"], "agent:heartbeat:request", "{first}");
    let answer = json!({"type": "agent:heartbeat:response", "version": SOURCE_VERSION});
    ws.send(Frame::text(answer.to_string())).await.unwrap();
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let answered = crate::upgrade::last_updated(&server, &id).await;

    // Three intervals of the agent's own heartbeats, two an interval (a stalled test still sends
    // well within the server's patience): only answers come.
    let own = json!({"type": "agent:heartbeat:request"}).to_string();
    let (mut sent, mut answers) = (0, 0);
    let mut last_sent = tokio::time::Instant::now();
    let until = last_sent + interval * 3;
    while tokio::time::Instant::now() < until {
        ws.send(Frame::text(own.clone())).await.unwrap();
        (sent, last_sent) = (sent + 1, tokio::time::Instant::now());
        while let Some(v) =
            next(&mut ws, (last_sent + interval / 2).saturating_duration_since(tokio::time::Instant::now())).await
        {
            assert_eq!(v["type"], "agent:heartbeat:response", "only answers while the agent's own come: {v}");
            answers += 1;
        }
    }

    let heard = crate::upgrade::last_updated(&server, &id).await;
    assert!(heard > answered, "`lastUpdated` moves with the agent's own heartbeats: {answered}, then {heard}");

    // Silent now: the answers still due come, then the server's request, late by a quarter.
    let asked = loop {
        let v = next(&mut ws, LIMIT).await.expect("the server asks a silent agent");
        if v["type"] != "agent:heartbeat:response" {
            break v;
        }
        answers += 1;
    };
    assert_eq!(asked["type"], "agent:heartbeat:request", "{asked}");
    assert_eq!(answers, sent, "each of the agent's heartbeats is answered");
    let waited = last_sent.elapsed();
    assert!(waited >= interval, "asked {waited:?} after the agent's last heartbeat: it was not late yet");
    assert!(waited < interval * 2, "asked only {waited:?} after the agent's last heartbeat");
    closed_with(&mut ws, LIMIT).await.expect("a silent agent is dropped");
    let silent = last_sent.elapsed();
    assert!(silent >= interval * 3, "dropped {silent:?} after the agent's last frame");
    server.wait_status(&id, "disconnected", SOURCE_VERSION, LIMIT).await;
}

/// The next text message on `ws` within `within`, if one came; anything else fails the test.
async fn next(ws: &mut crate::hostile_agent::Socket, within: Duration) -> Option<Value> {
    match tokio::time::timeout(within, ws.next()).await {
        Err(_) => None,
        Ok(Some(Ok(Frame::Text(t)))) => Some(serde_json::from_str(&t).unwrap()),
        Ok(other) => panic!("{other:?}"),
    }
}

/// An agent stored as connected when its server was killed, and that never comes back, is stored
/// as disconnected within a few presence TTLs (the fleet's table, counts and metrics read the
/// store; `$status` says disconnected at once); an agent that came back stays connected through
/// the sweeps after.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_never_returns_after_its_server_was_killed_is_stored_disconnected() {
    const TTL: Duration = Duration::from_secs(3);
    let mut server = Server::start(&["--presence-ttl", "3"]).await;
    let (gone, gone_token) = crate::hostile_agent::agent(&server, "gone").await;
    let (back, back_token) = crate::hostile_agent::agent(&server, "back").await;
    let gone_socket = crate::cluster::agent_socket(&server.url("/"), &gone_token, &gone).await;
    let back_socket = crate::cluster::agent_socket(&server.url("/"), &back_token, &back).await;
    eventually(LIMIT, "both agents stored as connected", || async {
        (stored_states_of(&server).await == (2, 0)).then_some(())
    })
    .await;

    server.restart();
    drop((gone_socket, back_socket));
    // The first sweep is a period after the start.
    assert_eq!(stored_states_of(&server).await, (2, 0), "as stored before the kill");
    assert_eq!(server.status(&gone).await.0, "disconnected", "no socket: `$status` says so at once");
    let _back = crate::cluster::agent_socket(&server.url("/"), &back_token, &back).await;
    eventually(Duration::from_secs(30), "the agent that never came back stored as disconnected", || async {
        (stored_states_of(&server).await == (1, 1)).then_some(())
    })
    .await;
    tokio::time::sleep(TTL * 2).await;
    let metrics = metrics_of(&server).await;
    assert_eq!(stored_states(&metrics), (1, 1), "two sweeps later");
    let swept = edge_agent_e2e::attack::sample(&metrics, "agent_server_status_sweep_disconnected_total");
    assert_eq!(swept, 1.0, "counted once:\n{metrics}");
    assert_eq!(server.status(&back).await, ("connected".to_string(), SOURCE_VERSION.to_string()));
}

/// How many agents the store counts as connected and as disconnected, by `/metrics` text.
pub fn stored_states(metrics: &str) -> (u32, u32) {
    let n = |state: &str| {
        let line = format!("agent_server_agents{{state=\"{state}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |v| v.parse().unwrap())
    };
    (n("connected"), n("disconnected"))
}

/// [`stored_states`] of `server`.
async fn stored_states_of(server: &Server) -> (u32, u32) {
    stored_states(&metrics_of(server).await)
}

/// `server`'s `/metrics` text.
async fn metrics_of(server: &Server) -> String {
    let token = server.admin_token().await;
    server.http.get(server.url("/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap()
}
