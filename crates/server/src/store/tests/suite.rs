//! The store test suite, run against both backends: embedded SQLite and a real PostgreSQL (started
//! by the tests). The same calls must give the same answers, in the same order.

use std::sync::Arc;
use std::time::Duration;

use edge_agent_base::time::now_ms;
use edge_agent_e2e::services::shared_db;
use edge_agent_wire::AgentStatus;
use serde_json::json;

use crate::fleet::lease::Lease;
use crate::model::agent::StatusRow;
use crate::model::query::{AgentQuery, DatePrefix, InstantFilter, NameMatch, SortKey, TokenFilter};
use crate::store::{self, Store, StoreConfig};

async fn agents_clients_and_search(store: &dyn Store) {
    let ident = json!([{"system": "urn:site", "value": "lab-7"}]);
    let a = store.create_agent("Lab_7 agent", "active", &ident, None).await.unwrap();
    let b = store.create_agent("Clinic agent", "off", &json!([]), None).await.unwrap();
    let c = store.create_agent("apple", "active", &json!([{"value": "zz"}]), None).await.unwrap();
    assert_eq!(store.agent(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.agent("nope").await.unwrap(), None);

    let q = |f: &dyn Fn(&mut AgentQuery)| {
        let mut q = AgentQuery { count: 20, ..Default::default() };
        f(&mut q);
        q
    };
    let names = |q: AgentQuery| async move {
        store.search(&q).await.unwrap().0.into_iter().map(|r| r.name).collect::<Vec<_>>()
    };
    // Code-point order, as in SQLite: upper case before lower case.
    assert_eq!(names(q(&|_| {})).await, ["Clinic agent", "Lab_7 agent", "apple"]);
    assert_eq!(names(q(&|q| q.names = vec![(NameMatch::Prefix, "lab_".into())])).await, ["Lab_7 agent"]);
    assert_eq!(names(q(&|q| q.names = vec![(NameMatch::Prefix, "lab%".into())])).await, Vec::<String>::new());
    assert_eq!(names(q(&|q| q.names = vec![(NameMatch::Exact, "lab_7 agent".into())])).await, Vec::<String>::new());
    assert_eq!(names(q(&|q| q.names = vec![(NameMatch::Exact, "Lab_7 agent".into())])).await, ["Lab_7 agent"]);
    assert_eq!(names(q(&|q| q.names = vec![(NameMatch::Contains, "NIC".into())])).await, ["Clinic agent"]);
    let token = |v: &str, not| Some(TokenFilter { any_of: vec![v.to_string()], not });
    assert_eq!(names(q(&|q| q.status = token("off", false))).await, ["Clinic agent"]);
    assert_eq!(names(q(&|q| q.status = token("off", true))).await, ["Lab_7 agent", "apple"]);
    let ident =
        |system: &str, not| Some(TokenFilter { any_of: vec![(Some(system.to_string()), "lab-7".to_string())], not });
    assert_eq!(names(q(&|q| q.identifier = ident("urn:site", false))).await, ["Lab_7 agent"]);
    assert_eq!(names(q(&|q| q.identifier = ident("urn:other", false))).await, Vec::<String>::new());
    assert_eq!(names(q(&|q| q.identifier = ident("urn:site", true))).await, ["Clinic agent", "apple"]);
    assert_eq!(names(q(&|q| q.sort = vec![(SortKey::Name, true)])).await, ["apple", "Lab_7 agent", "Clinic agent"]);
    assert_eq!(
        names(q(&|q| q.sort = vec![(SortKey::Identifier, false)])).await,
        ["Clinic agent", "Lab_7 agent", "apple"]
    );
    assert_eq!(
        names(q(&|q| q.sort = vec![(SortKey::Identifier, true)])).await,
        ["apple", "Lab_7 agent", "Clinic agent"]
    );
    let far = |prefix| InstantFilter { prefix, low: "2000-01-01".into(), high: "2000-01-02".into() };
    assert_eq!(names(q(&|q| q.last_updated = vec![far(DatePrefix::Gt)])).await.len(), 3);
    assert_eq!(names(q(&|q| q.last_updated = vec![far(DatePrefix::Lt)])).await.len(), 0);
    let ids = vec![b.id.clone(), "nope".into()];
    let (rows, total) = store.search(&AgentQuery { ids: Some(ids), count: 20, ..Default::default() }).await.unwrap();
    assert_eq!((rows.len(), total), (1, 1));
    let (rows, total) = store.search(&AgentQuery { count: 1, offset: 1, ..Default::default() }).await.unwrap();
    assert_eq!((rows[0].name.as_str(), total), ("Lab_7 agent", 3));
    let page_only = AgentQuery { count: 2, skip_total: true, ..Default::default() };
    assert_eq!(store.search(&page_only).await.unwrap().1, 2, "without the count, the page's length");
    // The largest search the parser lets through runs (SQLite's expression depth and bound values).
    let largest = crate::api::search::parse_search(
        &[
            ("_id".to_string(), vec!["x"; crate::api::search::MAX_PAGE].join(",")),
            ("identifier".to_string(), vec!["urn:s|v"; crate::api::search::MAX_LIST].join(",")),
        ]
        .into_iter()
        .chain((0..crate::api::search::MAX_REPEATS).map(|_| ("name:contains".to_string(), "a".to_string())))
        .chain((0..crate::api::search::MAX_REPEATS).map(|_| ("_lastUpdated".to_string(), "ge2000".to_string())))
        .collect::<Vec<_>>(),
        &[],
        crate::api::search::MAX_PAGE,
    )
    .unwrap();
    assert_eq!(store.search(&largest).await.unwrap().1, 0);

    let (client, secret) =
        store.create_client(crate::model::access::Role::Agent, Some(&a.id), "Lab_7 agent").await.unwrap();
    assert_eq!(store.authenticate(&client.id, &secret).await.unwrap(), Some(client.clone()));
    assert_eq!(store.authenticate(&client.id, "wrong").await.unwrap(), None);
    assert_eq!(store.authenticate("nobody", &secret).await.unwrap(), None);

    let ids = vec![a.id.clone(), c.id.clone(), "nope".into()];
    assert_eq!(store.statuses(&ids).await.unwrap(), vec![None, None, None]);
    let s = StatusRow {
        status: AgentStatus::Connected,
        version: "1.2.3".into(),
        updated: edge_agent_base::time::now_iso(),
    };
    store.save_statuses(&[(a.id.clone(), s.clone())]).await.unwrap();
    assert_eq!(store.statuses(&ids).await.unwrap(), vec![Some(s.clone()), None, None]);

    // Several in one statement; a status older than the stored one (another node's late write
    // of the agent's leaving) changes nothing.
    let at = |updated: &str, status| StatusRow { status, version: "1.2.4".into(), updated: updated.into() };
    let left = at("2000-01-01T00:00:00.000Z", AgentStatus::Disconnected);
    let newer = at("2999-01-01T00:00:00.000Z", AgentStatus::Connected);
    store.save_statuses(&[(a.id.clone(), left), (c.id.clone(), newer.clone())]).await.unwrap();
    assert_eq!(store.statuses(&ids).await.unwrap(), vec![Some(s.clone()), Some(newer.clone()), None]);

    // The sweep of agents no node holds: the connected ones a page at a time, in id order; each
    // stored as disconnected only while its status is the one read, its time kept.
    let mut connected = vec![(a.id.clone(), s.updated.clone()), (c.id.clone(), newer.updated.clone())];
    connected.sort();
    assert_eq!(store.stored_connected("", 10).await.unwrap(), connected);
    assert_eq!(store.stored_connected("", 1).await.unwrap(), connected[..1]);
    assert_eq!(store.stored_connected(&connected[0].0, 10).await.unwrap(), connected[1..]);
    let stale = (a.id.clone(), "2001-01-01T00:00:00.000Z".to_string());
    assert_eq!(store.store_gone(&[stale, (c.id.clone(), newer.updated.clone())]).await.unwrap(), 1);
    let gone = StatusRow { status: AgentStatus::Disconnected, ..newer.clone() };
    assert_eq!(store.statuses(&ids).await.unwrap(), vec![Some(s.clone()), Some(gone), None]);
    assert_eq!(store.stored_connected("", 10).await.unwrap(), vec![(a.id.clone(), s.updated.clone())]);
    // The agent's return, written later with a time after the one kept, is taken.
    let back = at("2999-01-01T00:00:01.000Z", AgentStatus::Connected);
    store.save_statuses(&[(c.id.clone(), back.clone())]).await.unwrap();
    assert_eq!(store.statuses(&ids).await.unwrap(), vec![Some(s), Some(back), None]);
}

async fn tokens(store: &dyn Store) {
    let (client, _) = store.create_client(crate::model::access::Role::Admin, None, "ops").await.unwrap();
    let now = now_ms();
    let hash = store::hash_secret("the token");
    store.save_token(&hash, &client.id, now + 60_000).await.unwrap();
    store.save_token(&store::hash_secret("old"), &client.id, now - 1).await.unwrap();
    assert_eq!(store.token_client(&hash, now).await.unwrap(), Some((client.clone(), now + 60_000)));
    assert_eq!(store.token_client(&hash, now + 60_000).await.unwrap(), None, "expired");
    assert_eq!(store.token_client(&store::hash_secret("other"), now).await.unwrap(), None);
    assert_eq!(store.purge_tokens(now).await.unwrap(), 1, "only the expired token is forgotten");
    assert!(store.token_client(&hash, now).await.unwrap().is_some());

    // Bounded per client, the oldest revoked first, other clients untouched.
    let (other, _) = store.create_client(crate::model::access::Role::Admin, None, "other").await.unwrap();
    store.save_token(&store::hash_secret("other's"), &other.id, now + 1_000).await.unwrap();
    let made: Vec<String> = (0..5).map(|i| store::hash_secret(&format!("t{i}"))).collect();
    for (i, h) in made.iter().enumerate() {
        store.save_token(h, &client.id, now + 100_000 + i as i64).await.unwrap();
    }
    let mut revoked = store.revoke_tokens_beyond(&client.id, 3).await.unwrap();
    revoked.sort();
    let mut oldest = vec![hash.clone(), made[0].clone(), made[1].clone()];
    oldest.sort();
    assert_eq!(revoked, oldest, "the three oldest of six go");
    assert_eq!(store.token_client(&made[0], now).await.unwrap(), None);
    assert!(store.token_client(&made[4], now).await.unwrap().is_some());
    assert!(store.token_client(&store::hash_secret("other's"), now).await.unwrap().is_some());
    assert!(store.revoke_tokens_beyond(&client.id, 3).await.unwrap().is_empty(), "within the bound: none");
}

/// Found by the fault suite (long mode, seed 116): a renewal waiting on a store that does not
/// answer (a cut link) held the lease's loss back for the store's whole call limit, past the
/// lease's expiry, and another node drove rollouts while this one still did. The loss now comes
/// two thirds of a TTL after the last renewal, answered or not.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_given_up_within_its_ttl_when_the_store_stops_answering() {
    let pg = edge_agent_e2e::services::Postgres::start();
    let store = store::open(&StoreConfig::Postgres(pg.create_db().await)).await.unwrap();
    let ttl = Duration::from_millis(1500);
    let lease = Lease::try_acquire(store, "frozen", "node-a", ttl).await.unwrap().expect("a free lease");
    let lost = lease.lost();
    // Nothing answers, connections stay open: as behind a cut link.
    pg.pause();
    let frozen = std::time::Instant::now();
    let given_up = tokio::time::timeout(Duration::from_secs(10), lost.cancelled()).await;
    let took = frozen.elapsed();
    pg.resume();
    assert!(given_up.is_ok(), "the lease was not given up in 10 s");
    assert!(took < ttl, "given up {took:?} after the store froze, past the lease's {ttl:?}");
}

