//! The page by role, in a real headless Chromium: a viewer is named, sees the fleet and none of
//! the controls its role would be refused; an admin sees the Audit view and filters it by agent
//! and outcome.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use edge_agent_e2e::browser::Browser;
use edge_agent_e2e::{eventually, server_bin, toml_value, Server};

const LIMIT: Duration = Duration::from_secs(30);

async fn sign_in(b: &Browser, server: &Server, id: &str, secret: &str) {
    b.goto(&server.url("/")).await;
    b.wait_shown("#signin").await;
    b.type_into("#client-id", id).await;
    b.type_into("#client-secret", secret).await;
    b.click("#signin-btn").await;
    b.wait_shown("#overview").await;
}

/// Whether the element is laid out (not hidden by itself or an ancestor).
async fn visible(b: &Browser, css: &str) -> bool {
    let script = "const e = document.querySelector(arguments[0]); return !!e && e.offsetParent !== null;";
    b.exec(script, json!([css])).await == json!(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_each_role_what_it_may_do_and_admins_the_audit_trail() {
    let server = Server::start(&[]).await;
    let (agent, _) = server.add_agent("clinic-9");
    let out = Command::new(server_bin())
        .args(["client", "add", "--role", "viewer", "--name", "Night desk", "--data"])
        .arg(server.data())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (viewer, viewer_secret) = (toml_value(&text, "client_id"), toml_value(&text, "client_secret"));

    let b = Browser::start().await;
    sign_in(&b, &server, &viewer, &viewer_secret).await;
    b.wait_text("#who-id", "Signed in as Night desk (viewer)", LIMIT).await;
    b.click("#nav-agents").await;
    b.wait_shown("#agents-table").await;
    assert!(!visible(&b, "#upgrade-form").await, "a viewer sees no upgrade form");
    assert!(!visible(&b, "#rollout-form").await, "nor a rollout form");
    assert!(!visible(&b, "#nav-audit").await, "nor the audit trail");
    b.click("#signout").await;
    b.wait_shown("#signin").await;

    // A refused sign-in and an agent changed, for the trail.
    let refused = server.http.post(server.url(&format!("fhir/R4/Agent/{agent}/$rotate-secret")));
    assert_eq!(
        refused.bearer_auth(server.token_for(&viewer, &viewer_secret).await).send().await.unwrap().status(),
        403
    );
    let (admin, admin_secret) = server.admin();
    sign_in(&b, &server, &admin, &admin_secret).await;
    b.wait_text("#who-id", "(admin)", LIMIT).await;
    assert!(visible(&b, "#nav-audit").await);
    b.click("#nav-audit").await;
    b.wait_shown("#audit-table").await;
    b.wait_text("#audit-table tbody", "agent-create", LIMIT).await;
    b.type_into("#au-actor", &viewer).await;
    b.exec("document.querySelector('#au-outcome').value = '4';", json!([])).await;
    b.click("#audit-filters button[type=submit]").await;
    // The filtered answer replaces the whole table: only the viewer's refusals are left.
    let rows = eventually(LIMIT, "the audit table filtered", || async {
        let rows = b.text("#audit-table tbody").await.unwrap_or_default();
        (rows.contains("refused") && !rows.contains("sign-in")).then_some(rows)
    })
    .await;
    assert!(rows.contains("Night desk") && !rows.contains("agent-create"), "{rows}");
    assert!(rows.contains("needs the admin role"), "{rows}");
}
