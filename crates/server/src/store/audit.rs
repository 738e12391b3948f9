//! The audit trail, for both backends: events appended (many in one statement, so that a bulk
//! operation's events are one round trip, and in the transaction of the change they record when
//! the caller passes [`record`]'s statements along), searched by date, actor, entity, type,
//! subtype and outcome, read in order for an export, and pruned past their retention. Rows are
//! never updated (a trigger refuses it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use edge_agent_base::id::random_hex;
use edge_agent_base::time::{now_iso, now_ms};

use super::db::{Arg, Dialect, Stmt, Store};
use super::error::StoreError;
use crate::model::audit::{AuditQuery, AuditRecord, Outcome, Ref};
use crate::model::query::DatePrefix;

/// Rows per `INSERT`: far below either backend's limit on arguments.
const ROWS_PER_INSERT: usize = 100;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A new event id: sorts by time, then by order within this process.
fn event_id() -> String {
    format!("{:012x}{:06x}{}", now_ms(), SEQ.fetch_add(1, Ordering::Relaxed) & 0xff_ffff, random_hex(4))
}

/// A new event: `subtype` and `action`, by `who` from `address`, not yet ended.
pub fn event(kind: &str, subtype: &str, action: char, who: Option<Ref>, address: Option<String>) -> AuditRecord {
    AuditRecord {
        id: event_id(),
        recorded: now_iso(),
        kind: kind.into(),
        subtype: subtype.into(),
        action,
        outcome: Outcome::Success,
        description: String::new(),
        who,
        address,
        entities: Vec::new(),
    }
}

/// Set by the benchmark's baseline (`--no-audit-for-benchmark`): nothing is recorded.
static OFF: AtomicBool = AtomicBool::new(false);

/// Turns recording off for this process: the benchmark's baseline only.
pub fn turn_off_for_benchmark() {
    OFF.store(true, Ordering::Relaxed);
}

/// The statements that append `records`.
pub fn record(records: &[AuditRecord]) -> Vec<Stmt> {
    let mut stmts = Vec::new();
    if OFF.load(Ordering::Relaxed) {
        return stmts;
    }
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let (mut rows, mut args) = (Vec::new(), Vec::new());
        let (mut entity_rows, mut entity_args) = (Vec::new(), Vec::new());
        for r in chunk {
            let n = args.len();
            rows.push(format!("(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})", n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7));
            args.extend([
                Arg::text(&r.id),
                Arg::text(&r.recorded),
                Arg::text(&r.kind),
                Arg::text(&r.subtype),
                Arg::text(r.outcome.code()),
                Arg::opt_text(r.who.as_ref().map(|w| w.reference.clone())),
                Arg::text(serde_json::to_string(r).expect("an audit event serializes")),
            ]);
            for e in &r.entities {
                let m = entity_args.len();
                entity_rows.push(format!("(?{}, ?{}, ?{})", m + 1, m + 2, m + 3));
                entity_args.extend([Arg::text(&e.reference), Arg::text(&r.recorded), Arg::text(&r.id)]);
            }
        }
        let sql = "INSERT INTO audit_events (id, recorded, kind, subtype, outcome, actor, body) VALUES ";
        stmts.push((format!("{sql}{}", rows.join(", ")), args));
        if !entity_rows.is_empty() {
            let sql = "INSERT INTO audit_entities (entity, recorded, event_id) VALUES ";
            stmts.push((format!("{sql}{}", entity_rows.join(", ")), entity_args));
        }
    }
    stmts
}

fn decode(body: &str) -> Result<AuditRecord, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Decode(format!("audit event: {e}")))
}

/// For a search of one entity's events, by date at most: the `WHERE` clause of `audit_entities`
/// (which has the event's date) and its arguments.
fn by_entity(q: &AuditQuery, d: Dialect) -> Option<(String, Vec<Arg>)> {
    let entity = q.entity.as_ref()?;
    if q.agent.is_some() || q.kind.is_some() || q.subtype.is_some() || q.outcome.is_some() {
        return None;
    }
    let dates = AuditQuery { entity: None, ..q.clone() };
    let (filter, mut args) = filter(&dates, d);
    args.push(Arg::text(entity));
    let entity = format!("entity = ?{}", args.len());
    Some(match filter.is_empty() {
        true => (format!("WHERE {entity}"), args),
        false => (format!("{filter} AND {entity}"), args),
    })
}