async fn leases(store: Arc<dyn Store>) {
    let ttl = Duration::from_millis(400);
    // Ten contenders at once: exactly one wins.
    let tries = (0..10).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.lease_acquire("rollout/1", &format!("node-{i}"), ttl).await.unwrap() })
    });
    let won: Vec<bool> = futures_util::future::join_all(tries).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let holder = format!("node-{}", won.iter().position(|w| *w).unwrap());
    let other = if holder == "node-0" { "node-1" } else { "node-0" };
    assert!(store.lease_acquire("rollout/1", &holder, ttl).await.unwrap(), "the holder renews");
    assert!(!store.lease_acquire("rollout/1", other, ttl).await.unwrap());
    assert!(store.lease_acquire("rollout/2", other, ttl).await.unwrap(), "leases are independent by name");
    // Not renewed: it expires and another node takes it; the old holder cannot renew it back.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(store.lease_acquire("rollout/1", other, ttl).await.unwrap());
    assert!(!store.lease_acquire("rollout/1", &holder, ttl).await.unwrap());
    assert!(!store.lease_release("rollout/1", &holder).await.unwrap(), "only the holder releases");
    assert!(store.lease_release("rollout/1", other).await.unwrap());
    assert!(store.lease_acquire("rollout/1", &holder, ttl).await.unwrap(), "free again at once");
}

