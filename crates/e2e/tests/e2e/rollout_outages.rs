//! A rollout across three nodes whose infrastructure fails just as a wave starts: Redis stopped,
//! PostgreSQL stopped, or the node holding the agents killed. The rollout completes with every
//! member succeeded and no agent asked twice; an outage is never counted as an agent's failure.
//! And presence: every node's `$bulk-status` is right again within a second of Redis coming back.

use std::time::{Duration, Instant};

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::cluster::{status_of, Api, Cluster};
use edge_agent_e2e::releases::ReleaseServer;
use edge_agent_e2e::{eventually, next_version, sim, AgentHome, Proc};

use crate::cluster::{agent, releases, FAST_NODE, LIMIT};

/// What fails as the first wave after the canary starts.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Redis,
    Postgres,
    /// The node that holds half of the agents' sockets.
    Node,
}

/// The wait after the canary before the next wave, in seconds: the fault falls in its last second.
const BAKE: u64 = 3;
const AGENTS: usize = 5;

struct Fleet {
    agents: Vec<(String, AgentHome, Proc, ReleaseServer)>,
}

/// Real agents, each with a release server of its own (to count what each was asked), connected
/// through nginx to `nodes` only.
async fn fleet(cluster: &Cluster, nodes: &[usize], prefix: &str) -> Fleet {
    cluster.route_to(nodes).await;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let releases = releases().await;
        let (id, cfg) = cluster.add_agent(&format!("{prefix}-{i}"));
        let (home, proc) = agent(&cfg, &cluster.nginx.url(), &releases);
        cluster.lb().wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        agents.push((id, home, proc, releases));
    }
    Fleet { agents }
}

async fn start_rollout(api: &Api, prefix: &str) -> String {
    let query =
        format!("name={prefix}-&version={}&canary=1&growth=2&maxInFlight=3&bake={BAKE}&timeout=30000", next_version());
    let resp = api
        .http
        .post(api.url(&format!("fhir/R4/Agent/$upgrade?{query}")))
        .bearer_auth(api.token().await)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

fn count(v: &Value, state: &str) -> u64 {
    v["counts"][state].as_u64().unwrap_or(0)
}

/// Waits for the canary to succeed, then for the rest of the bake but its last second: the next
/// wave starts then, by the rollout's own schedule.
async fn until_the_next_wave(api: &Api, rollout: &str) {
    eventually(LIMIT, "the canary to succeed", || async {
        let (_, v) = api.get(&format!("fhir/R4/Rollout/{rollout}")).await;
        (count(&v, "succeeded") == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(BAKE - 1)).await;
}

async fn a_rollout_outlives(fault: Fault) {
    let mut cluster = match fault {
        Fault::Postgres => Cluster::start_own_postgres(3, FAST_NODE).await,
        _ => Cluster::start(3, FAST_NODE).await,
    };
    let driver = eventually(LIMIT, "a node driving rollouts", || cluster.rollout_driver()).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != driver).collect();
    // Every agent on a node that does not drive: each request goes through the bus.
    let holders = if matches!(fault, Fault::Node) { others.clone() } else { vec![others[0]] };
    let prefix = format!("{fault:?}").to_lowercase();
    let fleet = fleet(&cluster, &holders, &prefix).await;
    let api = cluster.api(driver);
    let rollout = start_rollout(&api, &prefix).await;
    let survivor = cluster.api(if matches!(fault, Fault::Node) { driver } else { others[1] });
    // Issued before the fault: a node without its store issues none, but takes this one after.
    let token = survivor.token().await;
    until_the_next_wave(&api, &rollout).await;
    let fault_at = edge_agent_base::time::now_iso();
    match fault {
        Fault::Redis => {
            cluster.redis.stop();
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.redis.start_again();
        }
        Fault::Postgres => {
            let pg = cluster.postgres.as_mut().unwrap();
            pg.stop();
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg.start_again();
        }
        Fault::Node => cluster.kill(others[0]),
    }

    let status = eventually(Duration::from_secs(120), "the rollout to complete", || async {
        let (code, v) = survivor.get_with(&format!("fhir/R4/Rollout/{rollout}"), &token).await;
        (code == 200 && v["state"] != "active").then_some(v)
    })
    .await;
    assert_eq!(status["state"], "completed", "{status:#}");
    assert_eq!(count(&status, "succeeded"), AGENTS as u64, "every member succeeded: {status:#}");
    let next = next_version();
    for (id, _, _, releases) in &fleet.agents {
        let asks = releases.seen().iter().filter(|s| s.path == format!("v{next}.json")).count();
        assert_eq!(asks, 1, "agent {id} was asked once: {status:#}");
        survivor.wait_status(id, "connected", &next, LIMIT).await;
    }
    let events: Vec<&str> = status["events"].as_array().unwrap().iter().filter_map(|e| e["text"].as_str()).collect();
    println!("{fault:?} at {fault_at}: {events:?}");
    let wave_1 = status["events"].as_array().unwrap().iter().find(|e| e["text"] == "wave 1 started (2 agents)");
    let wave_1_at = wave_1.and_then(|e| e["at"].as_str()).expect("wave 1 started");
    assert!(wave_1_at >= fault_at.as_str(), "the fault ({fault_at}) fell before wave 1 started ({wave_1_at})");
    if matches!(fault, Fault::Redis) {
        assert!(events.iter().any(|e| e.contains("cluster bus unavailable")), "the events name the outage: {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_completes_when_redis_stops_as_a_wave_starts() {
    a_rollout_outlives(Fault::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_completes_when_postgres_stops_as_a_wave_starts() {
    a_rollout_outlives(Fault::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_completes_when_a_node_holding_agents_dies_as_a_wave_starts() {
    a_rollout_outlives(Fault::Node).await;
}

/// How many agents named `prefix-…` each node's `$bulk-status` says are connected; None while a
/// node cannot answer.
async fn connected_per_node(cluster: &Cluster, prefix: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        let (code, v) = cluster.api(i).get(&format!("fhir/R4/Agent/$bulk-status?name={prefix}-&_count=1000")).await;
        if code != 200 {
            return None;
        }
        let entries = v["entry"].as_array()?;
        let connected =
            entries.iter().filter(|e| status_of(&e["resource"]["parameter"][1]["resource"]).0 == "connected").count();
        out.push(connected);
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_is_right_on_every_node_within_a_second_of_redis_coming_back() {
    const N: usize = 100;
    let mut cluster = Cluster::start(3, FAST_NODE).await;
    let agents = sim::fleet_via(&cluster.lb(), "presence", &["1.0.0"], N, true).await;
    eventually(LIMIT, "every agent connected, as every node sees it", || async {
        connected_per_node(&cluster, "presence").await.filter(|c| c.iter().all(|&n| n == N))
    })
    .await;

    cluster.redis.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.redis.start_again();
    let back = Instant::now();
    eventually(LIMIT, "every node to see every agent connected again", || async {
        connected_per_node(&cluster, "presence").await.filter(|c| c.iter().all(|&n| n == N))
    })
    .await;
    let took = back.elapsed();
    println!("presence right on every node {took:?} after Redis accepted connections again");
    assert!(took < Duration::from_millis(1500), "presence took {took:?} to come back (target 1 s)");
    drop(agents);
}
