//! The update policy's interfaces with simulated agents: bad input refused with the field named,
//! overlapping selectors told as a warning with the resolution, a `Parameters` body, suspend,
//! resume and halt-clear; an agent upgraded by hand pinned until the target changes; a transient
//! failure retried on the schedule, never halting; `/metrics`; and `agent-server policy`.

use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::{eventually, sim, Server};

use crate::policy::{evaluated, group, put_policy, server, state, status, wait_policy, Clock};
use crate::web_metrics::promtool_accepts;

fn text(v: &Value) -> String {
    v["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string()
}

/// The `policy` part of an agent's `$status`, as name → value.
async fn policy_part(server: &Server, id: &str) -> std::collections::BTreeMap<String, String> {
    let (_, st) = server.get(&format!("fhir/R4/Agent/{id}/$status")).await;
    let part =
        st["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "policy").cloned().unwrap_or(Value::Null);
    part["part"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let v = p.as_object().unwrap().iter().find(|(k, _)| k.starts_with("value")).unwrap().1;
            (p["name"].as_str().unwrap().to_string(), v.as_str().unwrap().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_policies_are_refused_naming_the_field_and_overlaps_are_warnings() {
    let server = Server::start(&[]).await;
    let dev = sim::fleet(&server, "dev", &["1.0.0"], 2, true).await;
    let prod = sim::fleet(&server, "prod", &["1.0.0"], 2, true).await;
    for a in dev.iter().chain(&prod) {
        server.wait_status(&a.id, "connected", "1.0.0", Duration::from_secs(30)).await;
    }
    let (code, none) = server.get("fhir/R4/Policy").await;
    assert_eq!((code, text(&none).starts_with("no update policy is set")), (404, true), "{none}");
    let group = |name: &str, selector: &str| json!({"name": name, "selector": selector});
    let cases = [
        (json!({"target": "2.0.0", "groups": [{"name": "dev", "selector": "name=dev-", "maxInflight": 5}]}),
         "groups[0].maxInflight: unknown field (expected one of: name, selector, window, canary, maxInFlight, waitAfterPrevious, maxFailures, maxFailurePercent, minFinished, growth, timeout)"),
        (json!({"target": "2.0.0", "groups": [group("dev", "name=dev-"), group("qa", "name=qa-")]}),
         "groups[1].selector: 'name=qa-' finds no agent: a group needs members (check the search, or add the agents first)"),
        (json!({"target": "2.0.0", "groups": [{"name": "dev", "selector": "name=dev-", "window": {"start": "02:00", "duration": "2h", "timeZone": "Europe/Atlantis"}}]}),
         "groups[0].window.timeZone: unknown time zone 'Europe/Atlantis': expected a name such as Europe/Berlin"),
        (json!({"target": "0.9.0", "groups": [group("dev", "name=dev-")]}),
         "target: 0.9.0 is older than the version 4 agents it manages run (up to 1.0.0); the policy never downgrades: set allowDowngrade to true to downgrade"),
        (json!({"target": "2.0.0", "groups": [group("dev", "nmae=dev-")]}), "groups[0].selector: Unknown search parameter: nmae"),
        (json!({"target": "latest", "groups": []}),
         "target: latest needs this server to host releases (--releases); otherwise name the version"),
    ];
    for (spec, want) in cases {
        let (code, v) = put_policy(&server, &spec).await;
        assert_eq!((code, text(&v)), (400, want.to_string()), "{spec}");
    }
    assert_eq!(server.get("fhir/R4/Policy").await.0, 404, "nothing set by refused requests");

    // Overlapping selectors: set, with where the agents belong.
    let spec = json!({"target": "2.0.0", "mode": "suspended", "groups": [group("dev", "name=dev-"), group("all", "status=active")]});
    let (code, set) = put_policy(&server, &spec).await;
    assert_eq!(code, 200, "{set}");
    assert_eq!(
        set["warnings"],
        json!(["groups dev and all both find 2 agents (dev-0000, dev-0001): they belong to dev, the first"])
    );
    // Downgrading the target needs allowDowngrade.
    let (code, v) = put_policy(&server, &json!({"target": "1.5.0", "groups": [group("dev", "name=dev-")]})).await;
    assert_eq!((code, text(&v).as_str()), (400, "target: 1.5.0 is older than the current target 2.0.0; the policy never downgrades: set allowDowngrade to true to downgrade"));
    // GET gives back what PUT takes; the same target keeps its generation.
    let (_, got) = server.get("fhir/R4/Policy").await;
    let (code, again) = put_policy(&server, &got).await;
    assert_eq!((code, again["policy"]["generation"].clone()), (200, json!(1)), "{again}");
    // A Parameters body.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "suspended"}, {"name": "target", "valueString": "2.1.0"},
        {"name": "group", "part": [{"name": "name", "valueString": "dev"}, {"name": "selector", "valueString": "name=dev-"},
            {"name": "window", "part": [{"name": "days", "valueCode": "sat"}, {"name": "start", "valueString": "02:00"}, {"name": "duration", "valueString": "2h"}]}]}
    ]});
    let (code, v) = put_policy(&server, &params).await;
    assert_eq!(
        (code, v["policy"]["generation"].clone(), v["policy"]["groups"][0]["window"]["days"].clone()),
        (200, json!(2), json!(["sat"])),
        "{v}"
    );
    let s = status(&server).await;
    assert_eq!(
        (s["mode"].as_str(), state(&s, "dev"), state(&s, "unmatched")),
        (Some("suspended"), "suspended".into(), "suspended".into())
    );
    // A Parameters body is read as strictly as any other; an action takes no parameter.
    let bare = json!({"resourceType": "Parameters", "parameter": [{"name": "target", "value": "9.9.9"}]});
    let (code, v) = put_policy(&server, &bare).await;
    assert_eq!((code, text(&v).as_str()), (400, "parameter[0]: Unknown field in parameter 'target': value"));
    let (code, v) = server.post("fhir/R4/Policy/$resume", json!({"mode": "suspended"})).await;
    assert_eq!((code, text(&v).as_str()), (400, "$resume takes no parameter: send it with an empty body"));
    let (_, got) = server.get("fhir/R4/Policy").await;
    assert_eq!((got["target"].as_str(), got["mode"].as_str()), (Some("2.1.0"), Some("suspended")), "{got}");
    let (code, v) = server.post("fhir/R4/Policy/$halt-clear", Value::Null).await;
    assert_eq!((code, text(&v).as_str()), (409, "no group is halted: there is nothing to clear"));
    let (code, v) = server.post("fhir/R4/Policy/$resume", Value::Null).await;
    assert_eq!((code, v["policy"]["mode"].as_str()), (200, Some("enabled")));
    let (code, _) = server.post("fhir/R4/Policy/$nap", Value::Null).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_upgraded_by_hand_is_pinned_until_the_target_changes() {
    let clock = Clock::new();
    let server = server(&clock, &[]).await;
    let agents = sim::fleet(&server, "pin", &["1.0.0"], 3, true).await;
    let spec = |target: &str| json!({"target": target, "mode": "suspended", "groups": [{"name": "g", "selector": "name=pin-"}]});
    assert_eq!(put_policy(&server, &spec("2.0.0")).await.0, 200);
    let (code, outcome) = server.upgrade(&agents[0].id, "version=1.5.0").await;
    assert_eq!((code, outcome.as_str()), (200, "All OK"));
    assert_eq!(server.post("fhir/R4/Policy/$resume", Value::Null).await.0, 200);
    let done = wait_policy(&server, "g converged", |s| state(s, "g") == "converged").await;
    assert_eq!(group(&done, "g")["states"], json!({"on-target": 2, "pinned-by-operator": 1}), "{done}");
    assert_eq!(server.status(&agents[0].id).await.1, "1.5.0", "the operator's version is left alone");
    let part = policy_part(&server, &agents[0].id).await;
    assert_eq!(part["state"], "pinned-by-operator");
    assert!(part["reason"].starts_with("an operator's $upgrade asked for 1.5.0 since the target was set"), "{part:?}");

    // /metrics: agents per group and state, the group's state.
    let token = server.admin_token().await;
    let metrics = server.http.get(server.url("metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
    promtool_accepts(&metrics);
    assert!(metrics.contains("agent_server_policy_agents{group=\"g\",state=\"pinned-by-operator\"} 1"), "{metrics}");
    assert!(metrics.contains("agent_server_policy_groups{group=\"g\",state=\"converged\"} 1"), "{metrics}");

    // A new target: the pin is over.
    let mut next = spec("2.1.0");
    next["mode"] = json!("enabled");
    assert_eq!(put_policy(&server, &next).await.0, 200);
    for a in &agents {
        server.wait_status(&a.id, "connected", "2.1.0", Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_is_retried_on_the_schedule_and_never_halts() {
    // A policy minute a real second: the retries come after 1, 5, 10 … seconds.
    let real0 = edge_agent_base::time::now_ms();
    let server = Server::start(&["--policy-time-scale", "60", "--policy-time-origin", &real0.to_string()]).await;
    let agents = sim::fleet(&server, "t", &["1.0.0"], 1, true).await;
    // The simulated agents answer a version no release source publishes as agents do: transient.
    let spec = json!({"target": "2.0.0-missing", "groups": [{"name": "g", "selector": "name=t-"}]});
    assert_eq!(put_policy(&server, &spec).await.0, 200);
    let part = eventually(Duration::from_secs(60), "the agent retrying", || async {
        Some(policy_part(&server, &agents[0].id).await)
            .filter(|p| p.get("state").map(String::as_str) == Some("retrying"))
    })
    .await;
    assert!(
        part["reason"].starts_with("attempt 1 failed: Error during upgrading to version 'v2.0.0-missing'"),
        "{part:?}"
    );
    assert!(part.contains_key("retryAt"), "{part:?}");
    let attempt = |n: u32| {
        let server = &server;
        let id = agents[0].id.clone();
        async move {
            eventually(Duration::from_secs(60), &format!("attempt {n} failed"), || async {
                Some(policy_part(server, &id).await).filter(|p| p["reason"].starts_with(&format!("attempt {n} failed")))
            })
            .await
        }
    };
    let retry_at = |p: &std::collections::BTreeMap<String, String>| crate::policy::ms(&p["retryAt"]);
    let (first, second, third) = (retry_at(&part), retry_at(&attempt(2).await), retry_at(&attempt(3).await));
    // Each attempt comes at its retry time (within an evaluation or two), then waits the next delay.
    let minutes = |d: i64| d as f64 / 60_000.0;
    assert!((5.0..7.0).contains(&minutes(second - first)), "5 minutes after the second: {}", minutes(second - first));
    assert!((10.0..12.0).contains(&minutes(third - second)), "10 after the third: {}", minutes(third - second));
    evaluated(&server, 4).await;
    let s = status(&server).await;
    assert_ne!(state(&s, "g"), "halted", "a transient failure never halts: {s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_command_sets_shows_suspends_and_resumes() {
    let server = Server::start(&[]).await;
    let _a = sim::fleet(&server, "cli", &["1.0.0"], 2, true).await;
    let (id, secret) = server.admin();
    let cli = |args: &[&str]| {
        std::process::Command::new(edge_agent_e2e::server_bin())
            .arg("policy")
            .args(args)
            .env("AGENT_SERVER_URL", server.url("/"))
            .env("AGENT_SERVER_CLIENT_ID", &id)
            .env("AGENT_SERVER_CLIENT_SECRET", &secret)
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "target = \"2.0.0\"\n[[groups]]\nname = \"first\"\nselector = \"name:exact=cli-0000\"\n\n[[groups]]\nname = \"rest\"\nselector = \"name=cli-\"\nwaitAfterPrevious = \"1h\"\n").unwrap();
    let out = cli(&["set", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("warning: groups first and rest both find 1 agent (cli-0000): they belong to first, the first"),
        "{stdout}"
    );
    assert!(stdout.ends_with("policy set: target 2.0.0 (generation 1)\n"), "{stdout}");
    let shown = eventually(Duration::from_secs(30), "the first group converged", || async {
        let out = cli(&["show"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("1. first [name:exact=cli-0000] converged").then_some(text)
    })
    .await;
    assert!(shown.starts_with("update policy enabled: target 2.0.0 (generation 1, set "), "{shown}");
    assert!(shown.contains("2. rest [name=cli-] "), "{shown}");
    assert_eq!(String::from_utf8_lossy(&cli(&["suspend"]).stdout), "policy suspended\n");
    let out = cli(&["show", "--json"]);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["mode"], "suspended");
    assert_eq!(String::from_utf8_lossy(&cli(&["resume"]).stdout), "policy resumed\n");
    std::fs::write(&file, "target = \"2.0.0\"\n[[groups]]\nname = \"first\"\nselector = \"name=cli-\"\ncanary = 0\n")
        .unwrap();
    let out = cli(&["set", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "policy.toml: groups[0].canary: Invalid value '0' for rollout parameter 'canary': expected 1 to 1000000"
        ),
        "{err}"
    );
    let out = std::process::Command::new(edge_agent_e2e::server_bin())
        .args(["policy", "show"])
        .env_remove("AGENT_SERVER_CLIENT_ID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "no credentials: a usage error");
}

/// The update policy's own steps on its rollouts (one made for a group, paused while the policy is
/// suspended, resumed with it) are in the audit trail, by the server's update policy, each naming
/// its rollout. (The silent agent's request times out after the default 45 s, which would end the
/// rollout: the test takes a few seconds.)
#[tokio::test(flavor = "multi_thread")]
async fn the_policys_own_steps_on_its_rollouts_are_audited() {
    let server = Server::start(&[]).await;
    // An agent that never answers its upgrade request: the rollout stays active, to be paused.
    let _silent = sim::recorder(&server, "aud-0", "1.0.0").await;
    let spec = json!({"target": "2.0.0", "groups": [{"name": "all", "selector": "name=aud-"}]});
    assert_eq!(put_policy(&server, &spec).await.0, 200);
    let token = server.admin_token().await;
    let policy_steps = || async {
        let (events, _) = crate::audit::trail(&server, &token, "").await;
        let by_policy = |e: &&Value| {
            e["agent"][0]["who"] == json!({"reference": "Device/edge-agent-server", "display": "update policy"})
        };
        let steps: Vec<(String, String, String)> = events
            .iter()
            .filter(by_policy)
            .map(|e| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (text(&e["subtype"][0]["code"]), text(&e["outcomeDesc"]), text(&e["entity"][0]["what"]["reference"]))
            })
            .collect();
        steps
    };
    let made = eventually(Duration::from_secs(30), "the group's rollout made", || async {
        let steps = policy_steps().await;
        (!steps.is_empty()).then_some(steps)
    })
    .await;
    let rollout = made[0].2.clone();
    assert_eq!(
        made,
        [("rollout-create".into(), "Rollout of group all started by the update policy".into(), rollout.clone())]
    );
    let id = rollout.strip_prefix("Rollout/").expect("the event names the rollout");
    let (_, r) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
    assert_eq!(r["state"], "active", "{r}");
    for (op, state) in [("$suspend", "paused"), ("$resume", "active")] {
        assert_eq!(server.post(&format!("fhir/R4/Policy/{op}"), Value::Null).await.0, 200);
        eventually(Duration::from_secs(30), state, || async {
            let (_, r) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
            (r["state"] == state).then_some(())
        })
        .await;
    }
    let step = |code: &str, desc: &str| (code.to_string(), desc.to_string(), rollout.clone());
    assert_eq!(
        policy_steps().await,
        [
            step("rollout-create", "Rollout of group all started by the update policy"),
            step("rollout-pause", "Rollout paused by the update policy"),
            step("rollout-resume", "Rollout resumed by the update policy"),
        ]
    );
}
