//! The update policy on two nodes (PostgreSQL, Redis, nginx), with real agents between two real
//! builds: the node that drives the rollouts drives the policy; any node answers its status; when
//! the driving node is killed in the middle of the policy, the other takes it over and finishes
//! it, asking no agent twice.

use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::cluster::{Api, Cluster};
use edge_agent_e2e::{eventually, next_version};

use crate::cluster::{agent, releases, FAST_NODE, LIMIT};
use crate::policy::{converged_on_target, group, state, Clock};

async fn policy_status(api: &Api) -> Option<Value> {
    let (code, v) = api.get("fhir/R4/Policy/$status").await;
    (code == 200).then_some(v)
}

async fn wait_on(api: &Api, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(90), what, || async { policy_status(api).await.filter(|s| done(s)) }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_node_that_drives_the_policy_hands_it_over() {
    let clock = Clock::new();
    let mut flags: Vec<String> = FAST_NODE.iter().map(|s| s.to_string()).collect();
    flags.extend(clock.flags());
    let mut cluster = Cluster::start(2, &flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let next = next_version();
    let mut agents = Vec::new();
    for name in ["dev-0", "prod-0", "prod-1"] {
        let releases = releases().await;
        let (id, cfg) = cluster.add_agent(name);
        let (home, proc) = agent(&cfg, &cluster.nginx.url(), &releases);
        cluster.lb().wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
        agents.push((id, home, proc, releases));
    }
    let asks = |i: usize| agents[i].3.seen().iter().filter(|s| s.path == format!("v{next}.json")).count();
    let driver = eventually(LIMIT, "a node driving rollouts", || cluster.rollout_driver()).await;
    let other = 1 - driver;
    // Set on the node that does not drive: the driving node picks it up from the store.
    let spec = json!({"target": next, "unmatched": "leave", "groups": [
        {"name": "dev", "selector": "name=dev-"},
        {"name": "prod", "selector": "name=prod-", "waitAfterPrevious": "8h"},
    ]});
    let api = cluster.api(other);
    let resp = api
        .http
        .put(api.url("fhir/R4/Policy"))
        .bearer_auth(api.token().await)
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Waiting 8 hours (8 seconds) after dev: the driving node dies meanwhile.
    let waiting = wait_on(&api, "prod waiting after dev", |s| state(s, "prod") == "waiting-delay").await;
    assert_eq!(
        group(&waiting, "prod")["reason"],
        "waiting 8h after dev converged",
        "read on the other node: {waiting}"
    );
    cluster.kill(driver);
    let done = wait_on(&api, "prod converged on the node left", |s| converged_on_target(s, "prod")).await;
    assert_eq!(eventually(LIMIT, "the other node driving", || cluster.rollout_driver()).await, other);
    for (id, ..) in &agents {
        cluster.api(other).wait_status(id, "connected", &next, LIMIT).await;
    }
    assert_eq!((asks(0), asks(1), asks(2)), (1, 1, 1), "each agent asked once: {done}");
    assert_eq!(group(&done, "prod")["states"], json!({"on-target": 2}), "{done}");
}
