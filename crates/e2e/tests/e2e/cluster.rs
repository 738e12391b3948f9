//! Several nodes on PostgreSQL and Redis behind nginx: any node answers for any agent, replies
//! find their caller across nodes and restarts, tokens are valid everywhere, and page sessions too
//! (failures are in `cluster_faults`).

use std::path::Path;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use edge_agent_e2e::cluster::{status_of, Api, Cluster};
use edge_agent_e2e::releases::ReleaseServer;
use edge_agent_e2e::{
    agent_bin, eventually, next_build, next_version, signal, toml_value, unread_from, AgentHome, Proc, FAST,
};

pub const LIMIT: Duration = Duration::from_secs(30);
pub const FAST_NODE: &[&str] = &["--heartbeat-interval", "0.3"];

pub async fn releases() -> ReleaseServer {
    let releases = ReleaseServer::start().await;
    releases.publish_file(SOURCE_VERSION, Path::new(agent_bin()));
    releases.publish_file(&next_version(), next_build());
    releases.set_latest(&next_version());
    releases
}

/// A real agent, installed from the current build, whose configuration points at `base`.
pub fn agent(cfg: &str, base: &str, releases: &ReleaseServer) -> (AgentHome, Proc) {
    AgentHome::started(&cfg.replace(&toml_value(cfg, "base_url"), base), releases, 4)
}

