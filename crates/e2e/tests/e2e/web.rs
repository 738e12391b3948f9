//! The web page in a real headless Chromium against a real server: sign in, find an agent,
//! upgrade it to the next real build and watch the result arrive live, sign out; wrong secrets,
//! agent credentials, expired sessions and cross-site requests; a fleet overview of hundreds.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::browser::{foreign_page, Browser};
use edge_agent_e2e::rig::rig;
use edge_agent_e2e::{agent_bin, next_version, sim, Server};

const LIMIT: Duration = Duration::from_secs(30);

/// Opens the page and signs in with `id` and `secret`; does not wait for the outcome.
async fn try_sign_in(b: &Browser, server: &Server, id: &str, secret: &str) {
    b.goto(&server.url("/")).await;
    b.wait_shown("#signin").await;
    b.type_into("#client-id", id).await;
    b.type_into("#client-secret", secret).await;
    b.click("#signin-btn").await;
}

pub(crate) async fn sign_in(b: &Browser, server: &Server) {
    let (id, secret) = server.admin();
    try_sign_in(b, server, &id, &secret).await;
    b.wait_shown("#overview").await;
}

/// The session cookie the browser holds (HttpOnly: the page's script cannot read it).
async fn session_cookie(b: &Browser) -> Value {
    b.cookies().await.into_iter().find(|c| c["name"] == "edge_session").expect("a session cookie")
}

