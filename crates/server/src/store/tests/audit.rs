//! The audit part of the store suite, on both backends: one entity's events are read from the
//! entity's own index (by date at most), and that path answers exactly what the general search
//! answers for the same question, page by page, both ways, with date bounds and totals.

use crate::model::audit::{AuditQuery, AuditRecord, Ref, REST};
use crate::model::query::{DatePrefix, InstantFilter};
use crate::store::audit::event;
use crate::store::Store;

async fn audit(store: &dyn Store) {
    // 40 events a minute apart, on Agent/a (every other one), Agent/b, or both (every fifth).
    let records: Vec<AuditRecord> = (0..40)
        .map(|i| {
            let mut e = event(REST, "upgrade", 'E', None, None);
            e.id = format!("ev{i:03}");
            e.recorded = format!("2026-03-01T10:{i:02}:00.000Z");
            let on = |a: &str| Ref { reference: format!("Agent/{a}"), display: None };
            e.entities = match (i % 2, i % 5) {
                (_, 0) => vec![on("a"), on("b")],
                (0, _) => vec![on("a")],
                _ => vec![on("b")],
            };
            e
        })
        .collect();
    store.record_audit(&records).await.unwrap();

    let since = InstantFilter {
        prefix: DatePrefix::Ge,
        low: "2026-03-01T10:07:00.000Z".into(),
        high: "2026-03-01T10:07:00.001Z".into(),
    };
    let before = InstantFilter { prefix: DatePrefix::Lt, low: "2026-03-01T10:31:00.000Z".into(), high: String::new() };
    for entity in ["Agent/a", "Agent/b", "Agent/none"] {
        for newest_first in [true, false] {
            for date in [vec![], vec![since.clone()], vec![since.clone(), before.clone()]] {
                for (count, offset) in [(5, 0), (5, 5), (7, 14), (100, 0), (3, 30)] {
                    let q = AuditQuery {
                        entity: Some(entity.into()),
                        date: date.clone(),
                        newest_first,
                        count,
                        offset,
                        ..AuditQuery::default()
                    };
                    // The same question through the general search (outcome 0 is every event).
                    let general = AuditQuery { outcome: Some("0".into()), ..q.clone() };
                    let (fast, fast_total) = store.audit_search(&q, true).await.unwrap();
                    let (slow, slow_total) = store.audit_search(&general, true).await.unwrap();
                    let ids = |v: &[AuditRecord]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
                    assert_eq!(ids(&fast), ids(&slow), "{q:?}");
                    assert_eq!(fast_total, slow_total, "{q:?}");
                    assert!(fast.iter().all(|e| e.entities.iter().any(|r| r.reference == entity)), "{q:?}");
                }
            }
        }
    }
    let all_a = AuditQuery { entity: Some("Agent/a".into()), count: 100, newest_first: true, ..AuditQuery::default() };
    let (page, total) = store.audit_search(&all_a, true).await.unwrap();
    assert_eq!((page.len(), total), (24, Some(24)), "20 even, and 4 more odd multiples of five");
    assert_eq!((page[0].id.as_str(), page[23].id.as_str()), ("ev038", "ev000"), "newest first");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_searches_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    audit(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_searches_on_postgres() {
    audit(super::postgres().await.as_ref()).await;
}
