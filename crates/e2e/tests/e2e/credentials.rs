//! Credentials taken back: an agent removed on one node while its socket is on another, a client's
//! secret replaced, one token revoked (RFC 7009), an agent switched off and on; each takes effect
//! on every node within a second. Two nodes on PostgreSQL and Redis where it matters; one node on
//! SQLite for the rest.

use std::process::Command;
use std::time::{Duration, Instant};

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::cluster::{Api, Cluster};
use edge_agent_e2e::server::token;
use edge_agent_e2e::{eventually, server_bin, toml_value, AgentHome, Server, FAST};

use crate::cluster::FAST_NODE;

const LIMIT: Duration = Duration::from_secs(30);
const ONE_SECOND: Duration = Duration::from_secs(1);

/// How many agents have a socket on the node at `base`.
async fn agents_on(base: &str) -> u64 {
    let v: Value = reqwest::get(format!("{base}healthcheck")).await.unwrap().json().await.unwrap();
    v["agents"].as_u64().unwrap()
}

/// The count of refused credentials at `endpoint` on the node behind `api`.
async fn refused(api: &Api, endpoint: &str) -> u64 {
    let token = api.cached.get(&api.http, &api.base, &api.admin.0, &api.admin.1).await;
    refused_at(&api.http, &api.base, &token, endpoint).await
}

