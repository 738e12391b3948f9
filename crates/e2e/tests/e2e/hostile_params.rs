//! What a body or a search may not carry, against a real server: a parameter an operation does
//! not take, a `Parameters` resource of another shape, a control character or a name past the
//! store's pattern limit in a search, and an `Agent` name no agent may have. Each is a 400 that
//! names it, and no agent is asked.

use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::{sim, Server};

use super::hostile_api::{send_text, sign_in, text_of};

/// Found by an attacker's probe: a misspelt or misshapen parameter in a body was no parameter at
/// all, so `$upgrade` went to the latest release; a NUL in a name matched every agent; a name past
/// the store's pattern limit was a 503. Each is a 400 that names it, and no agent is asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_misspelt_or_misshapen_parameter_is_refused_and_no_agent_is_asked() {
    let server = Server::start(&[]).await;
    let rec = sim::recorder(&server, "clinic", "1.0.0").await;
    server.wait_status(&rec.agent.id, "connected", "1.0.0", Duration::from_secs(10)).await;
    let id = rec.agent.id.clone();
    let parameters = |entries: Value| json!({"resourceType": "Parameters", "parameter": entries}).to_string();
    let version = json!({"name": "version", "valueString": "1.0.5"});
    let one = format!("fhir/R4/Agent/{id}/$upgrade");
    let cases = [
        (one.clone(), r#"{"verison": "1.0.5"}"#.to_string(), "Unknown parameter: verison (expected one of"),
        (one.clone(), parameters(version.clone()), "parameter must be a list"),
        (one.clone(), parameters(json!([{"name": "verison", "valueString": "1.0.5"}])), "Unknown parameter: verison"),
        (
            one.clone(),
            json!({"resourceType": "Parameters", "parameters": [version]}).to_string(),
            "Unknown field in a Parameters resource: parameters",
        ),
        (one.clone(), parameters(json!([{"name": "version"}])), "Parameter 'version' has no value"),
        (
            one.clone(),
            parameters(json!([{"name": "version", "valueString": null}])),
            "Parameter 'version' has no value",
        ),
        (one.clone(), r#"{"version": null}"#.into(), "Parameter 'version' has no value"),
        ("fhir/R4/Agent/$upgrade?name=clinic".into(), r#"{"verison": "1.0.5"}"#.into(), "Unknown parameter: verison"),
        (
            "fhir/R4/Agent/$reload-config?name=clinic".into(),
            r#"{"timeuot": 1000}"#.into(),
            "Unknown parameter: timeuot",
        ),
        (
            format!("fhir/R4/Agent/{id}/$push"),
            r#"{"destination": "d", "body": "b", "waitForRespnse": true}"#.into(),
            "Unknown parameter: waitForRespnse",
        ),
        (format!("fhir/R4/Agent/{id}/$rotate-secret"), r#"{"bogus": 1}"#.into(), "$rotate-secret takes no parameter"),
        (
            format!("fhir/R4/Agent/{id}/$rotate-secret?role=admin"),
            String::new(),
            "Unknown parameter: role (this takes none)",
        ),
        (
            format!("fhir/R4/Agent/{id}/$status?verbose=1"),
            String::new(),
            "Unknown parameter: verbose (this takes none)",
        ),
        (
            format!("fhir/R4/ClientApplication/{}/$rotate-secret?role=viewer", server.admin().0),
            String::new(),
            "Unknown parameter: role (this takes none)",
        ),
        ("fhir/R4/Agent/$bulk-status?name=clinic".into(), r#"{"bogus": 1}"#.into(), "takes no parameter"),
        ("fhir/R4/Agent/$upgrade?name:contains=%00&version=1.0.1".into(), String::new(), "has a control character"),
        ("fhir/R4/Agent/$upgrade?name=clinic%00zzz&version=1.0.1".into(), String::new(), "has a control character"),
        (format!("fhir/R4/Agent/$upgrade?name={}&version=1.0.1", "a".repeat(60_000)), String::new(), "too long"),
        (format!("fhir/R4/Agent/$bulk-status?name:contains={}", "a".repeat(60_000)), String::new(), "too long"),
    ];
    for (path, body, said) in &cases {
        let (code, v) = send_text(&server, reqwest::Method::POST, path, body).await;
        let shown: String = path.chars().take(100).collect();
        assert_eq!(code, 400, "{shown} {body}: {v}");
        assert!(text_of(&v).contains(said), "{shown} {body}: {v}");
    }
    // A rollout whose body has the wrong shape: refused, none made.
    let token = server.admin_token().await;
    let rollout = server.http.post(server.url("fhir/R4/Agent/$upgrade?name=clinic")).bearer_auth(&token);
    let rollout = rollout.header("prefer", "respond-async").header("content-type", "application/fhir+json");
    let resp = rollout.body(parameters(json!({"name": "version", "valueString": "1.0.5"}))).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let (_, rollouts) = server.get("fhir/R4/Rollout").await;
    assert_eq!(rollouts["total"], 0, "{rollouts}");
    // The page's upgrade with a misspelt field, and a table search with a NUL.
    let (cookie, csrf) = sign_in(&server).await;
    let page = server.http.post(server.url("ui/api/upgrade")).header("cookie", &cookie).header("x-csrf-token", &csrf);
    let resp = page.json(&json!({"ids": [id], "verison": "1.0.5"})).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let table = server.http.get(server.url("ui/api/agents?q=%00")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(table.status().as_u16(), 400);
    // The page's actions take nothing: a body or a query is refused, not ignored.
    for (path, body) in [("ui/api/policy/suspend", r#"{"mode": "enabled"}"#), ("ui/api/policy/resume?force=1", "")] {
        let act = server.http.post(server.url(path)).header("cookie", &cookie).header("x-csrf-token", &csrf);
        let resp = act.body(body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{path}");
        let said: Value = resp.json().await.unwrap();
        assert!(said["error"].as_str().unwrap_or_default().contains("takes no parameter"), "{path}: {said}");
    }
    // The refusal's audit event says what the page was told.
    let (events, _) = crate::audit::trail(&server, &token, "&subtype=policy-suspend").await;
    let said = events.iter().map(|e| e["outcomeDesc"].as_str().unwrap_or_default()).collect::<Vec<_>>();
    assert!(
        said.len() == 1 && said[0].starts_with("400 Bad Request: ") && said[0].contains("takes no parameter"),
        "{said:?}"
    );
    // A rollout from the page whose filter is misspelt (it would select every agent), or with a
    // parameter it does not take, even as null: refused, none made.
    for (query, params) in
        [("Q=clinic", json!({"version": "1.0.5"})), ("q=clinic", json!({"version": "1.0.5", "bogus": null}))]
    {
        let start = server.http.post(server.url(&format!("ui/api/rollouts?{query}")));
        let start = start.header("cookie", &cookie).header("x-csrf-token", &csrf);
        let resp = start.json(&json!({"params": params})).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{query} {params}");
    }
    let (_, rollouts) = server.get("fhir/R4/Rollout").await;
    assert_eq!(rollouts["total"], 0, "{rollouts}");
    // A name with a NUL, or past 256 characters: no agent made.
    for name in ["clinic\u{0}8", "clinic-7\u{202E}gpj", &"x".repeat(257)] {
        let (code, v) = server.post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": name})).await;
        assert_eq!(code, 400, "{v}");
        assert!(text_of(&v).contains("without control or invisible characters"), "{v}");
    }
    // An identifier with a field the store does not keep, or a system that is not text.
    for identifier in [
        json!({"system": {"x": 1}, "value": "v"}),
        json!({"system": "urn:s", "value": "v", "junk": "x".repeat(100_000)}),
    ] {
        let (code, v) = server
            .post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": "n", "identifier": [identifier]}))
            .await;
        assert_eq!(code, 400, "{v}");
        assert!(text_of(&v).contains("nothing else"), "{v}");
    }
    let (_, all) = server.get("fhir/R4/Agent").await;
    assert_eq!(all["total"], 1, "{all}");
    assert!(rec.received.lock().unwrap().is_empty(), "an agent was asked: {:?}", rec.received.lock().unwrap());
    assert!(!server.proc.log().contains("ERROR"), "bad input is no server error:\n{}", server.proc.log());
}
