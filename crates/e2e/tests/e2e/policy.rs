//! The update policy end to end with real agents between two real builds, each agent with its
//! own release server so that the test can count (and time) what each one was asked: groups
//! converge in order with their waits, a broken build halts at the first group's canary and
//! nobody later is asked, a server killed mid-policy resumes without asking anyone twice. The
//! policy's clock runs an hour per real second (`--policy-time-scale`), so waits of hours take
//! seconds.

use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::{eventually, next_version, Server};

use crate::rollout::{member, Member};

/// One policy hour a real second.
pub(crate) const SCALE: i64 = 3600;
/// The policy's clock starts here (a Monday), when the test starts its server.
pub(crate) const DAY0: &str = "2026-03-02T00:00:00Z";

/// The policy's clock of a test: at `real0` it reads [`DAY0`], and runs [`SCALE`] times faster.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) real0: i64,
    pub(crate) policy0: i64,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let policy0 = DAY0.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        Clock { real0: edge_agent_base::time::now_ms(), policy0 }
    }
    /// The server flags that set this clock.
    pub(crate) fn flags(&self) -> Vec<String> {
        let origin = format!("{}={DAY0}", self.real0);
        ["--policy-time-scale", &SCALE.to_string(), "--policy-time-origin", &origin].map(String::from).to_vec()
    }
    /// The policy's time at real time `ms`.
    pub(crate) fn at(&self, ms: i64) -> i64 {
        self.policy0 + (ms - self.real0) * SCALE
    }
}