async fn held_leases(store: Arc<dyn Store>) {
    let ttl = Duration::from_millis(300);
    let a = Lease::try_acquire(store.clone(), "drive", "a", ttl).await.unwrap().expect("a free lease");
    tokio::time::sleep(ttl * 3).await;
    let b = Lease::try_acquire(store.clone(), "drive", "b", ttl).await.unwrap();
    assert!(b.is_none(), "the holder renews it in the background");
    assert!(!a.lost().is_cancelled());
    a.release().await;
    let b = Lease::try_acquire(store.clone(), "drive", "b", ttl).await.unwrap().expect("released: free at once");
    // Taken from under it (as when it expired and another node took it): the holder hears of it.
    while !store.lease_acquire("drive", "c", ttl).await.unwrap() {
        store.lease_release("drive", "b").await.unwrap();
    }
    tokio::time::timeout(ttl * 2, b.lost().cancelled()).await.expect("the holder learns it lost the lease");

    // One dropped unreleased (its work cancelled: a caller gone) is given up in the background,
    // not left to expire: a holder waiting for it gets it well within its TTL.
    let long = Duration::from_secs(30);
    let d = Lease::try_acquire(store.clone(), "dropped", "d", long).await.unwrap().expect("a free lease");
    let d = d.released_when_dropped();
    let waited = std::time::Instant::now();
    let waiter = Lease::wait_for(store.clone(), "dropped", "e", long, Duration::from_millis(200));
    assert!(waiter.await.unwrap().is_none(), "held: a wait of 200 ms ends without it");
    assert!(waited.elapsed() >= Duration::from_millis(200));
    drop(d);
    let e = Lease::wait_for(store.clone(), "dropped", "e", long, Duration::from_secs(5)).await.unwrap();
    e.expect("dropped: free within the wait, not after the TTL").release().await;
    // Without it (a holder name the holder takes again, as the rollout driver's, its node's), a
    // lease dropped is left to expire: a late release could free its next acquisition.
    let f = Lease::try_acquire(store.clone(), "kept", "f", long).await.unwrap().expect("a free lease");
    drop(f);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!store.lease_acquire("kept", "g", long).await.unwrap(), "left to expire, not released");
}