#[tokio::test(flavor = "multi_thread")]
async fn page_signs_in_upgrades_an_agent_live_and_signs_out() {
    let rig = rig().await;
    let next = next_version();
    let (id, _home, _agent) = rig.agent("web-clinic-7", Path::new(agent_bin()), "").await;
    let b = Browser::start().await;
    sign_in(&b, &rig.server).await;
    let cookie = session_cookie(&b).await;
    assert_eq!((cookie["httpOnly"].as_bool(), cookie["sameSite"].as_str()), (Some(true), Some("Strict")));

    b.click("#nav-agents").await;
    b.type_into("#q", "clinic-7").await;
    b.click("#filters button[type=submit]").await;
    b.wait_text("#page-info", "1–1 of 1", LIMIT).await;
    let row = format!("#agents-table tr[data-id=\"{id}\"]");
    b.wait_text(&format!("{row} .version"), edge_agent_base::build_info::SOURCE_VERSION, LIMIT).await;
    // A marker that a reload would wipe out.
    b.exec("window.notReloaded = true;", json!([])).await;
    b.click(&format!("{row} input[type=checkbox]")).await;
    b.type_into("#upgrade-version", &next).await;
    b.click("#upgrade-btn").await;
    b.wait_text(&format!("#results li[data-id=\"{id}\"]"), "All OK", Duration::from_secs(60)).await;
    b.wait_text(&format!("{row} .version"), &next, LIMIT).await;
    b.wait_text(&format!("{row} .last"), "succeeded", LIMIT).await;
    assert_eq!(b.exec("return window.notReloaded === true;", json!([])).await, json!(true), "no reload");
    b.screenshot("agents-upgraded").await;
    assert_eq!(rig.server.status(&id).await, ("connected".to_string(), next.clone()));

    // The agent: its history as recorded, and logs and stats fetched from it on demand.
    b.click(&format!("{row} a")).await;
    b.wait_text("#history tbody", "All OK", LIMIT).await;
    let history = b.text("#history tbody").await.unwrap();
    assert!(history.contains(edge_agent_base::build_info::SOURCE_VERSION) && history.contains(&next), "{history}");
    b.wait_text("#agent-version", &next, LIMIT).await;
    b.click("#fetch-stats").await;
    b.wait_text("#agent-output", "{", LIMIT).await;
    b.click("#fetch-logs").await;
    b.wait_text("#agent-output", "INFO", LIMIT).await;
    b.screenshot("agent-detail").await;

    // An answer's status, read before a status change told just before it (the agent's new
    // version), does not undo that change on the page, even in the same millisecond.
    let script = "onStatus({id: arguments[0], state: 'connected', version: '9.9.9', since: arguments[1]}); \
        onResult({result: {agentId: arguments[0], outcome: 'succeeded', text: 'All OK'}, state: 'connected', \
        version: '0.0.1', since: arguments[1]}); \
        return document.querySelector(`#agents-table tr[data-id=\"${arguments[0]}\"] .version`).textContent;";
    assert_eq!(b.exec(script, json!([id, "2999-01-01T00:00:00.000Z"])).await, json!("9.9.9"));

    b.click("#signout").await;
    b.wait_shown("#signin").await;
    // The session is gone on the server: the old cookie opens nothing any more.
    let value = cookie["value"].as_str().unwrap();
    let resp = rig
        .server
        .http
        .get(rig.server.url("ui/api/overview"))
        .header("cookie", format!("edge_session={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secret_and_agent_credentials_get_a_clear_message() {
    let server = Server::start(&[]).await;
    let (_, config) = server.add_agent("web-agent-creds");
    let field = |k: &str| config.lines().find(|l| l.starts_with(k)).unwrap().split('"').nth(1).unwrap().to_string();
    let b = Browser::start().await;
    let (admin_id, _) = server.admin();
    try_sign_in(&b, &server, &admin_id, "not-the-secret").await;
    b.wait_text("#signin-error", "Wrong client id or secret", LIMIT).await;
    b.screenshot("signin-wrong-secret").await;
    try_sign_in(&b, &server, &field("client_id"), &field("client_secret")).await;
    b.wait_text("#signin-error", "agents cannot sign in", LIMIT).await;
    assert!(!b.exec("return document.querySelector('#signin').hidden;", json!([])).await.as_bool().unwrap());
    assert!(session_cookie_absent(&b).await, "no session for refused credentials");
}

async fn session_cookie_absent(b: &Browser) -> bool {
    b.cookies().await.iter().all(|c| c["name"] != "edge_session")
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_session_returns_to_sign_in() {
    let server = Server::start(&["--session-ttl", "2"]).await;
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.click("#nav-agents").await;
    b.wait_shown("#agents").await;
    // Nothing is clicked: the server ends the stream when the session expires.
    b.wait_shown("#signin").await;
    b.wait_text("#signin-error", "expired", LIMIT).await;
    b.screenshot("session-expired").await;
    // The cookie the browser still holds opens nothing, and says why.
    let value = session_cookie(&b).await["value"].as_str().unwrap().to_string();
    let resp = server.http.get(server.url("ui/api/agents")).header("cookie", format!("edge_session={value}"));
    let resp = resp.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.text().await.unwrap().contains("expired"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_post_is_refused() {
    let server = Server::start(&[]).await;
    let agents = sim::fleet(&server, "xsite", &["1.0.0"], 1, true).await;
    let b = Browser::start().await;
    sign_in(&b, &server).await;

    // A page on another site posts a form at the server, with the signed-in browser.
    let body = format!(r#"{{"ids":["{}"],"version":"2.0.0"}}"#, agents[0].id);
    // text/plain form encoding sends `name=value`: together, valid JSON of an upgrade request.
    let name = format!(r#"{{"ids":["{}"],"version":"2.0.0","x":""#, agents[0].id);
    let html = format!(
        r#"<form id="f" method="post" enctype="text/plain" action="{}"><input name='{name}' value='"}}'></form>
        <script>document.getElementById("f").submit();</script>"#,
        server.url("ui/api/upgrade"),
    );
    let evil = foreign_page(html).await;
    b.goto(&format!("http://localhost:{}/", evil.port())).await;
    // The browser sends no cookie (SameSite=Strict) and a foreign Origin, which the server refuses.
    b.wait_text("body", "Cross-site request refused", LIMIT).await;
    let (_, v) = server.get(&format!("fhir/R4/Agent/{}/$status", agents[0].id)).await;
    assert!(v.to_string().contains("1.0.0"), "the agent was not upgraded: {v}");

    // The same with the session cookie in hand: a foreign Origin, or no CSRF token, is refused.
    let (id, secret) = server.admin();
    let login = server
        .http
        .post(server.url("ui/api/login"))
        .json(&json!({"client_id": id, "client_secret": secret}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let csrf = login.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string();
    let post = |origin: Option<&str>, csrf: Option<&str>| {
        let mut r = server.http.post(server.url("ui/api/upgrade")).header("cookie", &cookie).body(body.clone());
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (code, text) = post(Some("http://evil.example"), Some(&csrf)).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("Cross-site request refused"), "{text}");
    let (code, text) = post(None, None).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("CSRF"), "{text}");
    let (code, _) = post(Some(server.url("").trim_end_matches('/')), Some(&csrf)).await;
    assert_eq!(code, 202, "the same request from the page itself is accepted");

    // An agent selected three times is asked once.
    let thrice = format!(r#"{{"ids":["{0}","{0}","{0}"],"version":"2.0.0"}}"#, agents[0].id);
    let resp = server
        .http
        .post(server.url("ui/api/upgrade"))
        .header("cookie", &cookie)
        .header("origin", server.url("").trim_end_matches('/'))
        .header("x-csrf-token", &csrf)
        .body(thrice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.json::<Value>().await.unwrap()["started"], json!([agents[0].id]));
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_overview_of_hundreds_of_agents_on_three_versions() {
    let server = Server::start(&[]).await;
    let versions = ["1.2.0", "1.3.0", "1.4.0"];
    let mut fleet = sim::fleet(&server, "clinic", &versions, 300, true).await;
    let _never_seen = sim::fleet(&server, "spare", &versions, 12, false).await;
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    for a in fleet.iter_mut().take(30) {
        a.stop();
    }
    // Some upgrade results: a rollback and a bad version come first on the overview.
    let token = server.admin_token().await;
    for (agent, version) in [(&fleet[40], "1.4.0"), (&fleet[41], "1.5.0-bad"), (&fleet[42], "1.6.0-missing")] {
        let url = server.url(&format!("fhir/R4/Agent/{}/$upgrade?version={version}", agent.id));
        server.http.get(url).bearer_auth(&token).send().await.unwrap();
    }
    edge_agent_e2e::eventually(LIMIT, "30 agents disconnected", || async {
        let (_, v) = server.get("fhir/R4/Agent/$bulk-status?_count=100&name=clinic-00").await;
        (v.to_string().matches("disconnected").count() == 30).then_some(())
    })
    .await;
    b.goto(&server.url("/#/overview")).await;
    b.wait_text("#count-connected", "270", LIMIT).await;
    b.wait_text("#count-disconnected", "30", LIMIT).await;
    assert!(b.wait_text("#count-unknown", "12", LIMIT).await.contains("never connected"));
    let legend = b.text("#versions-legend").await.unwrap();
    for v in versions {
        assert!(legend.contains(v), "{legend}");
    }
    let latest = b.wait_text("#latest tbody", "rolled back", LIMIT).await;
    let first = latest.lines().next().unwrap();
    assert!(!first.contains("succeeded"), "failures come first: {latest}");
    b.screenshot("fleet-overview").await;

    // The table filters on the server: not on 1.4.0, and last upgrade failed.
    b.click("#nav-agents").await;
    b.type_into("#f-not-version", "1.4.0").await;
    b.click("#filters button[type=submit]").await;
    // 300 on three versions, one more on 1.4.0 after its upgrade, and 12 never seen.
    b.wait_text("#page-info", "of 211", LIMIT).await;
    b.click("#f-failed").await;
    b.click("#filters button[type=submit]").await;
    // The two failures, less the one now on 1.4.0 (the filters combine).
    b.wait_text("#page-info", "1–1 of 1", LIMIT).await;
    b.click("#f-failed").await;
    b.type_into("#f-not-version", "").await;
    b.click("#filters button[type=submit]").await;
    b.wait_text("#page-info", "of 312", LIMIT).await;
    b.click("#agents-table th[data-sort=version] button").await;
    b.wait_text("#agents-table tbody tr:first-child .state", "never connected", LIMIT).await;
    b.click("#agents-table th[data-sort=version] button").await;
    b.wait_text("#agents-table tbody tr:first-child .version", "1.4.0", LIMIT).await;
    b.screenshot("fleet-agents").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_from_the_current_search_is_watched_live_and_steered() {
    let server = Server::start(&[]).await;
    let fleet = sim::fleet(&server, "ro", &["3.0.0"], 6, true).await;
    let _others = sim::fleet(&server, "elsewhere", &["3.0.0"], 3, true).await;
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.click("#nav-agents").await;
    b.type_into("#q", "ro-").await;
    b.click("#filters button[type=submit]").await;
    b.wait_text("#page-info", "1–6 of 6", LIMIT).await;
    b.type_into("#ro-version", "3.1.0").await;
    b.type_into("#ro-bake", "2").await;
    b.click("#ro-start").await;
    b.wait_shown("#rollout").await;
    b.wait_text("#rollout-title", "Rollout to 3.1.0", LIMIT).await;
    b.click("#ro-pause").await;
    b.wait_text("#ro-state", "paused", LIMIT).await;
    b.exec("window.notReloaded = true;", json!([])).await;
    b.click("#ro-resume").await;
    // From here on nothing is clicked: the waves, and the end, are pushed by the server.
    b.wait_text("#ro-count-succeeded", "6", Duration::from_secs(60)).await;
    b.wait_text("#ro-state", "completed", LIMIT).await;
    assert_eq!(b.exec("return window.notReloaded === true;", json!([])).await, json!(true), "no reload");
    let events = b.text("#rollout-events").await.unwrap();
    assert!(events.contains("canary"), "{events}");
    b.screenshot("rollout-completed").await;
    for a in &fleet {
        let (_, v) = server.get(&format!("fhir/R4/Agent/{}/$status", a.id)).await;
        assert!(v.to_string().contains("3.1.0"), "{} upgraded: {v}", a.name);
    }
    let (_, other) = server.get("fhir/R4/Agent/$bulk-status?name=elsewhere").await;
    assert!(!other.to_string().contains("3.1.0"), "agents outside the search were not asked");
}

/// A rollout lists its first 100 failures; the page says how many more there are, and where.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_with_more_failures_than_it_lists_says_how_many_more() {
    let server = Server::start(&[]).await;
    let _fleet = sim::fleet(&server, "many", &["3.0.0"], 102, true).await;
    edge_agent_e2e::eventually(LIMIT, "102 agents connected", || async {
        let (_, v) = server.get("fhir/R4/Agent/$bulk-status?_count=200&name=many").await;
        (v.to_string().matches("\"connected\"").count() == 102).then_some(())
    })
    .await;
    // A canary of all of them, each failing at once (the simulated agents refuse `-bad`).
    let body = json!({"version": "3.1.0-bad", "canary": 102, "maxInFlight": 102});
    let token = server.admin_token().await;
    let resp = server.http.post(server.url("fhir/R4/Agent/$upgrade?name=many")).bearer_auth(token);
    let resp = resp.header("prefer", "respond-async").body(body.to_string()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let status = edge_agent_e2e::eventually(Duration::from_secs(60), "every member failed", || async {
        let (_, v) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
        (v["counts"]["failed"] == 102).then_some(v)
    })
    .await;
    assert_eq!(status["failures"].as_array().unwrap().len(), 100, "{status}");
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.goto(&server.url(&format!("/#/rollout/{id}"))).await;
    b.wait_shown("#rollout").await;
    let more = b.wait_text("#rollout-failures-more", "… and 2 more failed (the first 100 are listed", LIMIT).await;
    assert!(more.contains("\"Last upgrade failed\" filter lists them"), "{more}");
    let rows = b.exec("return document.querySelectorAll('#rollout-failures tbody tr').length;", json!([])).await;
    assert_eq!(rows, json!(100));
}

/// Found by an attacker's probe: a sign-in sent as a form was told to "Enter a client id and a
/// client secret" (which it held), and one sent as a JSON array was taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_that_is_not_a_json_object_is_told_what_to_send() {
    let server = Server::start(&[]).await;
    let (id, secret) = server.admin();
    let url = server.url("ui/api/login");
    let shape =
        "Send the sign-in as a JSON object (Content-Type: application/json): {\"client_id\": …, \"client_secret\": …}";
    let form = server.http.post(&url).form(&[("client_id", id.as_str()), ("client_secret", secret.as_str())]);
    let array = server.http.post(&url).json(&json!([id, secret]));
    let typed = server.http.post(&url).header("content-type", "text/plain");
    let typed = typed.body(json!({"client_id": id, "client_secret": secret}).to_string());
    for (what, req) in [("form", form), ("array", array), ("text/plain", typed)] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{what}");
        assert!(resp.headers().get("set-cookie").is_none(), "{what}: signed in");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], shape, "{what}");
    }
    let resp = server.http.post(&url).json(&json!({"client_id": id})).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "Enter a client id and a client secret");
    let resp = server.http.post(&url).json(&json!({"client_id": id, "client_secret": secret})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// Signs in through the page's API; the cookie header to send with later calls.
async fn api_session(server: &Server) -> String {
    let (id, secret) = server.admin();
    let login = server.http.post(server.url("ui/api/login")).json(&json!({"client_id": id, "client_secret": secret}));
    let login = login.send().await.unwrap();
    assert_eq!(login.status().as_u16(), 200, "sign-in refused");
    login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string()
}

async fn page_api(server: &Server, cookie: &str, path: &str) -> Value {
    let resp = server.http.get(server.url(path)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn page_api_works_on_postgres() {
    let db = edge_agent_e2e::services::shared_db().await;
    let server = Server::start_on_postgres(&db, &[]).await;
    let fleet = sim::fleet(&server, "pg-clinic", &["1.2.0", "1.3.0"], 6, true).await;
    let _never_seen = sim::fleet(&server, "pg-spare", &["1.2.0"], 2, false).await;
    edge_agent_e2e::eventually(LIMIT, "6 agents connected, their versions reported", || async {
        let (_, v) = server.get("fhir/R4/Agent/$bulk-status?_count=100&name=pg-clinic").await;
        let text = v.to_string();
        let n = |s: &str| text.matches(s).count();
        (n("\"connected\"") == 6 && n("\"1.2.0\"") == 3 && n("\"1.3.0\"") == 3).then_some(())
    })
    .await;
    // fleet[0] starts on 1.2.0 and upgrades; fleet[2] (also 1.2.0) rolls back.
    assert_eq!(server.upgrade(&fleet[0].id, "version=1.3.0").await.0, 200);
    assert_ne!(server.upgrade(&fleet[2].id, "version=1.4.0-bad").await.0, 200);
    let cookie = api_session(&server).await;

    // The new version arrives with the agent's heartbeat, just after its answer.
    let overview = edge_agent_e2e::eventually(LIMIT, "the upgraded version counted", || async {
        let v = page_api(&server, &cookie, "ui/api/overview").await;
        (v["counts"]["versions"][0] == json!(["1.3.0", 4])).then_some(v)
    })
    .await;
    let counts = &overview["counts"];
    assert_eq!(counts["total"], 8, "{overview}");
    assert_eq!(counts["states"], json!([["connected", 6], ["unknown", 2]]), "{overview}");
    assert_eq!(counts["versions"], json!([["1.3.0", 4], ["1.2.0", 2], ["unknown", 2]]), "{overview}");
    let latest: Vec<(&str, &str)> = overview["latest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["result"]["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(latest, [("pg-clinic-0002", "rolled_back"), ("pg-clinic-0000", "succeeded")], "failures first");

    let table = page_api(&server, &cookie, "ui/api/agents?q=CLINIC&notVersion=1.3.0&sort=name&size=5").await;
    let rows: Vec<(&str, &str)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["version"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [("pg-clinic-0002", "1.2.0"), ("pg-clinic-0004", "1.2.0")], "{table}");
    let failed = page_api(&server, &cookie, "ui/api/agents?lastFailed=1").await;
    assert_eq!((failed["total"].as_u64(), failed["rows"][0]["lastOutcome"].as_str()), (Some(1), Some("rolled_back")));
    let second = page_api(&server, &cookie, "ui/api/agents?sort=version&dir=desc&size=3&page=2").await;
    assert_eq!((second["total"].as_u64(), second["rows"].as_array().unwrap().len()), (Some(8), 2));
    assert_eq!(second["rows"][1]["version"], "unknown", "never seen sorts last descending: {second}");

    let one = page_api(&server, &cookie, &format!("ui/api/agents/{}", fleet[0].id)).await;
    assert_eq!((one["state"].as_str(), one["version"].as_str()), (Some("connected"), Some("1.3.0")), "{one}");
    assert_eq!(one["history"][0]["outcome"], "succeeded", "{one}");
    assert_eq!(one["history"][0]["from"], "1.2.0", "{one}");
    assert!(one["since"].is_string(), "{one}");

    // /metrics counts from the same store.
    let token = server.admin_token().await;
    let metrics = server.http.get(server.url("metrics")).bearer_auth(token).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for line in ["agent_server_agents{state=\"connected\"} 6", "agent_server_agents_by_version{version=\"1.3.0\"} 4"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}