pub(crate) fn ms(iso: &str) -> i64 {
    iso.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

/// A server whose policy clock is `clock`, plus `extra` flags.
pub(crate) async fn server(clock: &Clock, extra: &[&str]) -> Server {
    let mut flags: Vec<String> = ["--heartbeat-interval", "0.3"].map(String::from).to_vec();
    flags.extend(clock.flags());
    flags.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// `PUT Policy`: (status, body).
pub(crate) async fn put_policy(server: &Server, spec: &Value) -> (u16, Value) {
    let token = server.admin_token().await;
    let resp =
        server.http.put(server.url("fhir/R4/Policy")).bearer_auth(token).body(spec.to_string()).send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn status(server: &Server) -> Value {
    let (code, v) = server.get("fhir/R4/Policy/$status").await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Polls the policy's status until `done` holds.
pub(crate) async fn wait_policy(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(90), what, || async {
        let (code, v) = server.get("fhir/R4/Policy/$status").await;
        (code == 200 && done(&v)).then_some(v)
    })
    .await
}

/// The status of the group named `name`.
pub(crate) fn group<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no {name}: {status}"))
}

pub(crate) fn state(status: &Value, name: &str) -> String {
    group(status, name)["state"].as_str().unwrap_or_default().to_string()
}

pub(crate) fn all_converged(status: &Value) -> bool {
    status["groups"].as_array().unwrap().iter().all(|g| g["state"] == "converged")
}

/// Whether `name` has converged with all its agents on the target in the records. A group
/// converges once every agent reported success; an agent whose new version is not recorded yet
/// counts as pending until it is.
pub(crate) fn converged_on_target(status: &Value, name: &str) -> bool {
    let g = group(status, name);
    g["state"] == "converged" && g["states"].as_object().is_some_and(|s| s.keys().all(|k| k == "on-target"))
}

/// How many times the driving node has evaluated the policy, by `/metrics`.
pub(crate) async fn evaluations(server: &Server) -> u64 {
    let token = server.admin_token().await;
    let text = server.http.get(server.url("metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("agent_server_policy_evaluations_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the policy has been evaluated `n` more times: what was to happen by then has.
pub(crate) async fn evaluated(server: &Server, n: u64) {
    let from = evaluations(server).await;
    eventually(Duration::from_secs(60), &format!("{n} more evaluations of the policy"), || async {
        (evaluations(server).await >= from + n).then_some(())
    })
    .await
}

/// Real agents named `<prefix>-<i>`, online.
async fn members(server: &Server, prefix: &str, n: usize, broken: bool) -> Vec<Member> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(member(server, &format!("{prefix}-{i}"), broken, true).await);
    }
    out
}

fn at(status: &Value, name: &str, field: &str) -> i64 {
    ms(group(status, name)[field].as_str().unwrap_or_else(|| panic!("no {field} in {name}: {status}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_groups_converge_in_order_each_after_its_wait() {
    let clock = Clock::new();
    let server = server(&clock, &[]).await;
    let (dev, staging, prod) = (
        members(&server, "dev", 1, false).await,
        members(&server, "stage", 1, false).await,
        members(&server, "prod", 2, false).await,
    );
    let next = next_version();
    let spec = json!({"target": next, "unmatched": "leave", "groups": [
        {"name": "dev", "selector": "name=dev-"},
        {"name": "staging", "selector": "name=stage-", "waitAfterPrevious": "2h"},
        {"name": "prod", "selector": "name=prod-", "waitAfterPrevious": "3h"},
    ]});
    let (code, set) = put_policy(&server, &spec).await;
    assert_eq!(code, 200, "{set}");
    assert_eq!(set["warnings"], json!([]));
    let first = status(&server).await;
    assert_eq!(state(&first, "prod"), "waiting-for-previous", "{first}");
    assert_eq!(group(&first, "prod")["reason"], "waiting for dev to converge");

    let done = wait_policy(&server, "every group converged, every agent on the target", |s| {
        ["dev", "staging", "prod"].iter().all(|g| converged_on_target(s, g))
    })
    .await;
    for m in dev.iter().chain(&staging).chain(&prod) {
        server.wait_status(&m.id, "connected", &next, Duration::from_secs(30)).await;
        assert_eq!(m.asks(&next), 1, "each agent asked once");
    }
    // Each group started its wait after the one before converged, and asked nobody before.
    assert!(at(&done, "staging", "startedAt") >= at(&done, "dev", "convergedAt") + 2 * 3_600_000, "{done}");
    assert!(at(&done, "prod", "startedAt") >= at(&done, "staging", "convergedAt") + 3 * 3_600_000, "{done}");
    let asked = |ms: &[Member]| ms.iter().map(|m| clock.at(m.asked_at(&next)[0])).collect::<Vec<_>>();
    assert!(asked(&staging)[0] >= at(&done, "staging", "startedAt"), "{done}");
    assert!(asked(&prod).iter().all(|&t| t >= at(&done, "prod", "startedAt")), "{done}");
    assert!(asked(&dev)[0] < asked(&staging)[0] && asked(&staging)[0] < asked(&prod)[0]);
    assert_eq!(group(&done, "prod")["versions"], json!({ next.clone(): 2 }));
    assert_eq!(group(&done, "prod")["states"], json!({"on-target": 2}));
    // Each agent's $status tells its policy state.
    let (_, st) = server.get(&format!("fhir/R4/Agent/{}/$status", prod[1].id)).await;
    let part = st["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "policy").unwrap().clone();
    assert_eq!(part["part"][0], json!({"name": "group", "valueString": "prod"}));
    assert_eq!(part["part"][1], json!({"name": "state", "valueCode": "on-target"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_build_halts_at_the_first_groups_canary_and_later_groups_are_never_asked() {
    let clock = Clock::new();
    let server = server(&clock, &[]).await;
    let dev = members(&server, "dev", 2, true).await;
    let (staging, prod) = (members(&server, "stage", 1, false).await, members(&server, "prod", 1, false).await);
    let next = next_version();
    let spec = json!({"target": next, "unmatched": "leave", "groups": [
        {"name": "dev", "selector": "name=dev-", "canary": 1},
        {"name": "staging", "selector": "name=stage-"},
        {"name": "prod", "selector": "name=prod-"},
    ]});
    assert_eq!(put_policy(&server, &spec).await.0, 200);
    let halted = wait_policy(&server, "dev halted", |s| state(s, "dev") == "halted").await;
    let reason = group(&halted, "dev")["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("halted: the canary dev-0 failed: Error during upgrading to version"), "{reason}");
    assert!(reason.contains("self-check failed"), "{reason}");
    assert_eq!(group(&halted, "dev")["halt"]["failures"][0]["name"], "dev-0", "{halted}");
    // The policy goes on looking, and asks nobody else.
    evaluated(&server, 8).await;
    let still = status(&server).await;
    assert_eq!(
        (state(&still, "dev"), state(&still, "staging"), state(&still, "prod")),
        ("halted".into(), "waiting-for-previous".into(), "waiting-for-previous".into())
    );
    assert_eq!(group(&still, "staging")["reason"], "dev is halted");
    assert_eq!(dev.iter().map(|m| m.asks(&next)).collect::<Vec<_>>(), [1, 0], "the canary only");
    assert_eq!((staging[0].asks(&next), prod[0].asks(&next)), (0, 0), "later groups never asked");
    assert_eq!(group(&still, "dev")["states"]["failed"], 1, "a definite failure: {still}");

    // Cleared: dev goes on with the agent left, whose upgrade fails for good too, and halts again.
    let (code, _) = server.post("fhir/R4/Policy/$halt-clear", Value::Null).await;
    assert_eq!(code, 200);
    wait_policy(&server, "dev halted again", |s| {
        state(s, "dev") == "halted" && group(s, "dev")["states"]["failed"] == 2
    })
    .await;
    assert_eq!(dev.iter().map(|m| m.asks(&next)).collect::<Vec<_>>(), [1, 1], "the failed canary is not asked again");
    assert_eq!((staging[0].asks(&next), prod[0].asks(&next)), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_policy_resumes_without_asking_anyone_twice() {
    let clock = Clock::new();
    let mut server = server(&clock, &[]).await;
    let dev = members(&server, "dev", 4, false).await;
    let prod = members(&server, "prod", 1, false).await;
    let next = next_version();
    let spec = json!({"target": next, "unmatched": "leave", "groups": [
        {"name": "dev", "selector": "name=dev-", "growth": 1, "maxInFlight": 1},
        {"name": "prod", "selector": "name=prod-", "waitAfterPrevious": "1h"},
    ]});
    assert_eq!(put_policy(&server, &spec).await.0, 200);
    wait_policy(&server, "dev rolling, an agent upgraded", |s| {
        state(s, "dev") == "rolling" && group(s, "dev")["states"]["on-target"].as_u64() >= Some(1)
    })
    .await;
    server.restart();
    let done = wait_policy(&server, "every group converged after the restart", all_converged).await;
    for m in dev.iter().chain(&prod) {
        server.wait_status(&m.id, "connected", &next, Duration::from_secs(30)).await;
    }
    assert_eq!(
        dev.iter().chain(&prod).map(|m| m.asks(&next)).collect::<Vec<_>>(),
        [1, 1, 1, 1, 1],
        "nobody asked twice"
    );
    assert!(at(&done, "prod", "startedAt") >= at(&done, "dev", "convergedAt") + 3_600_000, "{done}");
}