async fn suite(config: StoreConfig) {
    let store = store::open(&config).await.unwrap();
    agents_clients_and_search(store.as_ref()).await;
    tokens(store.as_ref()).await;
    leases(store.clone()).await;
    held_leases(store.clone()).await;
    // Opening again (a restart, or another node) migrates nothing twice and keeps the project.
    let again = store::open(&config).await.unwrap();
    assert_eq!(again.project_id(), store.project_id());
    assert_eq!(again.search(&AgentQuery { count: 10, ..Default::default() }).await.unwrap().1, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(StoreConfig::Sqlite(dir.path().join("data"))).await;
}

/// The sweep reads every agent stored as connected a page at a time: each page along the
/// primary key from where the last ended, never all of them sorted again for each page.
#[tokio::test(flavor = "multi_thread")]
async fn the_sweeps_page_of_connected_agents_is_read_in_id_order_without_sorting_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    let sql = store::agents::stored_connected_sql(store.dialect(), 1000);
    let plan = store.rows(&format!("EXPLAIN QUERY PLAN {sql}"), vec![store::db::Arg::text("")]).await.unwrap();
    let plan: Vec<String> = plan.into_iter().map(|mut r| r.take_text(3).unwrap()).collect();
    assert!(plan.iter().all(|step| !step.contains("TEMP B-TREE")), "sorted for each page: {plan:?}");
    assert!(plan.iter().any(|step| step.contains("sqlite_autoindex_agents_1 (id>?)")), "{plan:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_suite_on_postgres() {
    suite(StoreConfig::Postgres(shared_db().await)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_tokens_are_stored_hashed_in_postgres() {
    let url = shared_db().await;
    let store = store::open(&StoreConfig::Postgres(url.clone())).await.unwrap();
    let (client, secret) = store.create_client(crate::model::access::Role::Admin, None, "ops").await.unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = db.query_one("SELECT secret_sha256 FROM clients WHERE id = $1", &[&client.id]).await.unwrap();
    let kept: String = row.get(0);
    assert_ne!(kept, secret);
    assert_eq!(kept, store::hash_secret(&secret));
}

/// Agents given identifiers are written under the identifiers' lease, and only while it is held:
/// a write that waited on the store past the lease's expiry (another writer may have checked the
/// same identifiers meanwhile) writes nothing, whether it makes an agent or changes one.
async fn identifier_writes_are_fenced_by_their_lease(store: Arc<dyn Store>) {
    const LEASE: &str = "agent-identifiers";
    let ident = json!([{"system": "urn:site", "value": "fenced-1"}]);
    assert!(store.lease_acquire(LEASE, "node-b", Duration::from_secs(30)).await.unwrap());
    let lost = store.create_agent("fenced", "active", &ident, Some((LEASE, "node-a"))).await;
    assert!(matches!(lost, Err(store::StoreError::LeaseLost(ref l)) if l == LEASE), "{lost:?}");
    let named =
        |name: &str| AgentQuery { names: vec![(NameMatch::Exact, name.to_string())], count: 10, ..Default::default() };
    assert_eq!(store.search(&named("fenced")).await.unwrap().1, 0, "nothing written");
    let mut row = store.create_agent("fenced", "active", &ident, Some((LEASE, "node-b"))).await.unwrap();
    assert_eq!(store.search(&named("fenced")).await.unwrap().1, 1);

    // A change of identifiers by a writer that lost the lease: nothing written, not even what
    // goes with it in the transaction.
    let before = store.agent(&row.id).await.unwrap().unwrap();
    row.identifiers = json!([{"system": "urn:site", "value": "fenced-2"}]);
    let also = vec![("INSERT INTO meta (key, value) VALUES ('fenced', 'written')".to_string(), vec![])];
    let lost = store.update_agent(&mut row.clone(), None, also, Some((LEASE, "node-a"))).await;
    assert!(matches!(lost, Err(store::StoreError::LeaseLost(_))), "{lost:?}");
    assert_eq!(store.agent(&row.id).await.unwrap().unwrap(), before);
    assert!(store.row("SELECT value FROM meta WHERE key = 'fenced'", vec![]).await.unwrap().is_none());
    // An expired lease fences too, its holder's own included.
    assert!(store.lease_release(LEASE, "node-b").await.unwrap());
    assert!(store.lease_acquire(LEASE, "node-b", Duration::from_millis(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lost = store.update_agent(&mut row.clone(), None, vec![], Some((LEASE, "node-b"))).await;
    assert!(matches!(lost, Err(store::StoreError::LeaseLost(_))), "{lost:?}");
    assert!(store.lease_acquire(LEASE, "node-b", Duration::from_secs(30)).await.unwrap());
    assert!(store.update_agent(&mut row, None, vec![], Some((LEASE, "node-b"))).await.unwrap());
    assert_eq!(store.agent(&row.id).await.unwrap().unwrap().identifiers, row.identifiers);
    assert!(store.lease_release(LEASE, "node-b").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn identifier_writes_are_fenced_by_their_lease_on_sqlite() {
    let (_dir, store) = super::sqlite().await;
    identifier_writes_are_fenced_by_their_lease(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identifier_writes_are_fenced_by_their_lease_on_postgres() {
    identifier_writes_are_fenced_by_their_lease(super::postgres().await).await;
}

/// On PostgreSQL, nodes write at once: the fence also locks the lease's row until the write
/// commits, so a lease that expires during the write is taken over only after it (the next
/// holder's check then sees what was written).
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_expiring_during_a_fenced_write_is_taken_over_after_it_on_postgres() {
    let url = shared_db().await;
    let store = store::open(&StoreConfig::Postgres(url.clone())).await.unwrap();
    let ttl = Duration::from_millis(300);
    assert!(store.lease_acquire("fenced", "node-a", ttl).await.unwrap());
    let (mut db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let tx = db.transaction().await.unwrap();
    let (sql, _) = store.fence("fenced", "node-a");
    let sql = store::db::pg(&sql);
    assert_eq!(tx.execute(&sql, &[&"fenced", &"node-a"]).await.unwrap(), 1, "held: the fence passes");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let taker = tokio::spawn({
        let store = store.clone();
        async move { store.lease_acquire("fenced", "node-b", ttl).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!taker.is_finished(), "expired, but taken over while the fenced write was open");
    tx.commit().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), taker).await.unwrap().unwrap(), "taken over after it");
}