/// The `WHERE` clause of a search and its arguments.
fn filter(q: &AuditQuery, d: Dialect) -> (String, Vec<Arg>) {
    let recorded = match d {
        Dialect::Sqlite => "recorded",
        Dialect::Postgres => "recorded COLLATE \"C\"",
    };
    let mut args: Vec<Arg> = Vec::new();
    let mut arg = |v: &str| {
        args.push(Arg::text(v));
        format!("?{}", args.len())
    };
    let mut clauses = Vec::new();
    for f in &q.date {
        clauses.push(match f.prefix {
            DatePrefix::Eq => format!("({recorded} >= {} AND {recorded} < {})", arg(&f.low), arg(&f.high)),
            DatePrefix::Ne => format!("NOT ({recorded} >= {} AND {recorded} < {})", arg(&f.low), arg(&f.high)),
            DatePrefix::Gt | DatePrefix::Sa => format!("{recorded} >= {}", arg(&f.high)),
            DatePrefix::Ge => format!("{recorded} >= {}", arg(&f.low)),
            DatePrefix::Lt | DatePrefix::Eb => format!("{recorded} < {}", arg(&f.low)),
            DatePrefix::Le => format!("{recorded} < {}", arg(&f.high)),
        });
    }
    if let Some(a) = &q.agent {
        clauses.push(format!("actor = {}", arg(a)));
    }
    if let Some(e) = &q.entity {
        clauses.push(format!("id IN (SELECT event_id FROM audit_entities WHERE entity = {})", arg(e)));
    }
    for (column, value) in [("kind", &q.kind), ("subtype", &q.subtype), ("outcome", &q.outcome)] {
        if let Some(v) = value {
            clauses.push(format!("{column} = {}", arg(v)));
        }
    }
    let filter = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (filter, args)
}

impl dyn Store + '_ {
    /// Appends `records` in one transaction.
    pub async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let stmts = record(records);
        if !stmts.is_empty() {
            self.batch(stmts).await?;
        }
        Ok(())
    }

    /// One page of matching events, and how many match in all when `total` is asked.
    pub async fn audit_search(
        &self,
        q: &AuditQuery,
        total: bool,
    ) -> Result<(Vec<AuditRecord>, Option<usize>), StoreError> {
        let (recorded, id, event_id) = match self.dialect() {
            Dialect::Sqlite => ("recorded", "id", "event_id"),
            Dialect::Postgres => ("recorded COLLATE \"C\"", "id COLLATE \"C\"", "event_id COLLATE \"C\""),
        };
        let dir = if q.newest_first { "DESC" } else { "ASC" };
        let page = |id: &str| format!("ORDER BY {recorded} {dir}, {id} {dir} LIMIT {} OFFSET {}", q.count, q.offset);
        let (sql, count, args) = match by_entity(q, self.dialect()) {
            // One entity's events (what happened to this agent?), by date at most: the page is read
            // from the entity's index, in order, instead of sorting every event it ever had.
            Some((filter, args)) => {
                let ids = format!("SELECT event_id FROM audit_entities {filter} {}", page(event_id));
                let sql =
                    format!("SELECT body FROM audit_events WHERE id IN ({ids}) ORDER BY {recorded} {dir}, {id} {dir}");
                (sql, format!("SELECT count(*) FROM audit_entities {filter}"), args)
            }
            None => {
                let (filter, args) = filter(q, self.dialect());
                let sql = format!("SELECT body FROM audit_events {filter} {}", page(id));
                (sql, format!("SELECT count(*) FROM audit_events {filter}"), args)
            }
        };
        let rows = self.rows(&sql, args.clone()).await?;
        let page = rows.iter().map(|r| decode(&r.text(0)?)).collect::<Result<Vec<_>, _>>()?;
        let total = match total {
            true => {
                let count = self.row(&count, args).await?;
                Some(count.map_or(Ok(0), |r| r.int(0))? as usize)
            }
            false => None,
        };
        Ok((page, total))
    }

    /// Up to `limit` events recorded at or after `since`, oldest first, after the event
    /// (`recorded`, `id`) `after` when given: an export reads the trail page by page.
    pub async fn audit_since(
        &self,
        since: &str,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (recorded, id) = match self.dialect() {
            Dialect::Sqlite => ("recorded", "id"),
            Dialect::Postgres => ("recorded COLLATE \"C\"", "id COLLATE \"C\""),
        };
        let (after_recorded, after_id) = after.unwrap_or((since, ""));
        let sql = format!(
            "SELECT body FROM audit_events WHERE {recorded} >= ?1 AND ({recorded} > ?2 OR ({recorded} = ?2 AND {id} > ?3)) \
             ORDER BY {recorded}, {id} LIMIT {limit}"
        );
        let args = vec![Arg::text(since), Arg::text(after_recorded), Arg::text(after_id)];
        self.rows(&sql, args).await?.iter().map(|r| decode(&r.text(0)?)).collect()
    }

    /// Forgets the events recorded before `before`; how many.
    pub async fn purge_audit(&self, before: &str) -> Result<u64, StoreError> {
        let stmts = vec![
            ("DELETE FROM audit_entities WHERE recorded < ?1".to_string(), vec![Arg::text(before)]),
            ("DELETE FROM audit_events WHERE recorded < ?1".to_string(), vec![Arg::text(before)]),
        ];
        Ok(self.batch(stmts).await?[1])
    }
}
