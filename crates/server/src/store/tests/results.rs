//! The upgrade-results and fleet part of the store suite, on both backends: the web page's
//! history, overview counts and agent table must give the same answers in the same order.

use edge_agent_wire::{AgentStatus, Target};
use semver::Version;
use serde_json::json;

use crate::model::agent::StatusRow;
use crate::model::fleet::{Sort, TableQuery};
use crate::model::result::{Outcome, UpgradeResult};
use crate::store::Store;

fn result(agent_id: &str, at: &str, outcome: Outcome, text: &str) -> UpgradeResult {
    UpgradeResult {
        agent_id: agent_id.into(),
        at: at.into(),
        requested: Target::Exact(Version::new(1, 3, 0)),
        force: outcome == Outcome::Failed,
        from: "1.2.0".into(),
        outcome,
        text: text.into(),
    }
}

/// Four agents: three seen (two on 1.3.0), one never seen; their ids by name.
async fn fleet(store: &dyn Store) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, (name, version)) in
        [("b-lab", "1.2.0"), ("A-clinic", "1.3.0"), ("c-Clinic", "1.3.0"), ("d-spare", "")].into_iter().enumerate()
    {
        let row = store.create_agent(name, "active", &json!([{"value": format!("site-{i}")}]), None).await.unwrap();
        if !version.is_empty() {
            let status = if i == 0 { AgentStatus::Disconnected } else { AgentStatus::Connected };
            let s = StatusRow { status, version: version.into(), updated: format!("2026-01-0{}", i + 1) };
            store.save_statuses(&[(row.id.clone(), s)]).await.unwrap();
        }
        ids.push(row.id);
    }
    ids
}

async fn results_history_and_latest(store: &dyn Store, ids: &[String]) {
    let (lab, clinic, c_clinic) = (&ids[0], &ids[1], &ids[2]);
    store.insert_result(&result(lab, "2026-02-01T00:00:00Z", Outcome::Succeeded, "All OK")).await.unwrap();
    let rolled = "Failed to upgrade to version 1.3.0. Agent still running with version 1.2.0";
    store.insert_result(&result(lab, "2026-02-02T00:00:00Z", Outcome::RolledBack, rolled)).await.unwrap();
    store.insert_result(&result(clinic, "2026-02-03T00:00:00Z", Outcome::Succeeded, "All OK")).await.unwrap();
    store.insert_result(&result(c_clinic, "2026-02-04T00:00:00Z", Outcome::TimedOut, "Timeout")).await.unwrap();

    let history = store.history(lab, 10).await.unwrap();
    let told: Vec<(Outcome, &str)> = history.iter().map(|r| (r.outcome, r.text.as_str())).collect();
    assert_eq!(told, [(Outcome::RolledBack, rolled), (Outcome::Succeeded, "All OK")], "newest first");
    assert_eq!(history[0].requested.label(), "1.3.0");
    assert_eq!((history[0].from.as_str(), history[0].force), ("1.2.0", false));
    assert_eq!(store.history(lab, 1).await.unwrap().len(), 1);
    assert!(store.history(&ids[3], 10).await.unwrap().is_empty());

    // Each agent's last result only, failures first, then newest first.
    let latest = store.latest_results(10).await.unwrap();
    let named: Vec<(&str, Outcome)> = latest.iter().map(|(n, r)| (n.as_str(), r.outcome)).collect();
    assert_eq!(
        named,
        [("c-Clinic", Outcome::TimedOut), ("b-lab", Outcome::RolledBack), ("A-clinic", Outcome::Succeeded)]
    );
    assert_eq!(store.latest_results(1).await.unwrap().len(), 1);
}