/// `$bulk-status` of `ids` through `api`: (status, version) per agent, in the order of `ids`.
async fn bulk_status(api: &Api, ids: &[String]) -> Vec<(String, String)> {
    let (code, v) = api.get(&format!("fhir/R4/Agent/$bulk-status?_id={}", ids.join(","))).await;
    assert_eq!(code, 200, "{v}");
    let entries = v["entry"].as_array().unwrap();
    ids.iter()
        .map(|id| {
            let e = entries.iter().find(|e| e["resource"]["parameter"][0]["resource"]["id"] == id.as_str()).unwrap();
            status_of(&e["resource"]["parameter"][1]["resource"])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_behind_nginx_answer_status_and_upgrade_for_every_agent() {
    let cluster = Cluster::start(3, FAST_NODE).await;
    let releases = releases().await;
    let next = next_version();
    // Agents spread over the nodes: two pinned to nodes 0 and 1, one through nginx.
    let mut agents = Vec::new();
    for (i, base) in [cluster.api(0).base, cluster.api(1).base, cluster.nginx.url()].into_iter().enumerate() {
        let (id, cfg) = cluster.add_agent(&format!("spread-{i}"));
        let (home, proc) = agent(&cfg, &base, &releases);
        agents.push((id, home, proc));
    }
    let ids: Vec<String> = agents.iter().map(|a| a.0.clone()).collect();
    for id in &ids {
        cluster.lb().wait_status(id, "connected", SOURCE_VERSION, LIMIT).await;
    }
    for node in 0..3 {
        let api = cluster.api(node);
        for id in &ids {
            assert_eq!(api.status(id).await, ("connected".to_string(), SOURCE_VERSION.to_string()), "node {node}");
        }
        let all = bulk_status(&api, &ids).await;
        assert!(
            all.iter().all(|s| *s == ("connected".to_string(), SOURCE_VERSION.to_string())),
            "node {node}: {all:?}"
        );
    }

    // Single upgrades, each through a node that does not hold the agent's socket (for the first
    // two), all at once.
    let calls = ids.iter().enumerate().map(|(i, id)| {
        let api = cluster.api((i + 1) % 3);
        let (id, next) = (id.clone(), next.clone());
        tokio::spawn(async move { api.upgrade(&id, &format!("version={next}")).await })
    });
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.unwrap(), (200, "All OK".to_string()));
    }
    for node in 0..3 {
        for id in &ids {
            cluster.api(node).wait_status(id, "connected", &next, LIMIT).await;
        }
    }

    // A bulk downgrade through each node in turn, one agent per node's call.
    for (node, id) in ids.iter().enumerate() {
        let (code, v) =
            cluster.api(node).get(&format!("fhir/R4/Agent/$upgrade?_id={id}&version={SOURCE_VERSION}")).await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["entry"][0]["resource"]["parameter"][1]["resource"]["id"], "ok", "node {node}: {v}");
    }
    for node in 0..3 {
        let (api, ids) = (cluster.api(node), &ids);
        eventually(LIMIT, "every agent back at the first version", || {
            let api = api.clone();
            async move {
                let all = bulk_status(&api, ids).await;
                all.iter().all(|s| *s == ("connected".to_string(), SOURCE_VERSION.to_string())).then_some(())
            }
        })
        .await;
    }
    let handshakes = agents[2].2.log().matches("connected url=").count();
    assert!(handshakes >= 3, "the agent behind nginx reconnected through it after each restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_node_that_holds_an_agent_mid_upgrade_still_answers_the_caller() {
    let mut cluster = Cluster::start(3, FAST_NODE).await;
    let releases = releases().await;
    let next = next_version();
    let (id, cfg) = cluster.add_agent("crash");
    let (home, proc) = agent(&cfg, &cluster.nginx.url(), &releases);
    cluster.lb().wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let holder = cluster.wait_holder(&id).await;
    let caller = (holder + 1) % 3;

    releases.faults().drip = Some((1024 * 1024, Duration::from_millis(80)));
    let api = cluster.api(caller);
    let (agent_id, query) = (id.clone(), format!("version={next}&timeout=56000"));
    let call = tokio::spawn(async move { api.upgrade(&agent_id, &query).await });
    home.wait_staged(&next, 1).await;
    cluster.kill(holder);
    releases.faults().drip = None;

    assert_eq!(call.await.unwrap(), (200, "All OK".to_string()), "the caller on a third node hears the result");
    cluster.api(caller).wait_status(&id, "connected", &next, LIMIT).await;
    let now = cluster.wait_holder(&id).await;
    assert_ne!(now, holder, "the agent reconnected through nginx to a live node");
    assert!(proc.log().matches("connected url=").count() >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_lost_with_its_socket_is_sent_again_when_the_agent_comes_back_on_another_node() {
    // No heartbeats from the server: what waits unread in the agent's socket is the request.
    let cluster = Cluster::start(2, &["--heartbeat-interval", "60"]).await;
    let releases = releases().await;
    let next = next_version();
    let (id, cfg) = cluster.add_agent("moved");
    cluster.route_only(0).await;
    let slow = FAST.replace("heartbeat_interval = 0.3", "heartbeat_interval = 60");
    let cfg = cfg.replace(&toml_value(&cfg, "base_url"), &cluster.nginx.url());
    let home = AgentHome::new(&format!(
        "{cfg}{slow}releases_url = \"{}\"\n{}health_window = 10\n",
        releases.url(),
        releases.trust()
    ));
    home.install(Path::new(agent_bin()));
    let agent = home.start(&[]);
    cluster.api(0).wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    // Node 0 as a rule; nginx's old workers may still take a connection for a moment after a
    // reload, so the test goes on from whichever node holds the agent.
    let first = cluster.wait_holder(&id).await;
    let other = 1 - first;

    let worker = agent.worker_pid().await;
    signal(worker, "STOP");
    let before = unread_from(cluster.nginx.port);
    let api = cluster.api(first);
    let (agent_id, query) = (id.clone(), format!("version={next}&timeout=40000"));
    let call = tokio::spawn(async move { api.upgrade(&agent_id, &query).await });
    eventually(LIMIT, "the request in the stopped worker's socket", || {
        let unread = unread_from(cluster.nginx.port);
        async move { (unread > before).then_some(()) }
    })
    .await;
    // The worker dies without reading it; the next one connects to the other node.
    cluster.route_only(other).await;
    signal(worker, "KILL");

    assert_eq!(call.await.unwrap(), (200, "All OK".to_string()), "sent again to the agent on the other node");
    cluster.api(first).wait_status(&id, "connected", &next, LIMIT).await;
    assert_eq!(cluster.wait_holder(&id).await, other, "the agent is on the other node");
    let log = cluster.log(first);
    assert!(log.contains("sending an unanswered request again on another node"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_rollouts_created_at_once_on_two_nodes_are_not_both_accepted() {
    let cluster = Cluster::start(2, &[]).await;
    for i in 0..3 {
        cluster.add_agent(&format!("overlap-{i}"));
    }
    let next = next_version();
    let (a, b) = (cluster.api(0), cluster.api(1));
    let (ta, tb) = (a.token().await, b.token().await);
    let create = |api: &Api, token: &str| {
        let url = api.url(&format!("fhir/R4/Agent/$upgrade?name=overlap-&version={next}"));
        let req = api.http.post(url).bearer_auth(token).header("prefer", "respond-async");
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    for round in 0..8 {
        let (one, two) = tokio::join!(create(&a, &ta), create(&b, &tb));
        let mut codes = [one.0, two.0];
        codes.sort();
        assert_eq!(codes, [202, 409], "round {round}: exactly one is accepted: {one:?} {two:?}");
        let (won, lost) = if one.0 == 202 { (one.1, two.1) } else { (two.1, one.1) };
        let text = lost["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
        assert!(text.contains("would overlap rollout") && text.contains(won["id"].as_str().unwrap()), "{text}");
        let cancel = a.url(&format!("fhir/R4/Rollout/{}/$cancel", won["id"].as_str().unwrap()));
        let resp = a.http.post(cancel).bearer_auth(&ta).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_one_node_works_on_another_and_after_both_restart() {
    let mut cluster = Cluster::start(2, &[]).await;
    let token = cluster.api(0).token().await;
    let (code, v) = cluster.api(1).get_with("fhir/R4/Agent", &token).await;
    assert_eq!(code, 200, "{v}");
    cluster.restart(0).await;
    cluster.restart(1).await;
    for node in [1, 0] {
        let (code, v) = cluster.api(node).get_with("fhir/R4/Agent", &token).await;
        assert_eq!(code, 200, "node {node} after restarts: {v}");
    }
    let (code, _) = cluster.api(1).get_with("fhir/R4/Agent", "not-a-token").await;
    assert_eq!(code, 401);
}

/// A page API request with a session cookie (and its CSRF token for a POST): (status, body).
async fn page(api: &Api, cookie: &str, csrf: Option<&str>, path: &str) -> (u16, Value) {
    let r = match csrf {
        Some(c) => api.http.post(api.url(path)).header("x-csrf-token", c),
        None => api.http.get(api.url(path)),
    };
    let resp = r.header("cookie", cookie).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_session_made_on_one_node_works_and_ends_on_every_node() {
    let mut cluster = Cluster::start(2, &[]).await;
    let (a, b) = (cluster.api(0), cluster.api(1));
    let (id, secret) = &cluster.admin;
    let login = a.http.post(a.url("ui/api/login")).json(&serde_json::json!({"client_id": id, "client_secret": secret}));
    let login = login.send().await.unwrap();
    assert_eq!(login.status().as_u16(), 200, "sign-in refused");
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = login.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string();

    let (code, v) = page(&b, &cookie, None, "ui/api/session").await;
    assert_eq!((code, v["csrf"].as_str()), (200, Some(csrf.as_str())), "the other node knows the session: {v}");
    cluster.restart(0).await;
    let (code, v) = page(&cluster.api(0), &cookie, None, "ui/api/overview").await;
    assert_eq!(code, 200, "the session outlives a restart of the node that made it: {v}");

    let (code, v) = page(&b, &cookie, Some("wrong"), "ui/api/logout").await;
    assert_eq!(code, 403, "a sign-out without the CSRF token is refused: {v}");
    let (code, v) = page(&b, &cookie, Some(&csrf), "ui/api/logout").await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = page(&cluster.api(0), &cookie, None, "ui/api/session").await;
    assert_eq!(code, 401, "signed out on one node is signed out on all: {v}");
    assert!(v["error"].as_str().unwrap_or("").contains("sign in again"), "{v}");
}

/// An agent's socket opened on `base` with `token`, connected and its version reported.
pub async fn agent_socket(base: &str, token: &str, agent_id: &str) -> crate::hostile_agent::Socket {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;
    let url = format!("{}ws/agent", base.replacen("http://", "ws://", 1));
    let mut ws = crate::hostile_agent::connected_to(&url, token, agent_id).await;
    let Some(Ok(Frame::Text(t))) = ws.next().await else { panic!("closed before the first heartbeat") };
    let asked: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(asked["type"], "agent:heartbeat:request", "{asked}");
    let answer = serde_json::json!({"type": "agent:heartbeat:response", "version": SOURCE_VERSION});
    ws.send(Frame::text(answer.to_string())).await.unwrap();
    ws
}

/// `/metrics` of the node behind `api`, as text.
async fn metrics(api: &Api) -> String {
    metrics_as(api, &api.token().await).await
}

/// [`metrics`] with a token already issued (one for each read would pass the token endpoint's rate).
async fn metrics_as(api: &Api, token: &str) -> String {
    api.http.get(api.url("metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap()
}

/// An agent whose new socket reaches another node before its old one closes (an upgraded
/// agent's new process may) stays stored as connected: the node it left finds it held elsewhere
/// as it releases its record, and leaves its status to the node that holds it (its row, newer,
/// said disconnected until the agent's next change).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_reached_another_node_before_its_old_socket_closed_stays_connected() {
    let cluster = Cluster::start(2, &[]).await;
    let (id, cfg) = cluster.add_agent("mover");
    let (a, b) = (cluster.api(0), cluster.api(1));
    let (client, secret) = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));
    let token = edge_agent_e2e::server::token(&a.http, &a.base, &client, &secret).await;
    let old = agent_socket(&a.base, &token, &id).await;
    assert_eq!(cluster.wait_holder(&id).await, 0);
    let new = agent_socket(&b.base, &token, &id).await;
    eventually(LIMIT, "node 1 holding the agent", || async { (cluster.holder(&id).await == Some(1)).then_some(()) })
        .await;
    drop(old);
    // Past the wait for a return and the writes' linger.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for api in [&a, &b] {
        let text = metrics(api).await;
        assert!(text.contains("agent_server_agents{state=\"connected\"} 1"), "{}:\n{text}", api.base);
    }
    assert_eq!(b.status(&id).await, ("connected".to_string(), SOURCE_VERSION.to_string()));
    drop(new);
}

/// An agent whose node was killed, and that comes back nowhere, is stored as disconnected within
/// a few presence TTLs (its record lapses, and two sweeps find it held nowhere): the table and
/// the metrics of every node, which read the shared store, stop counting it as connected. The
/// agents of the two live nodes stay connected through the sweeps after, whichever node sweeps
/// (it finds the other's by its record on the bus).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_node_was_killed_and_that_never_returns_is_stored_disconnected() {
    let mut cluster = Cluster::start(3, &["--presence-ttl", "3"]).await;
    let a = cluster.api(0);
    let admin = a.token().await;
    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for node in 0..3 {
        let (id, cfg) = cluster.add_agent(&format!("on-node-{node}"));
        let api = cluster.api(node);
        let (client, secret) = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));
        let token = edge_agent_e2e::server::token(&api.http, &api.base, &client, &secret).await;
        sockets.push(agent_socket(&api.base, &token, &id).await);
        ids.push(id);
    }
    let counts = crate::connection::stored_states;
    eventually(LIMIT, "the three agents stored as connected", || async {
        (counts(&metrics_as(&a, &admin).await) == (3, 0)).then_some(())
    })
    .await;
    cluster.kill(2);
    drop(sockets.pop());
    eventually(LIMIT, "the stranded agent stored as disconnected", || async {
        (counts(&metrics_as(&a, &admin).await) == (2, 1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(counts(&metrics_as(&a, &admin).await), (2, 1), "two sweeps later");
    assert_eq!(a.status(&ids[2]).await.0, "disconnected");
    for id in &ids[..2] {
        assert_eq!(a.status(id).await, ("connected".to_string(), SOURCE_VERSION.to_string()));
    }
}
