//! FHIR REST on the server: shapes of `$status` and `$bulk-status`, search, create, and the errors
//! a client can provoke.

use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::{AgentHome, Server, FAST};

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_bulk_status_have_the_protocol_shapes() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("shape-connected");
    let (never, _) = server.add_agent("shape-never-seen");
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let _agent = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, Duration::from_secs(15)).await;

    let (code, status) = server.get(&format!("fhir/R4/Agent/{id}/$status")).await;
    assert_eq!(code, 200);
    assert_eq!(keys(&status), ["resourceType", "parameter"]);
    assert_eq!(status["resourceType"], "Parameters");
    let params = status["parameter"].as_array().unwrap();
    assert_eq!(params[0], json!({"name": "status", "valueCode": "connected"}));
    assert_eq!(params[1], json!({"name": "version", "valueString": SOURCE_VERSION}));
    assert_eq!(params[2]["name"], "lastUpdated");
    assert_eq!(keys(&params[2]), ["name", "valueInstant"]);
    let instant = params[2]["valueInstant"].as_str().unwrap();
    assert!(instant.len() == 24 && instant.ends_with('Z') && instant.as_bytes()[10] == b'T', "{instant}");

    let (_, unseen) = server.get(&format!("fhir/R4/Agent/{never}/$status")).await;
    assert_eq!(
        unseen,
        json!({"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "unknown"}, {"name": "version", "valueString": "unknown"}]})
    );

    let (code, bulk) = server.get(&format!("fhir/R4/Agent/$bulk-status?_id={id},{never}")).await;
    assert_eq!(code, 200);
    assert_eq!((bulk["resourceType"].as_str(), bulk["type"].as_str()), (Some("Bundle"), Some("collection")));
    let entries = bulk["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(keys(e), ["resource"]);
        let p = &e["resource"];
        assert_eq!(p["resourceType"], "Parameters");
        assert_eq!(p["parameter"][0]["name"], "agent");
        assert_eq!(p["parameter"][0]["resource"]["resourceType"], "Agent");
        assert_eq!(p["parameter"][1]["name"], "result");
        assert_eq!(p["parameter"][1]["resource"]["resourceType"], "Parameters");
    }
    let connected = entries.iter().find(|e| e["resource"]["parameter"][0]["resource"]["id"] == id.as_str()).unwrap();
    assert_eq!(connected["resource"]["parameter"][1]["resource"], status);
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_limits_and_search_errors_are_operation_outcomes() {
    let server = Server::start(&[]).await;
    server.add_agent("alpha");
    let outcome_text = |v: &Value| v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
    let cases = [
        ("fhir/R4/Agent/$bulk-status?_count=1001", "'_count' of 1001 is greater than max of 1000"),
        ("fhir/R4/Agent/$reload-config?_count=101", "'_count' of 101 is greater than max of 100"),
        ("fhir/R4/Agent?name:fuzzy=alpha", "Unknown modifier ':fuzzy' on search parameter 'name'"),
        (
            "fhir/R4/Agent?_sort=version",
            "Unknown sort key 'version': expected name, status, identifier or _lastUpdated",
        ),
        ("fhir/R4/Agent?_lastUpdated=soon", "Invalid value 'soon' provided for date parameter '_lastUpdated'"),
        ("fhir/R4/Agent/$bulk-status?name=nobody", "No agent(s) for given query"),
        ("fhir/R4/Agent/$upgrade?_count=500", "'_count' of 500 is greater than max of 100"),
        ("fhir/R4/Agent/$upgrade?nmae=alpha", "Unknown search parameter: nmae"),
        ("fhir/R4/Agent?_count=lots", "Invalid value 'lots' provided for integer parameter '_count'"),
        (
            "fhir/R4/Agent?_count=1&_count=2",
            "Search parameter '_count' is given twice: give it once (comma-separated values match any of them)",
        ),
        (
            "fhir/R4/Agent/$bulk-status?status=active&status:not=off",
            "Search parameter 'status' is given twice: give it once (comma-separated values match any of them)",
        ),
        (
            "fhir/R4/Agent/$upgrade?name=alpha&timeout=soon",
            "Invalid value 'soon' provided for integer parameter 'timeout'",
        ),
        (
            "fhir/R4/Agent/$upgrade?name=alpha&force=maybe",
            "Invalid value 'maybe' provided for boolean parameter 'force'",
        ),
    ];
    for (path, text) in cases {
        let (code, v) = server.get(path).await;
        assert_eq!(code, 400, "{path}: {v}");
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(outcome_text(&v), text, "{path}");
    }
    let (code, v) = server.get("fhir/R4/Agent/no-such-agent/$status").await;
    assert_eq!((code, v["resourceType"].as_str()), (404, Some("OperationOutcome")));

    // A bulk operation that asks agents something, on a search finding more than the page it
    // asks by default (20), asks none of them and says why (found by an attacker's probe: it
    // asked the first 20 and said nothing of the others); with `_count`, that page, as asked.
    let names: Vec<String> = (0..21).map(|i| format!("many-{i:02}")).collect();
    for name in &names {
        server.add_agent(name);
    }
    let refused = "This search finds more than 20 agents, the page a bulk operation asks by default: give _count \
                   (at most 100) to ask that many, narrow the search, or upgrade a fleet with a rollout (POST \
                   Agent/$upgrade with Prefer: respond-async)";
    for op in ["$upgrade?version=1.0.1&", "$reload-config?", "$stats?", "$fetch-logs?"] {
        let (code, v) = server.get(&format!("fhir/R4/Agent/{op}name=many-")).await;
        assert_eq!((code, outcome_text(&v)), (400, refused.to_string()), "{op}");
    }
    let (_, events) = server.get("fhir/R4/AuditEvent?subtype=reload-config&_count=10").await;
    assert!(events["entry"].as_array().is_none_or(|e| e.iter().all(|e| e["resource"]["entity"].is_null())), "{events}");
    for (query, asked) in [("name=many-&_count=21", 21), ("name=many-&_count=5", 5), ("name=many-1", 10)] {
        let (code, v) = server.get(&format!("fhir/R4/Agent/$reload-config?{query}")).await;
        assert_eq!((code, v["entry"].as_array().map_or(0, Vec::len)), (200, asked), "{query}: {v}");
    }
    let (code, v) = server.get("fhir/R4/Agent/$bulk-status?name=many-").await;
    assert_eq!((code, v["entry"].as_array().map_or(0, Vec::len)), (200, 20), "reading statuses is paged: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_read_and_search_agents() {
    let server = Server::start(&[]).await;
    let body =
        json!({"resourceType": "Agent", "name": "Clinic 9", "identifier": [{"system": "urn:site", "value": "c9"}]});
    let (code, created) = server.post("fhir/R4/Agent", body).await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (_, read) = server.get(&format!("fhir/R4/Agent/{id}")).await;
    assert_eq!(read, created);
    for query in ["name=clin", "identifier=urn:site|c9", "identifier=c9", &format!("_id={id}"), "status=active"] {
        let (code, found) = server.get(&format!("fhir/R4/Agent?{query}")).await;
        assert_eq!(code, 200);
        assert_eq!((found["type"].as_str(), found["total"].as_u64()), (Some("searchset"), Some(1)), "{query}: {found}");
        assert_eq!(found["entry"][0]["resource"]["id"], id);
    }
    let (_, none) = server.get("fhir/R4/Agent?identifier=urn:other|c9").await;
    assert_eq!(none["total"], 0);
    // Identifiers are unique: another agent cannot take one, by creation or by change; the agent
    // that has it keeps it through its own changes.
    let taken = format!("Identifier urn:site|c9: Agent/{id} has it already: identifiers are unique");
    let twin = json!({"resourceType": "Agent", "name": "Clinic 9 twin", "identifier": [{"system": "urn:site", "value": "c9"}]});
    let (code, v) = server.post("fhir/R4/Agent", twin).await;
    assert_eq!((code, v["issue"][0]["details"]["text"].as_str()), (409, Some(taken.as_str())), "{v}");
    let (code, other) = server.post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": "Clinic 10"})).await;
    assert_eq!(code, 201, "{other}");
    let other_id = other["id"].as_str().unwrap();
    let mut change = other.clone();
    change["identifier"] = json!([{"system": "urn:site", "value": "c10"}, {"system": "urn:site", "value": "c9"}]);
    let token = server.admin_token().await;
    let put = |id: &str, body: &Value| {
        let req = server.http.put(server.url(&format!("fhir/R4/Agent/{id}"))).bearer_auth(&token);
        req.body(body.to_string()).send()
    };
    let resp = put(other_id, &change).await.unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let (_, read) = server.get(&format!("fhir/R4/Agent/{other_id}")).await;
    assert_eq!(read["identifier"], Value::Null, "nothing changed: {read}");
    let mut renamed = created.clone();
    renamed["name"] = json!("Clinic 9, renamed");
    assert_eq!(put(id, &renamed).await.unwrap().status().as_u16(), 200, "its own identifier is no conflict");
    let (_, found) = server.get("fhir/R4/Agent?identifier=urn:site|c9").await;
    assert_eq!(found["total"], 1, "{found}");
    // An identifier without a system is the same as one with: either way round.
    let (code, v) = server
        .post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": "c", "identifier": [{"value": "c9"}]}))
        .await;
    assert_eq!(
        (code, v["issue"][0]["details"]["text"].as_str()),
        (409, Some(format!("Identifier |c9: Agent/{id} has it already: identifiers are unique").as_str())),
        "{v}"
    );
    let (code, bare) = server
        .post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": "d", "identifier": [{"value": "d4"}]}))
        .await;
    assert_eq!(code, 201, "{bare}");
    let (code, v) = server
        .post(
            "fhir/R4/Agent",
            json!({"resourceType": "Agent", "name": "e", "identifier": [{"system": "urn:x", "value": "d4"}]}),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = server
        .post(
            "fhir/R4/Agent",
            json!({"resourceType": "Agent", "name": "f", "identifier": [{"system": "urn:other", "value": "c9"}]}),
        )
        .await;
    assert_eq!(code, 201, "another system's c9 is another identifier: {v}");
    for bad in [json!({"resourceType": "Agent"}), json!({"resourceType": "Patient", "name": "x"}), json!("nope")] {
        let (code, v) = server.post("fhir/R4/Agent", bad.clone()).await;
        assert_eq!((code, v["resourceType"].as_str()), (400, Some("OperationOutcome")), "{bad}");
    }
    // A field this server does not keep (Medplum's `channel`) is refused, not dropped unsaid.
    let (_, before) = server.get(&format!("fhir/R4/Agent/{id}")).await;
    let mut with_channel = before.clone();
    with_channel["name"] = json!("Clinic 9, with a channel");
    with_channel["channel"] = json!([{"name": "hl7", "endpoint": {"reference": "Endpoint/1"}}]);
    let resp = put(id, &with_channel).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("Agent field 'channel' is not kept by this server: remove it"), "{text}");
    assert_eq!(server.get(&format!("fhir/R4/Agent/{id}")).await.1, before, "nothing changed");
}

/// Identifiers stay unique when creations and changes race: of many at once for one identifier,
/// one agent gets it and every other is told who has it. On PostgreSQL, where a store call waits
/// on the network, and on SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn racing_writes_of_one_identifier_leave_it_to_exactly_one_agent() {
    let db = edge_agent_e2e::services::shared_db().await;
    racing_writes_of_one_identifier(Server::start_on_postgres(&db, &[]).await).await;
    racing_writes_of_one_identifier(Server::start(&[]).await).await;
}

async fn racing_writes_of_one_identifier(server: Server) {
    let token = server.admin_token().await;
    let (_, spare) = server.post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": "spare"})).await;
    let spare_id = spare["id"].as_str().unwrap().to_string();
    let identifier = json!([{"system": "urn:site", "value": "race"}]);
    let mut writes = Vec::new();
    for n in 0..24 {
        let (http, token, identifier, id) = (server.http.clone(), token.clone(), identifier.clone(), spare_id.clone());
        let (post_url, put_url) = (server.url("fhir/R4/Agent"), server.url(&format!("fhir/R4/Agent/{spare_id}")));
        writes.push(tokio::spawn(async move {
            // Every fourth a change of an existing agent, the others creations.
            let req = match n % 4 {
                0 => http.put(put_url).body(
                    json!({"resourceType": "Agent", "id": id, "name": "spare",
                    "identifier": identifier})
                    .to_string(),
                ),
                _ => http.post(post_url).body(
                    json!({"resourceType": "Agent", "name": format!("racer {n}"),
                    "identifier": identifier})
                    .to_string(),
                ),
            };
            let resp = req.bearer_auth(&token).header("content-type", "application/fhir+json").send().await.unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap())
        }));
    }
    let mut codes = Vec::new();
    for w in writes {
        let (code, v) = w.await.unwrap();
        assert!(matches!(code, 200 | 201 | 409), "{code}: {v}");
        if code == 409 {
            let text = v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
            assert!(text.contains("has it already: identifiers are unique"), "{text}");
        }
        codes.push(code);
    }
    let (_, found) = server.get("fhir/R4/Agent?identifier=urn:site|race").await;
    assert_eq!(found["total"], 1, "one agent has the identifier: {found}");
    let won = codes.iter().filter(|c| **c == 201).count()
        + usize::from(found["entry"][0]["resource"]["id"] == spare_id.as_str());
    assert_eq!(won, 1, "one write took it, the others were refused: {codes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_admins_call_the_rest_api_and_bad_credentials_get_oauth_errors() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("guarded");
    let field = |k: &str| cfg.lines().find(|l| l.starts_with(k)).unwrap().split('"').nth(1).unwrap().to_string();
    let agent_token = server.token_for(&field("client_id"), &field("client_secret")).await;
    let url = server.url(&format!("fhir/R4/Agent/{id}/$status"));
    let resp = server.http.get(&url).bearer_auth(agent_token).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = server.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let token_url = server.url("oauth2/token");
    let form = [("grant_type", "client_credentials"), ("client_id", &field("client_id")), ("client_secret", "wrong")];
    let resp = server.http.post(&token_url).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    let resp = server
        .http
        .post(&token_url)
        .basic_auth(field("client_id"), Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Both at once, as Medplum's own client sends them.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", &field("client_id")),
        ("client_secret", &field("client_secret")),
    ];
    let resp = server
        .http
        .post(&token_url)
        .basic_auth(field("client_id"), Some(field("client_secret")))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!((v["token_type"].as_str(), v["expires_in"].as_u64()), (Some("Bearer"), Some(3600)));
    let resp = server.http.post(&token_url).form(&[("grant_type", "password")]).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // The same fields as JSON: refused for what they are, not for a field they hold.
    let fields: serde_json::Map<String, Value> = form.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let resp = server.http.post(&token_url).json(&fields).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(
        v["error_description"],
        "The body must be a form (Content-Type: application/x-www-form-urlencoded), not application/json"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn search_modifiers_sorting_dates_and_paging_links() {
    let server = Server::start(&["--base-url", "https://agents.example.org/prefix"]).await;
    for (name, status, ident) in [("Lab 1", "active", "b"), ("Lab 10", "off", "a"), ("Clinic lab", "active", "c")] {
        let body = json!({"resourceType": "Agent", "name": name, "status": status,
            "identifier": [{"system": "urn:site", "value": ident}]});
        assert_eq!(server.post("fhir/R4/Agent", body).await.0, 201);
    }
    let names = |v: &Value| -> Vec<String> {
        v["entry"].as_array().unwrap().iter().map(|e| e["resource"]["name"].as_str().unwrap().to_string()).collect()
    };
    let cases: [(&str, &[&str]); 9] = [
        ("name=lab", &["Lab 1", "Lab 10"]),
        ("name:exact=Lab 1", &["Lab 1"]),
        ("name:exact=lab 1", &[]),
        ("name:contains=LAB&_sort=name", &["Clinic lab", "Lab 1", "Lab 10"]),
        ("_sort=-name", &["Lab 10", "Lab 1", "Clinic lab"]),
        ("_sort=identifier", &["Lab 10", "Lab 1", "Clinic lab"]),
        ("status:not=off&_sort=name", &["Clinic lab", "Lab 1"]),
        ("_lastUpdated=gt2000-01-01&_lastUpdated=lt2999&name=lab", &["Lab 1", "Lab 10"]),
        ("_lastUpdated=le2000-01-01T00:00:00Z", &[]),
    ];
    for (query, want) in cases {
        let (code, found) = server.get(&format!("fhir/R4/Agent?{query}")).await;
        assert_eq!(code, 200, "{query}: {found}");
        assert_eq!(names(&found), want, "{query}");
    }

    let (_, first) = server.get("fhir/R4/Agent?_sort=name&_count=2").await;
    assert_eq!((first["total"].as_u64(), names(&first).len()), (Some(3), 2));
    let base = "https://agents.example.org/prefix/fhir/R4/Agent";
    let entry_url = first["entry"][0]["fullUrl"].as_str().unwrap();
    assert_eq!(entry_url, format!("{base}/{}", first["entry"][0]["resource"]["id"].as_str().unwrap()));
    let link = |v: &Value, rel: &str| {
        v["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == rel)
            .map(|l| l["url"].as_str().unwrap().to_string())
    };
    assert_eq!(link(&first, "self").unwrap(), format!("{base}?_sort=name&_count=2&_offset=0"));
    let next = link(&first, "next").expect("a next page");
    let (_, second) = server.get(next.strip_prefix("https://agents.example.org/prefix/").unwrap()).await;
    assert_eq!(names(&second), ["Lab 10"]);
    assert_eq!(link(&second, "next"), None, "the last page has no next link");
    assert!(link(&second, "previous").is_some());

    // Without --base-url, links follow the address the client used.
    let plain = Server::start(&[]).await;
    let (id, _) = plain.add_agent("linked");
    let (_, found) = plain.get("fhir/R4/Agent?name=linked").await;
    assert_eq!(found["entry"][0]["fullUrl"], format!("http://{}/fhir/R4/Agent/{id}", plain.addr));
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_client_credentials_and_oversized_bodies_get_fhir_answers() {
    let server = Server::start(&[]).await;
    let (id, _) = server.add_agent("basic");
    let (admin_id, secret) = server.admin();
    let url = server.url(&format!("fhir/R4/Agent/{id}/$status"));
    let resp = server.http.get(&url).basic_auth(&admin_id, Some(&secret)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "HTTP Basic client credentials work on the REST API");
    let resp = server.http.get(&url).basic_auth(&admin_id, Some("wrong")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["resourceType"], "OperationOutcome");

    // A body of 3 MiB announced and the answer read before any of it is sent: the server refuses
    // it on its length, unread (a client still writing it would meet the closed connection).
    let answer = oversized_post(&server, &server.admin_token().await).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/fhir+json"), "{head}");
    let v: Value = serde_json::from_str(body).expect("an OperationOutcome");
    assert_eq!(v["issue"][0]["details"]["text"], "Request body too large: the limit is 2 MiB");
    let (_, all) = server.get("fhir/R4/Agent").await;
    assert_eq!(all["total"], 1, "nothing was created from the oversized body");
}

/// Found by an attacker's probe: wrong client credentials in HTTP Basic on the REST API were
/// tried without end (1,400 in 2 s, never a 429), where the token endpoint allows 300 a minute
/// from one address, and none was logged. Refused ones now count against the same budget, and are
/// logged as the token endpoint's are; right ones cost nothing.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_basic_credentials_count_against_the_addresss_budget_of_token_requests() {
    let server = Server::start(&["--auth-rate-per-ip", "20"]).await;
    let (admin_id, secret) = server.admin();
    let bearer = server.admin_token().await;
    let url = server.url("fhir/R4/Agent");
    for _ in 0..5 {
        let resp = server.http.get(&url).basic_auth(&admin_id, Some(&secret)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "right credentials cost nothing");
    }
    // Sent at once (each is taken from the budget before it is checked, so guesses in parallel
    // get no further), some to a route whose handler checks the credentials itself.
    let (agent, _) = server.add_agent("guessed");
    let agent_url = server.url(&format!("fhir/R4/Agent/{agent}"));
    // And a third to a path no rule names, which asks who calls before it refuses.
    let junk_url = server.url(&format!("fhir/R4/Agent/{agent}/_history"));
    let guesses = (0..40).map(|i| {
        let target = [&url, &agent_url, &junk_url][i % 3];
        let guess = server.http.get(target).basic_auth(&admin_id, Some("guess"));
        async move {
            let resp = guess.send().await.unwrap();
            let code = resp.status().as_u16();
            if code == 429 {
                assert!(resp.headers().contains_key("retry-after"));
                let v: Value = resp.json().await.unwrap();
                let text = v["issue"][0]["details"]["text"].as_str().unwrap().to_string();
                assert!(text.starts_with("Too many refused credentials from your address: try again in "), "{text}");
            }
            code
        }
    });
    let codes: Vec<u16> = futures_util::future::join_all(guesses).await;
    let refused = codes.iter().filter(|c| **c == 401).count();
    assert!((15..=22).contains(&refused), "{refused} tried of 40 at 20 a minute: {codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 40 - refused, "{codes:?}");
    // The address is past its budget: its Basic credentials and token requests wait, its tokens
    // do not (a token is not a secret one can guess).
    let resp = server.http.get(&url).basic_auth(&admin_id, Some(&secret)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(server.http.get(&url).bearer_auth(&bearer).send().await.unwrap().status(), 200);
    let form = [("grant_type", "client_credentials"), ("client_id", admin_id.as_str()), ("client_secret", &secret)];
    let resp = server.http.post(server.url("oauth2/token")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let log = server.proc.log();
    let lines = log.lines().filter(|l| l.contains("authentication failed") && l.contains("at=\"api\"")).count();
    assert_eq!(lines, refused, "one line for each refused try:\n{log}");
}

/// `POST Agent` announcing a 3 MiB body, none of it sent: the server's whole answer (it closes the
/// connection after it).
async fn oversized_post(server: &Server, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = reqwest::Url::parse(&server.url("")).unwrap();
    let mut conn = tokio::net::TcpStream::connect((base.host_str().unwrap(), base.port().unwrap())).await.unwrap();
    let head = format!(
        "POST /fhir/R4/Agent HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n",
        base.host_str().unwrap(),
        3 * 1024 * 1024
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
    read.expect("the server answered and closed within 30 s").expect("a clean close");
    String::from_utf8_lossy(&answer).into_owned()
}