async fn refused_at(http: &reqwest::Client, base: &str, admin_token: &str, endpoint: &str) -> u64 {
    let text = http.get(format!("{base}metrics")).bearer_auth(admin_token).send().await.unwrap().text().await.unwrap();
    let prefix = format!("agent_server_failed_authentications_total{{endpoint=\"{endpoint}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
}

/// The status of a request with `token` (bearer) to `path` on `api`'s node.
async fn status_with(api: &Api, method: reqwest::Method, path: &str, token: &str) -> u16 {
    api.http.request(method, api.url(path)).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Runs `agent-server` with `args` on the cluster's database; its stdout.
fn admin_cli(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new(server_bin()).args(args).args(["--database", &cluster.db]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_removed_on_node_b_is_closed_on_node_a_within_a_second_and_stays_out() {
    let cluster = Cluster::start(2, FAST_NODE).await;
    let (a, b) = (cluster.api(0), cluster.api(1));
    let (id, cfg) = cluster.add_agent("clinic-7");
    let home = AgentHome::new(&format!("{}{FAST}", cfg.replace(&toml_value(&cfg, "base_url"), &a.base)));
    let _agent = home.run();
    a.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    assert_eq!(cluster.wait_holder(&id).await, 0, "the agent's socket is on node A");
    let agent_token = token(&a.http, &a.base, &toml_value(&cfg, "client_id"), &toml_value(&cfg, "client_secret")).await;
    for api in [&a, &b] {
        assert_eq!(status_with(api, reqwest::Method::GET, &format!("fhir/R4/Agent/{id}"), &agent_token).await, 200);
    }
    let token_refusals = refused(&a, "token").await + refused(&b, "token").await;

    let admin = b.token().await;
    let started = Instant::now();
    assert_eq!(status_with(&b, reqwest::Method::DELETE, &format!("fhir/R4/Agent/{id}"), &admin).await, 200);
    eventually(ONE_SECOND, "the agent's socket on node A closed", || async {
        (agents_on(&a.base).await == 0).then_some(())
    })
    .await;
    let closed_in = started.elapsed();
    for api in [&a, &b] {
        let path = format!("fhir/R4/Agent/{id}");
        assert_eq!(status_with(api, reqwest::Method::GET, &path, &agent_token).await, 401, "{}", api.base);
        assert_eq!(status_with(api, reqwest::Method::GET, &path, &admin).await, 410, "{}", api.base);
    }
    assert!(started.elapsed() < ONE_SECOND, "refused on both nodes {:?} after the removal", started.elapsed());
    // The agent tries again at once: its credentials are refused, and it stays out.
    eventually(LIMIT, "the removed agent's credentials refused", || async {
        (refused(&a, "token").await + refused(&b, "token").await > token_refusals).then_some(())
    })
    .await;
    assert_eq!((agents_on(&a.base).await, agents_on(&b.base).await), (0, 0), "it could not reconnect");
    assert_eq!(cluster.holder(&id).await, None);
    let (code, v) = b.get(&format!("fhir/R4/Agent/{id}")).await;
    assert_eq!(code, 410, "{v}");
    assert!(v["issue"][0]["details"]["text"].as_str().unwrap().contains("(clinic-7) was removed at"), "{v}");
    let (code, v) = a.get("fhir/R4/Agent?name=clinic-7").await;
    assert_eq!((code, v["total"].as_u64()), (200, Some(0)), "gone from searches: {v}");
    eprintln!("socket closed {closed_in:?} after the DELETE on the other node");

    // Bad input: removed again is 410, rotating it is 410, an unknown agent is 404.
    assert_eq!(status_with(&a, reqwest::Method::DELETE, &format!("fhir/R4/Agent/{id}"), &admin).await, 410);
    let rotate = format!("fhir/R4/Agent/{id}/$rotate-secret");
    assert_eq!(status_with(&a, reqwest::Method::POST, &rotate, &admin).await, 410);
    assert_eq!(status_with(&a, reqwest::Method::DELETE, "fhir/R4/Agent/no-such-agent", &admin).await, 404);
    let out =
        Command::new(server_bin()).args(["agent", "rotate-secret", &id, "--database", &cluster.db]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was removed at"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_client_secret_and_its_tokens_stop_on_both_nodes_within_a_second() {
    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (cluster.api(0), cluster.api(1));
    let text = admin_cli(&cluster, &["client", "add", "--admin", "--name", "Night desk"]);
    let (id, old) = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
    let listed = admin_cli(&cluster, &["client", "list"]);
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("Night desk")), "{listed}");
    // A token from each node, each used on both nodes (so that each node has it in its cache).
    let tokens = [token(&a.http, &a.base, &id, &old).await, token(&b.http, &b.base, &id, &old).await];
    for (api, t) in [&a, &b].into_iter().flat_map(|api| tokens.iter().map(move |t| (api, t))) {
        assert_eq!(status_with(api, reqwest::Method::GET, "fhir/R4/Agent", t).await, 200);
    }

    let rotated = admin_cli(&cluster, &["client", "rotate-secret", &id]);
    let started = Instant::now();
    let new = toml_value(&rotated, "client_secret");
    assert_ne!(new, old);
    eventually(ONE_SECOND, "the old tokens refused on both nodes", || async {
        for (api, t) in [&a, &b].into_iter().flat_map(|api| tokens.iter().map(move |t| (api, t))) {
            if status_with(api, reqwest::Method::GET, "fhir/R4/Agent", t).await != 401 {
                return None;
            }
        }
        Some(())
    })
    .await;
    eprintln!("old tokens refused on both nodes {:?} after the rotation", started.elapsed());
    for api in [&a, &b] {
        let form = [("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", &old)];
        let resp = api.http.post(api.url("oauth2/token")).form(&form).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "the old secret is refused on {}", api.base);
        let basic = api.http.get(api.url("fhir/R4/Agent")).basic_auth(&id, Some(&old)).send().await.unwrap();
        assert_eq!(basic.status().as_u16(), 401);
        let fresh = token(&api.http, &api.base, &id, &new).await;
        assert_eq!(status_with(api, reqwest::Method::GET, "fhir/R4/Agent", &fresh).await, 200, "the new one works");
    }

    // Removed: neither secret nor token works any more, anywhere.
    let fresh = token(&a.http, &a.base, &id, &new).await;
    assert!(admin_cli(&cluster, &["client", "remove", &id]).contains("Night desk"));
    eventually(ONE_SECOND, "the removed client's token refused on both nodes", || async {
        let on_a = status_with(&a, reqwest::Method::GET, "fhir/R4/Agent", &fresh).await;
        let on_b = status_with(&b, reqwest::Method::GET, "fhir/R4/Agent", &fresh).await;
        (on_a == 401 && on_b == 401).then_some(())
    })
    .await;
    let out = Command::new(server_bin()).args(["client", "show", &id, "--database", &cluster.db]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no client"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_token_is_revoked_as_rfc_7009_says() {
    let server = Server::start(&[]).await;
    let (id, secret) = server.admin();
    let (server, http) = (&server, &server.http);
    let (kept, ended) = (server.token_for(&id, &secret).await, server.token_for(&id, &secret).await);
    let revoke = |form: Vec<(&'static str, String)>, auth: Option<(String, String)>| async move {
        let mut req = http.post(server.url("oauth2/revoke")).form(&form);
        if let Some((i, s)) = auth {
            req = req.basic_auth(i, Some(s));
        }
        req.send().await.unwrap().status().as_u16()
    };
    let me = Some((id.clone(), secret.clone()));
    let get = |t: String| async move {
        http.get(server.url("fhir/R4/Agent")).bearer_auth(t).send().await.unwrap().status().as_u16()
    };
    assert_eq!(get(ended.clone()).await, 200);

    assert_eq!(
        revoke(vec![("token", ended.clone()), ("token_type_hint", "access_token".into())], me.clone()).await,
        200
    );
    assert_eq!(get(ended.clone()).await, 401, "the revoked token is refused at once");
    assert_eq!(get(kept.clone()).await, 200, "the other token still works");
    assert_eq!(revoke(vec![("token", ended.clone())], me.clone()).await, 200, "revoked twice: 200");
    assert_eq!(revoke(vec![("token", "no-such-token".into())], me.clone()).await, 200, "an unknown token: 200");
    assert_eq!(revoke(vec![("token", kept.clone())], None).await, 400, "no client credentials");
    assert_eq!(revoke(vec![("token", kept.clone())], Some((id.clone(), "wrong".into()))).await, 401);
    assert_eq!(revoke(vec![], me.clone()).await, 400, "no token");
    // Another client (an agent's credentials) cannot end the admin's token: 200, nothing revoked.
    let (_, cfg) = server.add_agent("lab-9");
    let agent = Some((toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret")));
    assert_eq!(revoke(vec![("token", kept.clone())], agent).await, 200);
    assert_eq!(get(kept).await, 200, "another client's revocation changed nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_switched_off_is_closed_and_refused_until_it_is_active_again() {
    let server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    let (id, cfg) = server.add_agent("lab-off");
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let agent = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, LIMIT).await;
    let base = server.url("");
    let socket_refusals = || async { refused_at(&server.http, &base, &server.admin_token().await, "socket").await };
    let before = socket_refusals().await;
    let (server, id) = (&server, id.as_str());
    let put = |status: &str| {
        let body = json!({"resourceType": "Agent", "id": id, "name": "lab-off renamed", "status": status,
            "identifier": [{"system": "urn:clinic", "value": "7"}]});
        async move {
            let t = server.admin_token().await;
            let resp =
                server.http.put(server.url(&format!("fhir/R4/Agent/{id}"))).bearer_auth(t).body(body.to_string());
            let resp = resp.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let started = Instant::now();
    let (code, v) = put("off").await;
    assert_eq!((code, v["status"].as_str(), v["name"].as_str()), (200, Some("off"), Some("lab-off renamed")), "{v}");
    eventually(ONE_SECOND, "the switched-off agent's socket closed", || async {
        (agents_on(&base).await == 0).then_some(())
    })
    .await;
    eprintln!("socket closed {:?} after the PUT", started.elapsed());
    let (_, read) = server.get(&format!("fhir/R4/Agent/{id}")).await;
    assert_eq!(read["identifier"][0]["value"], "7", "{read}");
    // Its connects are refused with a clear error.
    eventually(LIMIT, "the agent's connect refused", || async { (socket_refusals().await > before).then_some(()) })
        .await;
    assert_eq!(agents_on(&base).await, 0);
    assert!(agent.log().contains("switched off"), "the agent was told why:\n{}", agent.log());

    let (code, _) = put("active").await;
    assert_eq!(code, 200);
    server.wait_status(id, "connected", SOURCE_VERSION, LIMIT).await;
    let (code, v) = put("paused").await;
    assert_eq!(code, 400, "{v}");
    let (code, _) = server.get("fhir/R4/Agent/no-such-agent").await;
    assert_eq!(code, 404);
}

/// `(status, JSON body)` of an admin's `method` on `path` at `api`'s node, with `body`.
async fn admin_call(api: &Api, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let token = api.cached.get(&api.http, &api.base, &api.admin.0, &api.admin.1).await;
    let resp = api.http.request(method, api.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_are_listed_re_roled_rotated_and_removed_over_rest_and_every_node_follows_within_a_second() {
    let cluster = Cluster::start(2, &[]).await;
    let (a, b) = (cluster.api(0), cluster.api(1));
    let text = admin_cli(&cluster, &["client", "add", "--role", "viewer", "--name", "Night desk"]);
    let (id, old) = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
    let (agent_id, cfg) = cluster.add_agent("lab-3");
    let agent_client = toml_value(&cfg, "client_id");
    use reqwest::Method;

    // Listed and read as ClientApplication resources, with their role; never a secret.
    let (code, viewers) = a.get("fhir/R4/ClientApplication?role=viewer").await;
    assert_eq!(code, 200, "{viewers}");
    assert_eq!(viewers["total"], 1, "{viewers}");
    let resource = &viewers["entry"][0]["resource"];
    assert_eq!((resource["id"].as_str(), resource["name"].as_str()), (Some(id.as_str()), Some("Night desk")));
    assert_eq!(resource["extension"][0], json!({"url": "urn:edge-agent:role", "valueCode": "viewer"}));
    assert!(!viewers.to_string().contains(&old), "no secret in a listing");
    let (code, agents) = a.get("fhir/R4/ClientApplication?role=agent").await;
    assert_eq!((code, agents["total"].as_u64()), (200, Some(1)), "{agents}");
    let agent_ref =
        json!({"url": "urn:edge-agent:agent", "valueReference": {"reference": format!("Agent/{agent_id}")}});
    assert_eq!(agents["entry"][0]["resource"]["extension"][1], agent_ref);
    let (code, all) = a.get("fhir/R4/ClientApplication?_count=1").await;
    assert_eq!((code, all["total"].as_u64(), all["entry"].as_array().map(Vec::len)), (200, Some(3), Some(1)), "{all}");
    assert!(all["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"), "{all}");
    for (path, why) in [
        ("fhir/R4/ClientApplication?name=x", "Unknown search parameter: name"),
        ("fhir/R4/ClientApplication?role=root", "expected viewer, operator or admin"),
        ("fhir/R4/ClientApplication?_count=5000", "greater than max of 1000"),
    ] {
        let (code, v) = a.get(path).await;
        assert_eq!(code, 400, "{path}: {v}");
        assert!(v.to_string().contains(why), "{path}: {v}");
    }

    // A new role: the viewer's own token may upgrade on both nodes within a second.
    let viewer_token = token(&b.http, &b.base, &id, &old).await;
    assert_eq!(status_with(&b, Method::POST, "fhir/R4/Agent/$upgrade?_id=none", &viewer_token).await, 403);
    let set_role = format!("fhir/R4/ClientApplication/{id}/$set-role");
    let (code, v) = admin_call(&a, Method::POST, &set_role, json!({"role": "root"})).await;
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("unknown role \\\"root\\\": expected viewer, operator or admin"), "{v}");
    let (code, v) = admin_call(
        &a,
        Method::POST,
        &set_role,
        json!({"resourceType": "Parameters",
        "parameter": [{"name": "role", "valueCode": "operator"}]}),
    )
    .await;
    assert_eq!((code, &v["extension"][0]["valueCode"]), (200, &json!("operator")), "{v}");
    let started = Instant::now();
    eventually(ONE_SECOND, "the new role on node B", || async {
        (status_with(&b, Method::POST, "fhir/R4/Agent/$upgrade?_id=none", &viewer_token).await != 403).then_some(())
    })
    .await;
    eprintln!("the new role applied on node B {:?} after the call on node A", started.elapsed());
    let path = format!("fhir/R4/ClientApplication/{agent_client}/$set-role");
    let (code, v) = admin_call(&a, Method::POST, &path, json!({"role": "admin"})).await;
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("its role is fixed"), "{v}");

    // A new secret: the old one and its tokens stop on both nodes within a second.
    let path = format!("fhir/R4/ClientApplication/{id}/$rotate-secret");
    let (code, v) = admin_call(&a, Method::POST, &path, json!({})).await;
    assert_eq!(code, 200, "{v}");
    let new = v["parameter"][1]["valueString"].as_str().unwrap().to_string();
    assert_eq!(v["parameter"][0]["valueString"], id.as_str());
    assert_ne!(new, old);
    eventually(ONE_SECOND, "the old token refused on node B", || async {
        (status_with(&b, Method::GET, "fhir/R4/Agent", &viewer_token).await == 401).then_some(())
    })
    .await;
    let form = [("grant_type", "client_credentials"), ("client_id", id.as_str()), ("client_secret", old.as_str())];
    let refused = b.http.post(b.url("oauth2/token")).form(&form).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 400, "the old secret is refused");
    let fresh = token(&b.http, &b.base, &id, &new).await;
    assert_eq!(status_with(&b, Method::GET, "fhir/R4/Agent", &fresh).await, 200, "the new secret works");

    // Removed: its token stops on both nodes, and it is gone.
    let path = format!("fhir/R4/ClientApplication/{id}");
    assert_eq!(admin_call(&a, Method::DELETE, &path, Value::Null).await.0, 200);
    eventually(ONE_SECOND, "the removed client's token refused on node B", || async {
        (status_with(&b, Method::GET, "fhir/R4/Agent", &fresh).await == 401).then_some(())
    })
    .await;
    assert_eq!(a.get(&path).await.0, 404);
    assert_eq!(admin_call(&a, Method::DELETE, &path, Value::Null).await.0, 404, "removing an unknown client");

    // Each change left one event (after the command line's create), naming the client, with no
    // secret in it.
    let (code, trail) = a.get(&format!("fhir/R4/AuditEvent?entity=ClientApplication/{id}&_sort=date")).await;
    assert_eq!(code, 200, "{trail}");
    let subtypes: Vec<&str> = trail["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["outcome"] == "0")
        .map(|e| e["resource"]["subtype"][0]["code"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(subtypes, ["client-create", "client-role", "client-rotate", "client-remove"], "{trail}");
    assert!(!trail.to_string().contains(&new) && !trail.to_string().contains(&old), "no secret in the trail");
}

/// Found by an attacker's probe: an agent's socket opened with an admin client's token (as
/// Medplum's agent may) stayed open, speaking as the agent, after that admin was removed, its
/// secret replaced or its role taken, and nothing in the audit trail said it was ever opened. A
/// socket now closes when the client or the token it was opened with is revoked, whoever's they
/// were, and an admin's socket speaking as an agent is audited.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_opened_with_an_admins_token_closes_when_that_admin_or_token_is_revoked() {
    use crate::hostile_agent::{closed_with, connected};
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("impersonated");
    let new_admin = || {
        let out = Command::new(server_bin()).args(["client", "add", "--admin", "--data"]).arg(server.data()).output();
        let text = String::from_utf8(out.unwrap().stdout).unwrap();
        (toml_value(&text, "client_id"), toml_value(&text, "client_secret"))
    };
    let admin_token = server.admin_token().await;
    let call = |method: reqwest::Method, path: String| {
        server.http.request(method, server.url(&path)).bearer_auth(&admin_token).send()
    };
    // Each way of taking an admin's credentials back closes the socket its token opened.
    let rotate = |c: &str| (reqwest::Method::POST, format!("fhir/R4/ClientApplication/{c}/$rotate-secret"));
    let remove = |c: &str| (reqwest::Method::DELETE, format!("fhir/R4/ClientApplication/{c}"));
    let demote = |c: &str| (reqwest::Method::POST, format!("fhir/R4/ClientApplication/{c}/$set-role?role=viewer"));
    for (how, take_back, why) in [
        ("rotated", &rotate as &dyn Fn(&str) -> (reqwest::Method, String), "Client secret replaced"),
        ("removed", &remove, "Client removed"),
        ("demoted", &demote, "Role changed"),
    ] {
        let (admin, secret) = new_admin();
        let token = server.token_for(&admin, &secret).await;
        let mut ws = connected(&server, &token, &id).await;
        let (method, path) = take_back(&admin);
        assert_eq!(call(method, path).await.unwrap().status().as_u16(), 200, "{how}");
        let closed = closed_with(&mut ws, Duration::from_secs(5)).await;
        assert!(closed.as_deref().is_some_and(|w| w.contains(why)), "{how}: {closed:?}");
    }
    // One token revoked (RFC 7009) closes what it opened, an admin's or the agent's own; the
    // same client's other tokens keep theirs.
    let (admin, secret) = new_admin();
    let (kept, revoked) = (server.token_for(&admin, &secret).await, server.token_for(&admin, &secret).await);
    let mut kept_ws = connected(&server, &kept, &id).await;
    let mut revoked_ws = connected(&server, &revoked, &id).await;
    let form = [("token", revoked.as_str()), ("client_id", &admin), ("client_secret", &secret)];
    let resp = server.http.post(server.url("oauth2/revoke")).form(&form).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        closed_with(&mut revoked_ws, Duration::from_secs(5)).await.is_some(),
        "the revoked token's socket stayed open"
    );
    assert_eq!(closed_with(&mut kept_ws, ONE_SECOND).await, None, "the other token's socket was closed");
    let (agent_client, agent_secret) = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));
    let own = server.token_for(&agent_client, &agent_secret).await;
    let mut own_ws = connected(&server, &own, &id).await;
    let form = [("token", own.as_str()), ("client_id", &agent_client), ("client_secret", &agent_secret)];
    assert_eq!(server.http.post(server.url("oauth2/revoke")).form(&form).send().await.unwrap().status().as_u16(), 200);
    assert!(
        closed_with(&mut own_ws, Duration::from_secs(5)).await.is_some(),
        "the agent's revoked token's socket stayed open"
    );

    // Each admin that spoke as the agent is in the audit trail, once (the agent's own credentials
    // are not: its connections are its normal work).
    let (_, events) =
        server.get(&format!("fhir/R4/AuditEvent?entity=Agent/{id}&subtype=agent-socket&_count=100")).await;
    let entries = events["entry"].as_array().cloned().unwrap_or_default();
    let by: Vec<&str> = entries.iter().filter_map(|e| e["resource"]["agent"][0]["who"]["reference"].as_str()).collect();
    assert_eq!(by.len(), 4, "{events}");
    assert!(by.contains(&format!("ClientApplication/{admin}").as_str()), "{by:?}");
    assert!(!by.contains(&format!("ClientApplication/{agent_client}").as_str()), "{by:?}");
}

/// The audit events of admins' sockets are written in batches every 100 ms: a node asked to stop
/// just after such a socket opened writes its event before it exits (the batch being written is
/// awaited, and what the closing sockets pushed after it is written then).
#[tokio::test(flavor = "multi_thread")]
async fn an_admins_socket_opened_just_before_the_node_stops_is_still_audited() {
    use crate::hostile_agent::connected;
    let mut server = Server::start(&[]).await;
    let (id, _) = server.add_agent("audited-at-shutdown");
    let token = server.admin_token().await;
    let ws = connected(&server, &token, &id).await;
    edge_agent_e2e::signal(server.proc.child.id() as i32, "TERM");
    // Gone as an agent is that stops too: the node's drain does not wait for it.
    drop(ws);
    let exited = eventually(LIMIT, "the server exiting on SIGTERM", || {
        std::future::ready(server.proc.child.try_wait().unwrap())
    })
    .await;
    assert!(exited.success(), "{exited:?}");
    server.start_again();
    let (code, events) =
        server.get(&format!("fhir/R4/AuditEvent?entity=Agent/{id}&subtype=agent-socket&_count=10")).await;
    assert_eq!(code, 200, "{events}");
    assert_eq!(events["entry"].as_array().map_or(0, Vec::len), 1, "{events}");
}

/// Found by a review: setting a client the role it already has revoked it all the same, which
/// closed every socket an admin's token had opened as an agent. Now it changes nothing; a real
/// change still closes them.
#[tokio::test(flavor = "multi_thread")]
async fn setting_a_client_the_role_it_has_closes_nothing() {
    use crate::hostile_agent::{closed_with, connected};
    let server = Server::start(&[]).await;
    let (id, _) = server.add_agent("kept-open");
    let out = Command::new(server_bin()).args(["client", "add", "--admin", "--data"]).arg(server.data()).output();
    let text = String::from_utf8(out.unwrap().stdout).unwrap();
    let (admin, secret) = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));
    let mut ws = connected(&server, &server.token_for(&admin, &secret).await, &id).await;
    let set_role = |role: &str| format!("fhir/R4/ClientApplication/{admin}/$set-role?role={role}");
    let (code, v) = server.post(&set_role("admin"), Value::Null).await;
    assert_eq!((code, &v["extension"][0]["valueCode"]), (200, &json!("admin")), "{v}");
    assert_eq!(closed_with(&mut ws, ONE_SECOND).await, None, "the same role closed the admin's socket");
    let (code, v) = server.post(&set_role("operator"), Value::Null).await;
    assert_eq!(code, 200, "{v}");
    assert!(closed_with(&mut ws, Duration::from_secs(5)).await.is_some(), "a lower role left the socket open");
}