async fn table(store: &dyn Store, ids: &[String]) {
    let names = |q: TableQuery| async move {
        let page = store.fleet_table(&TableQuery { size: 50, ..q }).await.unwrap();
        (page.total, page.rows.into_iter().map(|r| format!("{}@{}", r.name, r.version)).collect::<Vec<_>>())
    };
    let all = names(TableQuery::default()).await;
    let want = ["A-clinic@1.3.0", "b-lab@1.2.0", "c-Clinic@1.3.0", "d-spare@unknown"];
    assert_eq!(all, (4, want.map(String::from).to_vec()), "by name, ignoring case");
    let text = |t: &str| TableQuery { text: Some(t.into()), ..Default::default() };
    assert_eq!(names(text("CLINIC")).await.0, 2);
    assert_eq!(names(text("site-1")).await.1, ["A-clinic@1.3.0"], "identifier values match too");
    assert_eq!(names(text("c_c")).await.0, 0, "LIKE wildcards are plain text");
    let state = |s: &str| TableQuery { state: AgentStatus::parse(s), ..Default::default() };
    assert_eq!(names(state("unknown")).await.1, ["d-spare@unknown"]);
    assert_eq!(names(state("disconnected")).await.1, ["b-lab@1.2.0"]);
    assert_eq!(names(TableQuery { version: Some("1.3.0".into()), ..Default::default() }).await.0, 2);
    let not = names(TableQuery { not_version: Some("1.3.0".into()), ..Default::default() }).await;
    assert_eq!(not.1, ["b-lab@1.2.0", "d-spare@unknown"], "never seen is on no version");
    let failed = names(TableQuery { last_failed: true, ..Default::default() }).await;
    assert_eq!(failed.1, ["b-lab@1.2.0", "c-Clinic@1.3.0"]);

    let sorted = |sort, descending| names(TableQuery { sort, descending, ..Default::default() });
    let by_version = sorted(Sort::Version, true).await.1;
    assert_eq!(by_version, ["c-Clinic@1.3.0", "A-clinic@1.3.0", "b-lab@1.2.0", "d-spare@unknown"], "wholly reversed");
    assert_eq!(sorted(Sort::Version, false).await.1[0], "d-spare@unknown", "never seen first ascending");
    let by_last = sorted(Sort::LastUpgrade, false).await.1;
    assert_eq!(by_last, ["d-spare@unknown", "b-lab@1.2.0", "A-clinic@1.3.0", "c-Clinic@1.3.0"]);
    assert_eq!(sorted(Sort::State, false).await.1[..2], ["d-spare@unknown".to_string(), "A-clinic@1.3.0".into()]);
    assert_eq!(sorted(Sort::Since, true).await.1[0], "c-Clinic@1.3.0");

    let second = store.fleet_table(&TableQuery { size: 3, page: 1, ..Default::default() }).await.unwrap();
    assert_eq!((second.total, second.rows.len(), second.rows[0].name.as_str()), (4, 1, "d-spare"));
    let row = &store.fleet_table(&TableQuery { size: 5, ..text("site-0") }).await.unwrap().rows[0];
    assert_eq!((row.state.as_str(), row.since.as_deref()), ("disconnected", Some("2026-01-01")));
    assert_eq!(
        (row.last_outcome.as_deref(), row.last_at.as_deref()),
        (Some("rolled_back"), Some("2026-02-02T00:00:00Z"))
    );
    assert_eq!(row.identifiers, json!([{"value": "site-0"}]));

    let mut every = store.fleet_ids(&TableQuery { size: 1, ..text("clinic") }).await.unwrap();
    every.sort();
    let mut want = vec![ids[1].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(every, want, "every page, not one");
}

async fn results_and_fleet(store: &dyn Store) {
    let ids = fleet(store).await;
    let c = store.fleet_counts().await.unwrap();
    assert_eq!(c.total, 4);
    assert_eq!(c.states, [("connected".into(), 2), ("disconnected".into(), 1), ("unknown".into(), 1)]);
    assert_eq!(c.versions, [("1.3.0".into(), 2), ("1.2.0".into(), 1), ("unknown".into(), 1)]);
    assert_eq!(store.status_since(&ids[2]).await.unwrap().as_deref(), Some("2026-01-03"));
    assert_eq!(store.status_since(&ids[3]).await.unwrap(), None);
    assert_eq!(store.status_since("no-such-agent").await.unwrap(), None);
    results_history_and_latest(store, &ids).await;
    table(store, &ids).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn results_and_fleet_queries_in_the_store_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    results_and_fleet(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn results_and_fleet_queries_in_the_store_on_postgres() {
    results_and_fleet(super::postgres().await.as_ref()).await;
}
