//! An `Agent` search as the REST API reads it: the query string decoded as axum's `Query` does
//! (`serde_urlencoded`), parsed by `api::search::parse_search` (every modifier, `_lastUpdated`
//! prefixes, `_sort`, `_count`/`_offset`), then written as SQL (`store::sql::search`) and run
//! on an SQLite database of the server's schema: every search the parser accepts must be one
//! the store can run, with every value of the caller's a bound argument. The same query string as
//! a `ClientApplication` search (`api::clients::parse_client_search`) is bounded or refused.
#![no_main]

use std::cell::RefCell;

use edge_agent_server::api::clients::parse_client_search;
use edge_agent_server::api::search::{parse_search, MAX_OFFSET, MAX_PAGE};
use edge_agent_server::store::db::Dialect;
use edge_agent_server::store::sql;
use edge_agent_server::store::sqlite::SCHEMA;
use libfuzzer_sys::fuzz_target;
use rusqlite::Connection;

thread_local! {
    static DB: RefCell<Connection> = RefCell::new({
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(SCHEMA).unwrap();
        db.execute_batch(
            "INSERT INTO agents (id, name, status, identifiers, last_updated) VALUES
             ('a1', 'Alpha', 'active', '[{\"system\":\"s\",\"value\":\"v\"}]', '2026-01-02T03:04:05.678Z'),
             ('a2', 'beta', 'off', '[]', '2025-12-31T23:59:59.999Z');",
        )
        .unwrap();
        db
    });
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(text) else { return };
    // The same query as a `ClientApplication` search (role, _count, _offset): bounded, or refused.
    if let Ok(c) = parse_client_search(&pairs) {
        assert!(c.count <= MAX_PAGE && c.offset <= MAX_OFFSET, "{c:?}");
    }
    // As a search, and as the Agent search of a bulk `$upgrade` (its own parameters set aside).
    let _ = parse_search(&pairs, &["version", "timeout", "force"], MAX_PAGE);
    let Ok(q) = parse_search(&pairs, &[], MAX_PAGE) else { return };
    assert!(q.count <= MAX_PAGE && q.offset <= MAX_OFFSET);
    for f in &q.last_updated {
        assert!(f.low < f.high, "{f:?}");
    }
    let pg = sql::search(&q, Dialect::Postgres);
    assert_eq!(placeholders(&pg.page, '?'), pg.args.len());
    let s = sql::search(&q, Dialect::Sqlite);
    assert_eq!(placeholders(&s.page, '?'), s.args.len());
    DB.with(|db| {
        let db = db.borrow();
        for statement in s.count.iter().chain([&s.page]) {
            let mut st = db.prepare(statement).unwrap_or_else(|e| panic!("{statement}: {e}"));
            let rows = st.query_map(rusqlite::params_from_iter(&s.args), |_| Ok(())).unwrap();
            for row in rows {
                row.unwrap_or_else(|e| panic!("{statement}: {e}"));
            }
        }
    });
});

/// The highest placeholder number in `sql` (`?3`: both dialects are written with `?`).
fn placeholders(sql: &str, mark: char) -> usize {
    sql.split(mark)
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .max()
        .unwrap_or(0)
}
