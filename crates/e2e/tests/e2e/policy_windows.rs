//! The update policy's windows end to end, with real agents between two real builds and the
//! policy's clock at an hour per real second: an agent offline during its group's window, and an
//! agent added after its group converged, are both upgraded in the group's next window, with no
//! rollout started by hand, and nobody is asked outside a window.

use std::time::Duration;

use serde_json::json;

use edge_agent_base::build_info::SOURCE_VERSION;
use edge_agent_e2e::next_version;

use crate::policy::{converged_on_target, group, ms, put_policy, server, state, status, wait_policy, Clock};
use crate::rollout::member;

const HOUR: i64 = 3_600_000;

/// Whether `t` (the policy's clock) falls in the daily window opening at `start` (hour of the
/// day, UTC) for `hours`.
fn in_window(t: i64, start: i64, hours: i64) -> bool {
    let hour_of_day = t.rem_euclid(24 * HOUR) as f64 / HOUR as f64;
    let from_start = (hour_of_day - start as f64).rem_euclid(24.0);
    from_start < hours as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_offline_in_the_window_or_added_later_are_upgraded_in_the_next_window() {
    let clock = Clock::new();
    let server = server(&clock, &[]).await;
    let dev = member(&server, "dev-0", false, true).await;
    let prod0 = member(&server, "prod-0", false, true).await;
    let mut offline = member(&server, "prod-1", false, false).await;
    let next = next_version();
    // The window opens two hours from now on the policy's clock (two real seconds), for 4 hours.
    let now = clock.at(edge_agent_base::time::now_ms());
    let start = (now / HOUR + 2) % 24;
    let window = json!({"start": format!("{start:02}:00"), "duration": "4h", "timeZone": "UTC"});
    let spec = json!({"target": next, "unmatched": "leave", "groups": [
        {"name": "dev", "selector": "name=dev-"},
        {"name": "prod", "selector": "name=prod-", "window": window},
    ]});
    let (code, set) = put_policy(&server, &spec).await;
    assert_eq!(code, 200, "{set}");

    // prod converges in its window without the offline agent.
    let converged = wait_policy(&server, "prod converged, prod-0 on the target in the records", |s| {
        state(s, "prod") == "converged" && group(s, "prod")["states"]["on-target"] == 1
    })
    .await;
    server.wait_status(&prod0.id, "connected", &next, Duration::from_secs(30)).await;
    let asked = clock.at(prod0.asked_at(&next)[0]);
    assert!(in_window(asked, start, 4), "asked at {asked}, inside the window from {start}:00");
    assert_eq!(group(&converged, "prod")["states"], json!({"on-target": 1, "pending": 1}), "{converged}");
    assert_eq!((dev.asks(&next), offline.asks(&next)), (1, 0));

    // After the window closes: the offline agent comes back, and a new agent joins prod.
    let closed =
        wait_policy(&server, "prod's window closed", |s| !in_window(ms(s["now"].as_str().unwrap()), start, 4)).await;
    let opening = ms(closed["now"].as_str().unwrap()) / (24 * HOUR) * (24 * HOUR) + start * HOUR;
    let opening = if opening <= ms(closed["now"].as_str().unwrap()) { opening + 24 * HOUR } else { opening };
    offline.start();
    server.wait_status(&offline.id, "connected", SOURCE_VERSION, Duration::from_secs(30)).await;
    let late = member(&server, "prod-2", false, true).await;
    let waiting = wait_policy(&server, "prod waiting for its window with two agents", |s| {
        state(s, "prod") == "waiting-for-window" && group(s, "prod")["next"]["action"] == "ask 2 agents"
    })
    .await;
    let prod = group(&waiting, "prod");
    assert_eq!(ms(prod["next"]["at"].as_str().unwrap()), opening, "the next opening: {prod}");
    assert!(prod["reason"].as_str().unwrap().starts_with(&format!("outside its window ({start:02}:00-")), "{prod}");
    let (_, st) = server.get(&format!("fhir/R4/Agent/{}/$status", late.id)).await;
    let part = st["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "policy").unwrap().clone();
    assert_eq!(part["part"][1], json!({"name": "state", "valueCode": "pending"}), "{part}");
    assert_eq!((offline.asks(&next), late.asks(&next)), (0, 0), "nobody asked outside the window");

    // The next window: both are upgraded, with no rollout started by hand.
    for m in [&offline, &late] {
        server.wait_status(&m.id, "connected", &next, Duration::from_secs(60)).await;
        let t = clock.at(m.asked_at(&next)[0]);
        assert!(t >= opening && in_window(t, start, 4), "asked at {t}, in the window opening at {opening}");
    }
    assert_eq!((dev.asks(&next), prod0.asks(&next), offline.asks(&next), late.asks(&next)), (1, 1, 1, 1));
    let done = wait_policy(&server, "prod converged again", |s| converged_on_target(s, "prod")).await;
    assert_eq!(group(&done, "prod")["versions"][next.as_str()], 3, "{done}");
    assert_eq!(status(&server).await["groups"].as_array().unwrap().len(), 2);
}
