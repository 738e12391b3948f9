//! The policy part of the store suite, on both backends: one policy, written only over the
//! revision its writer read; its run; each agent's attempts; the manual upgrades since a time.

use edge_agent_wire::Target;
use semver::Version;
use serde_json::json;

use crate::model::failure::FailureKind;
use crate::model::policy_run::{Attempt, GroupRun, Record, Run};
use crate::model::result::{Outcome, UpgradeResult};
use crate::store::policy::PolicyRow;
use crate::store::Store;

fn row(revision: i64, generation: i64) -> PolicyRow {
    PolicyRow {
        spec: json!({"mode": "enabled", "target": "2.0.0", "groups": []}),
        generation,
        set_at: 1_000,
        clears: 0,
        from_latest: true,
        revision,
        run: Run::default(),
    }
}

fn record(agent: &str, generation: i64, last: Attempt) -> Record {
    let retry_at = matches!(last, Attempt::Failed(FailureKind::Transient)).then_some(70_000);
    let reason = Some("download failed".to_string());
    Record { agent_id: agent.into(), generation, failures: 1, last, reason, at: 10_000, retry_at, rollout: "r1".into() }
}

async fn policy(store: &dyn Store) {
    assert_eq!(store.policy().await.unwrap(), None);
    assert!(store.put_policy(&row(1, 1), None).await.unwrap());
    assert!(!store.put_policy(&row(1, 1), None).await.unwrap(), "one policy per server");
    assert_eq!(store.policy().await.unwrap(), Some(row(1, 1)));
    // Two writers that read revision 1: the first wins, the second is told to read again.
    assert!(store.put_policy(&row(2, 2), Some(1)).await.unwrap());
    assert!(!store.put_policy(&row(2, 3), Some(1)).await.unwrap());
    assert_eq!(store.policy().await.unwrap().unwrap().generation, 2);

    let run = Run {
        generation: 2,
        clears: 0,
        groups: vec![GroupRun {
            name: "dev".into(),
            started_at: Some(5),
            rollout: Some("r1".into()),
            ..GroupRun::default()
        }],
    };
    store.save_policy_run(&run).await.unwrap();
    let back = store.policy().await.unwrap().unwrap();
    assert_eq!((back.run, back.revision), (run, 2), "the run is written without touching the revision");

    let transient = Attempt::Failed(FailureKind::Transient);
    let records = vec![
        record("a", 2, transient),
        record("b", 2, Attempt::Failed(FailureKind::Definite)),
        record("c", 1, Attempt::Succeeded),
    ];
    store.save_policy_records(&records).await.unwrap();
    let mut found = store.policy_records(2).await.unwrap();
    found.sort_by(|x, y| x.agent_id.cmp(&y.agent_id));
    assert_eq!(found, records[..2], "the records of one generation");
    let again = Record { failures: 2, rollout: "r2".into(), ..record("a", 2, Attempt::Succeeded) };
    store.save_policy_records(std::slice::from_ref(&again)).await.unwrap();
    let a = store.policy_records(2).await.unwrap().into_iter().find(|r| r.agent_id == "a").unwrap();
    assert_eq!(a, again, "an agent's record replaces its last");

    let x = store.create_agent("x", "active", &json!([]), None).await.unwrap();
    assert_eq!(store.agent_count().await.unwrap(), 1);
    assert_eq!(store.agent_names().await.unwrap(), [(x.id.clone(), "x".to_string())]);
    for (at, requested) in [("2026-01-01T00:00:00.000Z", Some("1.5.0")), ("2026-02-01T00:00:00.000Z", None)] {
        let target = Target::from(requested.map(|v| Version::parse(v).unwrap()));
        let r = UpgradeResult {
            agent_id: x.id.clone(),
            at: at.into(),
            requested: target,
            force: false,
            from: "1.0.0".into(),
            outcome: Outcome::Succeeded,
            text: "All OK".into(),
        };
        store.insert_result(&r).await.unwrap();
    }
    let all = store.manual_upgrades_since("2026-01-01T00:00:00.000Z", 0).await.unwrap();
    assert_eq!(
        all.iter().map(|(_, a, v)| (a.as_str(), v.as_deref())).collect::<Vec<_>>(),
        [(x.id.as_str(), Some("1.5.0")), (x.id.as_str(), None)]
    );
    let later = store.manual_upgrades_since("2026-01-15T00:00:00.000Z", 0).await.unwrap();
    assert_eq!(later.len(), 1);
    assert!(store.manual_upgrades_since("2026-01-01T00:00:00.000Z", all[1].0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_in_the_store_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    policy(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_in_the_store_on_postgres() {
    policy(super::postgres().await.as_ref()).await;
}
