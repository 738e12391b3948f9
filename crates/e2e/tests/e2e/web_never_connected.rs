//! The page in headless Chromium for an agent that was added and never connected: "never
//! connected" with the date it was added, no made-up version, the overview's tile in the same
//! words; and the agent once it connects.

use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::json;

use edge_agent_e2e::browser::Browser;
use edge_agent_e2e::{AgentHome, Server, FAST};

use crate::web::sign_in;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_never_connected_says_so_with_the_date_it_was_added() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("never-clinic");
    let (_, resource) = server.get(&format!("fhir/R4/Agent/{id}")).await;
    let added_iso = resource["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let b = Browser::start().await;
    sign_in(&b, &server).await;
    // The date as the page's locale writes it.
    let added = b.exec("return new Date(arguments[0]).toLocaleString();", json!([added_iso])).await;
    let added = format!("added {}", added.as_str().unwrap());

    let tile = b.wait_text("#count-unknown", "1", LIMIT).await;
    assert_eq!(tile.split_whitespace().collect::<Vec<_>>(), ["1", "never", "connected"], "{tile}");
    b.wait_text("#versions-legend", "never connected: 1", LIMIT).await;
    b.screenshot("never-connected-overview").await;

    b.click("#nav-agents").await;
    let row = format!("#agents-table tr[data-id=\"{id}\"]");
    b.wait_text(&format!("{row} .state"), "never connected", LIMIT).await;
    assert_eq!(b.text(&format!("{row} .version")).await.as_deref(), Some("—"));
    assert_eq!(b.text(&format!("{row} .since")).await.as_deref(), Some(added.as_str()));
    // The state filter offers it in the same words.
    let option =
        b.exec("return document.querySelector('#f-state option[value=unknown]').textContent;", json!([])).await;
    assert_eq!(option, json!("never connected"));
    b.screenshot("never-connected-agents").await;

    b.click(&format!("{row} a")).await;
    b.wait_text("#agent-state", "never connected", LIMIT).await;
    assert_eq!(b.text("#agent-version").await.as_deref(), Some("—"));
    assert_eq!(b.text("#agent-since").await.as_deref(), Some(added.as_str()));
    b.screenshot("never-connected-agent").await;

    // Once it connects, the page shows it live: its state and real version.
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let _agent = home.run();
    b.wait_text("#agent-state", "connected", LIMIT).await;
    b.wait_text("#agent-version", SOURCE_VERSION, LIMIT).await;
    assert!(!b.text("#agent-state").await.unwrap().contains("never"));
}
