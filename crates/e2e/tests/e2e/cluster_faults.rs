//! Several nodes while things fail: a node dies, Redis or PostgreSQL stops, the node driving a
//! rollout is killed. Each node answers 503 while it cannot reach what it needs, and recovers by
//! itself; agents stay reachable and rollouts carry on.

use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::cluster::{Api, Cluster};
use edge_agent_e2e::releases::ReleaseServer;
use edge_agent_e2e::rig::same_bytes;
use edge_agent_e2e::services::Postgres;
use edge_agent_e2e::{
    agent_bin, children, eventually, next_build, next_version, server_bin, signal, spawn_server, toml_value, AgentHome,
    Proc, FAST,
};

use crate::cluster::{agent, releases, FAST_NODE, LIMIT};

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_agents_stop_being_connected_within_the_presence_ttl() {
    let mut cluster = Cluster::start(2, &["--heartbeat-interval", "0.3", "--presence-ttl", "3"]).await;
    let releases = releases().await;
    let (id, cfg) = cluster.add_agent("frozen");
    let (_home, proc) = agent(&cfg, &cluster.api(0).base, &releases);
    let other = cluster.api(1);
    other.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    // Its status in the store too (a node gathers status writes for up to 20 ms; a node killed
    // within them leaves the agent's previous one stored until it connects again).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The agent freezes with its socket open, so nothing closes it: only the TTL can tell.
    edge_agent_e2e::signal(-proc.pid(), "STOP");
    cluster.kill(0);
    let killed = std::time::Instant::now();
    other.wait_status(&id, "disconnected", SOURCE_VERSION, LIMIT).await;
    assert!(killed.elapsed() < Duration::from_secs(3 + 2), "within the TTL: {:?}", killed.elapsed());
    edge_agent_e2e::signal(-proc.pid(), "CONT");
}

