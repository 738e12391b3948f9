//! The update policy's view on the page, in a real headless Chromium: every group in order with
//! its state, why, its window, counts by version and the failures; updated live as the policy
//! moves (no reload); suspended, resumed and its halt cleared from the page.

use std::time::Duration;

use serde_json::json;

use edge_agent_e2e::browser::Browser;
use edge_agent_e2e::sim;

use crate::policy::{put_policy, server, Clock};
use crate::web::sign_in;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_view_shows_every_group_and_why_live() {
    let clock = Clock::new();
    let server = server(&clock, &[]).await;
    let dev = sim::fleet(&server, "dev", &["1.0.0"], 2, true).await;
    let _prod = sim::fleet(&server, "prod", &["1.0.0"], 3, true).await;
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    b.click("#nav-policy").await;
    b.wait_shown("#policy").await;
    b.wait_text("#policy-none", "No update policy is set", LIMIT).await;
    b.exec("window.notReloaded = true;", json!([])).await;

    // A build the agents roll back: dev halts at its canary, prod waits.
    let window = json!({"days": ["sat", "sun"], "start": "22:00", "duration": "4h", "timeZone": "Europe/Berlin"});
    let spec = json!({"target": "2.0.0-bad", "unmatched": "leave", "groups": [
        {"name": "dev", "selector": "name=dev-"},
        {"name": "prod", "selector": "name=prod-", "window": window, "waitAfterPrevious": "24h"},
    ]});
    assert_eq!(put_policy(&server, &spec).await.0, 200);
    let dev_row = "#policy-table tr[data-group=\"dev\"]";
    let prod_row = "#policy-table tr[data-group=\"prod\"]";
    b.wait_text(&format!("{dev_row} .state"), "halted", LIMIT).await;
    let reason = b.text(&format!("{dev_row} .reason")).await.unwrap();
    assert!(
        reason
            .starts_with(&format!("halted: the canary {} failed: Failed to upgrade to version 2.0.0-bad", dev[0].name)),
        "{reason}"
    );
    b.wait_text(&format!("{dev_row} .failures"), &dev[0].name, LIMIT).await;
    b.wait_text(&format!("{dev_row} .versions"), "1.0.0: 2", LIMIT).await;
    b.wait_text(&format!("{prod_row} .state"), "waiting-for-previous", LIMIT).await;
    b.wait_text(&format!("{prod_row} .reason"), "dev is halted", LIMIT).await;
    b.wait_text(&format!("{prod_row} .window"), "22:00-02:00 Europe/Berlin on sat, sun", LIMIT).await;
    b.wait_text("#pol-target", "2.0.0-bad", LIMIT).await;
    b.screenshot("policy-halted").await;

    // Clearing the halt from the page asks the other dev agent, which rolls the build back too.
    b.click("#pol-clear").await;
    b.wait_text(&format!("{dev_row} .failures"), &dev[1].name, Duration::from_secs(60)).await;

    // A good target, set elsewhere: the page follows by itself.
    let mut good = spec.clone();
    good["target"] = json!("2.0.0");
    assert_eq!(put_policy(&server, &good).await.0, 200);
    b.wait_text(&format!("{dev_row} .state"), "converged", Duration::from_secs(60)).await;
    b.wait_text(&format!("{dev_row} .versions"), "2.0.0: 2", LIMIT).await;
    b.wait_text(&format!("{prod_row} .state"), "waiting", LIMIT).await;
    b.wait_text(&format!("{prod_row} .next"), "at", LIMIT).await;
    b.click("#pol-suspend").await;
    b.wait_text("#pol-mode", "suspended", LIMIT).await;
    b.wait_text(&format!("{prod_row} .state"), "suspended", LIMIT).await;
    b.click("#pol-resume").await;
    b.wait_text("#pol-mode", "enabled", LIMIT).await;
    assert_eq!(b.exec("return window.notReloaded === true;", json!([])).await, json!(true), "no reload");
    b.screenshot("policy-converging").await;
}
