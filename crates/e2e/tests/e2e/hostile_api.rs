//! The server's input and credential limits under attack, against its release build: empty
//! search values (no agent asked), offsets past any fleet, token and sign-in floods, a megabyte
//! version from an agent, and a forged forwarded host. As in `hostile.rs`, each checks that
//! `/healthcheck` kept answering and resident memory stayed bounded.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::attack::{hits, sample, source, Watch};
use edge_agent_e2e::{sim, toml_value, Server};

use super::hostile::{metrics, WATCHER};

pub fn text_of(outcome: &Value) -> String {
    outcome["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string()
}

/// A client whose connections come from `from`.
fn client_from(from: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(from)).build().unwrap()
}

/// Signs in to the page as the admin: (cookie, CSRF token).
pub async fn sign_in(server: &Server) -> (String, String) {
    let (id, secret) = server.admin();
    let login = server.http.post(server.url("ui/api/login")).json(&json!({"client_id": id, "client_secret": secret}));
    let resp = login.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = resp.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string();
    (cookie, csrf)
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_search_values_are_refused_by_name_and_no_agent_is_asked() {
    let server = Server::start_release(&[]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let rec = sim::recorder(&server, "clinic", "1.0.0").await;
    server.wait_status(&rec.agent.id, "connected", "1.0.0", Duration::from_secs(10)).await;
    let cases = [
        ("name=", "'name'"),
        ("name:contains=", "'name:contains'"),
        ("name:exact=%20", "'name:exact'"),
        ("status:not=", "'status:not'"),
        ("identifier=", "'identifier'"),
        ("identifier=urn:site%7C", "'identifier'"),
        ("_id=", "'_id'"),
        ("status=active,", "'status'"),
        ("_sort=", "'_sort'"),
    ];
    let version = json!({"resourceType": "Parameters", "parameter": [{"name": "version", "valueString": "9.9.9"}]});
    for (query, named) in cases {
        for path in [
            format!("fhir/R4/Agent/$upgrade?{query}&version=9.9.9"),
            format!("fhir/R4/Agent/$reload-config?{query}"),
            format!("fhir/R4/Agent/$bulk-status?{query}"),
            format!("fhir/R4/Agent?{query}"),
        ] {
            let (code, v) = server.get(&path).await;
            assert_eq!(code, 400, "{path}: {v}");
            assert!(text_of(&v).contains(named), "{path}: {v}");
        }
        let (code, v) = server.post(&format!("fhir/R4/Agent/$upgrade?{query}"), version.clone()).await;
        assert_eq!(code, 400, "POST {query}: {v}");
    }
    assert!(rec.received.lock().unwrap().is_empty(), "an agent was asked: {:?}", rec.received.lock().unwrap());
    assert!(!server.proc.log().contains("ERROR"), "bad input is no server error:\n{}", server.proc.log());
    // The same search, written right, does reach the agent: the recorder hears what it is asked.
    let (code, v) = server.get("fhir/R4/Agent/$upgrade?name=clinic&version=9.9.9&timeout=500").await;
    assert_eq!(code, 200, "{v}");
    let asked: Vec<Value> = rec.received.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["type"], "agent:upgrade:request");
    watch.finish().await.assert_healthy(30);
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_past_any_fleet_are_400_not_503() {
    let server = Server::start_release(&[]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let _fleet = sim::fleet(&server, "lab", &["1.0.0"], 3, false).await;
    for offset in ["9223372036854775808", "18446744073709551615", "1000001"] {
        for path in [format!("fhir/R4/Agent?_offset={offset}"), format!("fhir/R4/Agent/$bulk-status?_offset={offset}")]
        {
            let (code, v) = server.get(&path).await;
            assert_eq!(code, 400, "{path}: {v}");
            assert!(text_of(&v).contains("_offset"), "{v}");
        }
    }
    let (code, v) = server.get("fhir/R4/Agent?_offset=1000000&_count=5").await;
    assert_eq!((code, v["entry"].as_array().map(Vec::len)), (200, Some(0)), "far, but allowed: an empty page");
    let (cookie, _) = sign_in(&server).await;
    for page in ["5001", "18446744073709551615"] {
        let url = server.url(&format!("ui/api/agents?page={page}&size=200"));
        let resp = server.http.get(url).header("cookie", &cookie).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 400, "page {page}: {body}");
    }
    assert!(!server.proc.log().contains("ERROR"), "{}", server.proc.log());
    watch.finish().await.assert_healthy(30);
}

/// `POST /oauth2/token` from `http`: (status, Retry-After, JSON body).
async fn token_request(http: &reqwest::Client, server: &Server, id: &str, secret: &str) -> (u16, Option<u64>, Value) {
    let form = [("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)];
    let resp = http.post(server.url("oauth2/token")).form(&form).send().await.unwrap();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    (resp.status().as_u16(), retry, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_sign_in_floods_get_429_with_retry_after() {
    let server = Server::start_release(&["--max-tokens-per-client", "10"]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let (agent_id, cfg) = server.add_agent("flood");
    let (cid, secret) = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));

    // One client's credentials: 60 tokens a minute, then 429.
    let mine = client_from(source(1));
    let mut issued = Vec::new();
    let mut refused = None;
    for _ in 0..70 {
        match token_request(&mine, &server, &cid, &secret).await {
            (200, _, v) => issued.push(v["access_token"].as_str().unwrap().to_string()),
            (429, retry, v) => {
                refused = Some((retry, v));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(issued.len(), 60);
    let (retry, v) = refused.expect("the 61st token is refused");
    assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
    assert_eq!(v["error"], "temporarily_unavailable");
    assert!(v["error_description"].as_str().unwrap().contains("Too many tokens issued to this client"), "{v}");
    // Only the newest ten stand: the oldest were revoked as new ones were issued.
    let read = |token: String| {
        let req = server.http.get(server.url(&format!("fhir/R4/Agent/{agent_id}"))).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(read(issued[0].clone()).await, 401, "the oldest token was revoked");
    assert_eq!(read(issued[59].clone()).await, 200);

    // Wrong sign-ins from one address: each logged, then 429.
    let crowd = client_from(source(2));
    let (admin_id, admin_secret) = server.admin();
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..330 {
        let creds = json!({"client_id": admin_id, "client_secret": format!("guess-{i}")});
        let resp = crowd.post(server.url("ui/api/login")).json(&creds).send().await.unwrap();
        statuses.push((resp.status().as_u16(), resp.headers().contains_key("retry-after")));
    }
    // 300 at once, then 5 a second (300 a minute) as the bucket fills again.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    let wrong = statuses.iter().filter(|(s, _)| *s == 401).count();
    assert!(statuses[..300].iter().all(|s| s.0 == 401), "{statuses:?}");
    assert!((300..=300 + refilled).contains(&wrong), "{wrong} wrong sign-ins answered: {statuses:?}");
    assert!(statuses[300..].iter().all(|s| *s == (429, true) || s.0 == 401), "{:?}", &statuses[300..]);
    assert!(statuses.contains(&(429, true)));
    let log = server.proc.log();
    let crowd_ip = source(2).to_string();
    let logged = log.lines().filter(|l| l.contains("authentication failed") && l.contains(&crowd_ip)).count();
    assert_eq!(logged, wrong, "each refused sign-in is logged with the address");
    assert!(log.contains(&admin_id), "the client id is logged");
    assert!(!log.contains("guess-"), "no secret reaches the log");

    // Token requests with made-up client ids from one address: 429 after 300.
    let guesser = client_from(source(3));
    let mut answered = Vec::new();
    for i in 0..330 {
        answered.push(token_request(&guesser, &server, &format!("made-up-{i}"), "x").await.0);
    }
    assert!(answered[..300].iter().all(|s| *s == 400) && answered.contains(&429), "{answered:?}");
    // The admin, from its own address, is not locked out.
    assert_eq!(token_request(&server.http, &server, &admin_id, &admin_secret).await.0, 200);

    let text = metrics(&server).await;
    assert_eq!(sample(&text, "agent_server_failed_authentications_total{endpoint=\"sign_in\"}"), wrong as f64);
    let (ip, client) = (hits(&text, "auth_rate_per_ip"), hits(&text, "issue_rate_per_client"));
    assert!(ip >= 2.0 && client >= 1.0, "auth_rate_per_ip {ip}, issue_rate_per_client {client}");
    assert!(hits(&text, "tokens_per_client") >= 50.0, "{text}");
    watch.finish().await.assert_healthy(30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_version_is_kept_as_invalid_and_never_echoed() {
    let server = Server::start_release(&[]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let big = format!("1.0.0-{}", "a".repeat(1_000_000));
    let agents = sim::fleet(&server, "big", &[&big], 1, true).await;
    server.wait_status(&agents[0].id, "connected", "invalid", Duration::from_secs(10)).await;
    let (_, bulk) = server.get("fhir/R4/Agent/$bulk-status").await;
    assert!(bulk.to_string().contains("\"invalid\"") && bulk.to_string().len() < 10_000, "{bulk}");
    let text = metrics(&server).await;
    assert_eq!(sample(&text, "agent_server_agents_by_version{version=\"invalid\"}"), 1.0, "{text}");
    assert!(text.len() < 64 * 1024 && !text.contains("aaaaaaaaaaaaaaaa"), "{} bytes of /metrics", text.len());
    let (cookie, _) = sign_in(&server).await;
    let resp = server.http.get(server.url("ui/api/agents")).header("cookie", &cookie).send().await.unwrap();
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["rows"][0]["version"], "invalid", "{page}");
    assert!(!server.proc.log().contains("aaaaaaaaaaaaaaaa"), "the version is not logged either");
    watch.finish().await.assert_healthy(30);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_forwarded_host_is_refused_and_never_echoed() {
    let server = Server::start_release(&[]).await;
    let watch = Watch::start(server.addr, server.proc.pid(), WATCHER);
    let (cookie, csrf) = sign_in(&server).await;
    let forged = server
        .http
        .post(server.url("ui/api/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "host=evil.example;proto=https");
    let resp = forged.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.text().await.unwrap().contains("Cross-site request refused"));
    let session = server.http.get(server.url("ui/api/session")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(session.status().as_u16(), 200, "the session was not ended");

    let token = server.admin_token().await;
    let search = server.http.get(server.url("fhir/R4/Agent")).bearer_auth(&token);
    let resp =
        search.header("x-forwarded-host", "evil.example").header("x-forwarded-proto", "https").send().await.unwrap();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let bundle: Value = resp.json().await.unwrap();
    let own = format!("http://{}/fhir/R4/Agent?", server.addr);
    assert!(bundle["link"][0]["url"].as_str().unwrap().starts_with(&own), "{bundle}");
    assert!(!bundle.to_string().contains("evil.example"));
    watch.finish().await.assert_healthy(30);

    // Behind a trusted proxy, the same headers are what the client sees.
    let proxied = Server::start_release(&["--trusted-proxy", "127.0.0.1/32"]).await;
    let token = proxied.admin_token().await;
    let search = proxied.http.get(proxied.url("fhir/R4/Agent")).bearer_auth(&token);
    let resp = search.header("x-forwarded-host", "agents.example.org").header("x-forwarded-proto", "https");
    let bundle: Value = resp.send().await.unwrap().json().await.unwrap();
    assert!(bundle["link"][0]["url"].as_str().unwrap().starts_with("https://agents.example.org/fhir/R4/Agent?"));
}

/// `method path` with the admin token and `body` sent as written: (status, JSON answer).
pub async fn send_text(server: &Server, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
    let token = server.admin_token().await;
    let req = server.http.request(method, server.url(path)).bearer_auth(token);
    let resp = req.header("content-type", "application/fhir+json").body(body.to_string()).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_given_twice_or_is_no_utf8_is_refused_and_changes_nothing() {
    let server = Server::start_release(&[]).await;
    let rec = sim::recorder(&server, "clinic", "1.0.0").await;
    server.wait_status(&rec.agent.id, "connected", "1.0.0", Duration::from_secs(10)).await;
    let id = rec.agent.id.clone();
    let post = reqwest::Method::POST;
    // An operation's parameter twice: in the query, in a Parameters body, or in both.
    let version = |v: &str| json!({"name": "version", "valueString": v});
    let cases = [
        (
            format!("fhir/R4/Agent/{id}/$upgrade?version=1.0.1&version=1.0.2"),
            String::new(),
            "Parameter 'version' is given twice: give it once",
        ),
        (
            "fhir/R4/Agent/$upgrade?name=clinic&version=1.0.1&version=1.0.2".to_string(),
            String::new(),
            "Parameter 'version' is given twice: give it once",
        ),
        (
            format!("fhir/R4/Agent/{id}/$upgrade?version=1.0.1"),
            json!({"resourceType": "Parameters", "parameter": [version("1.0.2")]}).to_string(),
            "Parameter 'version' is given in the query string and in the body: give it once",
        ),
        (
            format!("fhir/R4/Agent/{id}/$upgrade"),
            json!({"resourceType": "Parameters", "parameter": [version("1.0.1"), version("1.0.2")]}).to_string(),
            "Parameter 'version' is given twice: give it once",
        ),
        (
            format!("fhir/R4/Agent/{id}/$upgrade"),
            r#"{"version": "1.0.1", "version": "1.0.2"}"#.to_string(),
            "Invalid JSON: the key \"version\" is given twice at line 1 column 30",
        ),
        (
            "fhir/R4/Agent/$reload-config?name=clinic&timeout=1000&timeout=2000".to_string(),
            String::new(),
            "Parameter 'timeout' is given twice: give it once",
        ),
    ];
    for (path, body, said) in &cases {
        let (code, v) = send_text(&server, post.clone(), path, body).await;
        assert_eq!((code, text_of(&v).as_str()), (400, *said), "{path} {body}");
    }
    // HEAD is GET without its body: where GET asks an agent something, a HEAD asks nothing (found
    // by an attacker's probe: a HEAD on `$upgrade` upgraded the agent).
    let token = server.admin_token().await;
    for path in [format!("fhir/R4/Agent/{id}/$upgrade?version=1.0.1"), "fhir/R4/Agent/$upgrade?version=1.0.1".into()] {
        let resp = server.http.head(server.url(&path)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{path}");
        assert_eq!(resp.headers()["allow"], "GET, POST", "{path}");
    }
    let resp = server.http.head(server.url(&format!("fhir/R4/Agent/{id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "a HEAD where GET only reads");
    assert!(rec.received.lock().unwrap().is_empty(), "an agent was asked: {:?}", rec.received.lock().unwrap());
    // A resource with a key twice: nothing is created or changed.
    let (code, v) =
        send_text(&server, post, "fhir/R4/Agent", r#"{"resourceType": "Agent", "name": "a", "name": "b"}"#).await;
    assert_eq!(
        (code, text_of(&v).as_str()),
        (400, "Invalid JSON: the key \"name\" is given twice at line 1 column 45")
    );
    let (_, found) = server.get("fhir/R4/Agent?name=a,b").await;
    assert_eq!(found["total"], 0, "{found}");
    let put =
        format!(r#"{{"resourceType": "Agent", "id": "{id}", "name": "clinic", "status": "active", "status": "off"}}"#);
    let (code, v) = send_text(&server, reqwest::Method::PUT, &format!("fhir/R4/Agent/{id}"), &put).await;
    assert_eq!(code, 400, "{v}");
    assert!(text_of(&v).starts_with("Invalid JSON: the key \"status\" is given twice"), "{v}");
    let (_, agent) = server.get(&format!("fhir/R4/Agent/{id}")).await;
    assert_eq!(agent["status"], "active", "{agent}");
    // A policy with two targets: refused, no policy set.
    let policy = json!({"resourceType": "Parameters", "parameter": [
        {"name": "target", "valueString": "1.0.1"}, {"name": "target", "valueString": "9.0.0"}]});
    let (code, v) = send_text(&server, reqwest::Method::PUT, "fhir/R4/Policy", &policy.to_string()).await;
    assert_eq!((code, text_of(&v).as_str()), (400, "parameter[1]: target given twice: give it once"));
    let (code, _) = server.get("fhir/R4/Policy").await;
    assert_eq!(code, 404, "no policy was set");
    // A token request with a field twice, as OAuth requires: invalid_request, no token.
    let (cid, secret) = server.admin();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", cid.as_str()),
        ("client_id", "other"),
        ("client_secret", secret.as_str()),
    ];
    let resp = server.http.post(server.url("oauth2/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"error": "invalid_request", "error_description": "The field client_id is given twice: give it once"})
    );
    // A client's role given twice: refused, the role unchanged.
    let path = format!("fhir/R4/ClientApplication/{cid}/$set-role?role=viewer&role=admin");
    let (code, v) = send_text(&server, reqwest::Method::POST, &path, "").await;
    assert_eq!((code, text_of(&v).as_str()), (400, "Parameter 'role' is given twice: give it once"));
    assert_eq!(server.get("fhir/R4/Agent?_count=1").await.0, 200, "still an admin");
    // A query that is not UTF-8 is refused, not searched as U+FFFD.
    let (code, v) = server.get("fhir/R4/Agent?name=%ff").await;
    assert_eq!(code, 400, "{v}");
    assert!(text_of(&v).starts_with("The query string is not UTF-8"), "{v}");
    let (code, v) = server.get("fhir/R4/Agent?name=%C3%A9cole").await;
    assert_eq!((code, v["total"].clone()), (200, json!(0)), "{v}");
    assert!(!server.proc.log().contains("ERROR"), "{}", server.proc.log());
}