fn alive(cluster: &mut Cluster, node: usize) -> bool {
    cluster.nodes[node].proc.as_mut().unwrap().child.try_wait().unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_and_restarted_gives_503s_then_recovers() {
    let mut cluster = Cluster::start(2, &["--heartbeat-interval", "0.3", "--presence-ttl", "6"]).await;
    let releases = releases().await;
    let (id, cfg) = cluster.add_agent("pinned");
    let (_home, _proc) = agent(&cfg, &cluster.api(0).base, &releases);
    let (never, _) = cluster.add_agent("never-connected");
    let other = cluster.api(1);
    other.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    cluster.redis.stop();
    let path = format!("fhir/R4/Agent/{id}/$status");
    let (code, v) = other.get(&path).await;
    assert_eq!(code, 503, "a node that cannot ask Redis does not guess: {v}");
    assert_eq!(v["issue"][0]["details"]["text"], "Cluster bus unavailable, try again");
    let (code, _) = other.get(&format!("fhir/R4/Agent/{never}/$status")).await;
    assert_eq!(code, 503);
    let (code, v) = other.upgrade(&id, "version=9.9.9").await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(cluster.api(0).status(&id).await.0, "connected", "the node holding the socket still knows");

    cluster.redis.start_again();
    other.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert_eq!(other.status(&never).await, ("unknown".to_string(), "unknown".to_string()));
    assert!(alive(&mut cluster, 0) && alive(&mut cluster, 1), "no node crashed");
}

/// One node on a PostgreSQL of its own (which a test stops), with an admin client, a release
/// server, and the configuration of one agent added to it.
struct PgNode {
    pg: Postgres,
    node: Proc,
    api: Api,
    releases: ReleaseServer,
    /// The agent's configuration, as `agent add` wrote it.
    cfg: String,
    id: String,
    _dir: tempfile::TempDir,
}

impl PgNode {
    async fn start(agent: &str) -> PgNode {
        let pg = Postgres::start();
        let db = pg.create_db().await;
        let dir = tempfile::tempdir().unwrap();
        let cli = |args: &[&str]| {
            let out = std::process::Command::new(server_bin()).args(args).args(["--database", &db]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let text = cli(&["client", "add", "--admin"]);
        let admin = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
        let extra: Vec<String> =
            ["--database", &db, "--heartbeat-interval", "0.3"].iter().map(|s| s.to_string()).collect();
        let (node, addr) = spawn_server(dir.path(), "127.0.0.1:0", &extra, dir.path().join("node.log"));
        let api =
            Api { base: format!("http://{addr}/"), http: reqwest::Client::new(), admin, cached: Default::default() };
        let cfg = cli(&["agent", "add", "--name", agent, "--base-url", &api.base]);
        let id = toml_value(&cfg, "agent_id");
        PgNode { pg, node, api, releases: releases().await, cfg, id, _dir: dir }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_and_restarted_gives_503s_then_recovers() {
    let PgNode { mut pg, mut node, api, releases, cfg, id, _dir } = PgNode::start("pg").await;
    let (_home, _proc) = agent(&cfg, &api.base, &releases);
    api.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let token = api.token().await;

    pg.stop();
    let (code, v) = api.get_with(&format!("fhir/R4/Agent/{id}"), &token).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["issue"][0]["details"]["text"], "Storage unavailable, try again");
    let form = [("grant_type", "client_credentials"), ("client_id", &api.admin.0), ("client_secret", &api.admin.1)];
    let resp = api.http.post(api.url("oauth2/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");

    pg.start_again();
    eventually(LIMIT, "the node reading PostgreSQL again", || {
        let (api, path, token) = (api.clone(), format!("fhir/R4/Agent/{id}"), token.clone());
        async move { (api.get_with(&path, &token).await.0 == 200).then_some(()) }
    })
    .await;
    assert_eq!(api.status(&id).await, ("connected".to_string(), SOURCE_VERSION.to_string()));
    assert!(node.child.try_wait().unwrap().is_none(), "the node did not crash:\n{}", node.log());
    node.signal("TERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_carries_on_when_its_driving_node_is_killed() {
    let mut cluster = Cluster::start(3, FAST_NODE).await;
    let next = next_version();
    // Each agent with its own release server, to count what each was asked.
    let mut agents = Vec::new();
    for i in 0..4 {
        let releases = releases().await;
        let (id, cfg) = cluster.add_agent(&format!("failover-{i}"));
        let (home, proc) = agent(&cfg, &cluster.nginx.url(), &releases);
        cluster.lb().wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        agents.push((id, home, proc, releases));
    }
    let driver = eventually(LIMIT, "a node driving rollouts", || cluster.rollout_driver()).await;
    let api = cluster.api((driver + 1) % 3);
    let token = api.token().await;
    let resp = api
        .http
        .post(api.url(&format!("fhir/R4/Agent/$upgrade?name=failover-&version={next}&growth=1&maxInFlight=1")))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let rollout = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let count = |v: &Value, s: &str| v["counts"][s].as_u64().unwrap_or(0);
    eventually(LIMIT, "the second member in flight", || async {
        let (_, v) = api.get(&format!("fhir/R4/Rollout/{rollout}")).await;
        (count(&v, "succeeded") >= 1 && count(&v, "in-progress") == 1).then_some(())
    })
    .await;
    cluster.kill(driver);

    let survivor = cluster.api((driver + 2) % 3);
    let status = eventually(Duration::from_secs(90), "the rollout to complete on the other nodes", || async {
        let (_, v) = survivor.get(&format!("fhir/R4/Rollout/{rollout}")).await;
        (v["state"] == "completed").then_some(v)
    })
    .await;
    assert_eq!(count(&status, "succeeded"), 4, "every member in exactly one final state: {status}");
    let now = cluster.rollout_driver().await.expect("a live node drives rollouts now");
    assert_ne!(now, driver);
    for (id, _, _, releases) in &agents {
        let asks = releases.seen().iter().filter(|s| s.path == format!("v{next}.json")).count();
        assert_eq!(asks, 1, "agent {id} was asked once");
        survivor.wait_status(id, "connected", &next, LIMIT).await;
    }
}

/// Found by fault injection: PostgreSQL stopped while an agent upgraded kept the new version from
/// confirming within its health window (the server answered 503), so it rolled back, and a
/// rollout counted an outage of the server against the release. A new version that reaches the
/// server and is told it cannot be served yet waits for the server, and confirms once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_that_finds_the_store_down_waits_for_it_and_confirms_instead_of_rolling_back() {
    let PgNode { mut pg, mut node, api, releases, cfg, id, _dir } = PgNode::start("trial").await;
    let window = 2;
    let home = AgentHome::new(&format!(
        "{cfg}{FAST}releases_url = \"{}\"\n{}health_window = {window}\n",
        releases.url(),
        releases.trust()
    ));
    home.install(std::path::Path::new(agent_bin()));
    let proc = home.start_at_failpoint("before-swap");
    api.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;

    let next = next_version();
    let asked = {
        let (api, path) = (api.clone(), format!("fhir/R4/Agent/{id}/$upgrade?version={next}&timeout=120000"));
        tokio::spawn(async move { api.get(&path).await })
    };
    home.wait_failpoint().await;
    pg.stop();
    // The worker paused before its swap dies; the next one takes the upgrade over, swaps, and
    // starts the new version, which finds the server up but unable to serve.
    for worker in children(proc.pid()) {
        signal(worker, "KILL");
    }
    eventually(LIMIT, "the new version on trial, told the server cannot serve", || {
        let j = home.journal().unwrap_or_default();
        async move { (j["state"] == "trial" && j["serverUnavailableAt"].is_i64()).then_some(()) }
    })
    .await;
    // Three health windows later, it still waits: nothing was rolled back.
    tokio::time::sleep(Duration::from_secs(3 * window)).await;
    let j = home.journal().unwrap_or_default();
    assert_eq!(j["state"], "trial", "still on trial, not rolled back: {j}\n{}", proc.log());
    assert!(same_bytes(&home.bin(), std::path::Path::new(next_build())), "the new binary stays installed");

    pg.start_again();
    api.wait_status(&id, "connected", &next, LIMIT).await;
    let (code, answer) = asked.await.unwrap();
    assert_eq!(code, 200, "the upgrade's caller is answered: {answer}");
    let last = home.history().pop().unwrap_or_default();
    assert_eq!(last["outcome"], "ok", "{last}");
    assert!(proc.log().contains("the trial waits for it"), "{}", proc.log());
    assert!(node.child.try_wait().unwrap().is_none(), "the node did not crash:\n{}", node.log());
}

/// Found by the fault suite (long mode, seed 108): with the node's link to PostgreSQL cut during a
/// bulk `$upgrade` with a 10 s timeout, the caller was answered after 22 s. Each agent's upgrade
/// is recorded (the version it starts from, read from the bus; its result, written to the store)
/// and the call is audited, and each of those waited up to its own store or bus limit before the
/// answer. The caller is now answered within its timeout and two seconds (one for its upgrade's
/// record, one for its audit event); the records follow.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_caller_is_answered_within_its_timeout_when_postgres_stops_answering_mid_call() {
    let PgNode { pg, node, api, releases, cfg, id, _dir } = PgNode::start("frozen-store").await;
    let home = AgentHome::new(&format!("{cfg}{FAST}releases_url = \"{}\"\n{}", releases.url(), releases.trust()));
    home.install(std::path::Path::new(agent_bin()));
    // The agent takes the request and stops before its swap: it never answers.
    let _proc = home.start_at_failpoint("before-swap");
    api.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let _ = api.token().await;

    let next = next_version();
    let started = std::time::Instant::now();
    let asked = {
        let (api, path) = (api.clone(), format!("fhir/R4/Agent/{id}/$upgrade?version={next}&timeout=3000"));
        tokio::spawn(async move { api.get(&path).await })
    };
    home.wait_failpoint().await;
    // PostgreSQL stops answering, its connections open: as behind a cut link.
    pg.pause();
    let (code, v) = asked.await.unwrap();
    let took = started.elapsed();
    pg.resume();
    assert_eq!(code, 400, "{v}");
    assert!(
        took < Duration::from_millis(3000 + 2500),
        "answered after {took:?}, past its 3 s timeout and 2 s for the records"
    );
    let log = node.log();
    assert!(log.contains("upgrade answered before its result was recorded"), "{log}");
    assert!(log.contains("answered before its audit event was written"), "{log}");
}
