//! An `AuditEvent` search as the REST API reads it: the query string decoded as axum's `Query`
//! does (`serde_urlencoded`), parsed by `api::audit_search::parse` (`date` with its prefixes,
//! `agent`, `entity`, `type`, `subtype`, `outcome`, `_sort`, `_count`, `_offset`, `_total`),
//! then run by the store's own `audit_search` on a real SQLite store holding a few events: every
//! search the parser accepts must be one the store runs, and no page is larger than asked.
#![no_main]

use std::sync::Arc;

use edge_agent_server::api::audit_search::parse;
use edge_agent_server::api::search::{MAX_OFFSET, MAX_PAGE};
use edge_agent_server::model::audit::{Ref, REST};
use edge_agent_server::store::{self, audit, Store, StoreConfig};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    static STORE: Arc<dyn Store> = RUNTIME.with(|rt| rt.block_on(async {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = store::open(&StoreConfig::Sqlite(dir)).await.unwrap();
        let who = Ref { reference: "ClientApplication/c1".into(), display: Some("Night desk".into()) };
        let mut events = vec![];
        for (subtype, action) in [("upgrade", 'E'), ("agent-remove", 'D'), ("refused", 'R'), ("sign-in", 'E')] {
            let mut e = audit::event(REST, subtype, action, Some(who.clone()), Some("127.0.0.1".into()));
            e.entities = vec![Ref { reference: "Agent/a1".into(), display: Some("Alpha".into()) }];
            events.push(e);
        }
        store.record_audit(&events).await.unwrap();
        store
    }));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(text) else { return };
    let Ok((q, total)) = parse(&pairs) else { return };
    assert!(q.count <= MAX_PAGE && q.offset <= MAX_OFFSET, "{q:?}");
    let store = STORE.with(Arc::clone);
    let (page, counted) =
        RUNTIME.with(|rt| rt.block_on(store.audit_search(&q, total))).unwrap_or_else(|e| panic!("{q:?}: {e}"));
    assert!(page.len() <= q.count, "{} events for a page of {}", page.len(), q.count);
    assert_eq!(counted.is_some(), total);
});
