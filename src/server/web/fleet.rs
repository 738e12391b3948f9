//! The fleet queries behind the page: counts by state and version, and one sorted, filtered page of
//! the agent table, done in SQL so that the answer stays small and fast at ten thousand agents.

use rusqlite::params_from_iter;
use serde::Serialize;
use serde_json::Value;

use crate::server::db::StoreError;
use crate::server::results::Results;

/// How many agents are in each connection state and on each version.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub total: usize,
    pub states: Vec<(String, usize)>,
    /// Most agents first.
    pub versions: Vec<(String, usize)>,
}

/// Agents never seen are `unknown`, in state and version, as `$status` says. Grouped on the plain
/// columns, so that SQLite counts from the indexes in [`INDEXES`] instead of reading every agent.
pub fn counts(results: &Results) -> Result<Counts, StoreError> {
    let conn = results.conn();
    let group = |column: &str| -> Result<Vec<(String, usize)>, StoreError> {
        let sql = format!("SELECT {column}, count(*) FROM agents GROUP BY {column}");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as usize)))?;
        let mut merged: Vec<(String, usize)> = Vec::new();
        for row in rows {
            let (key, n) = row?;
            let key = key.unwrap_or_else(|| "unknown".into());
            match merged.iter_mut().find(|(k, _)| *k == key) {
                Some((_, m)) => *m += n,
                None => merged.push((key, n)),
            }
        }
        merged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(merged)
    };
    // An agent never seen has neither state nor version; a seen one always has both.
    let states = group("conn_status")?;
    let versions = group("version")?;
    let total = states.iter().map(|(_, n)| n).sum();
    Ok(Counts { total, states, versions })
}

/// What the agent table asks for (already validated).
#[derive(Debug, Clone, Default)]
pub struct TableQuery {
    /// Matches a name or an identifier value, anywhere, case-insensitively.
    pub text: Option<String>,
    pub state: Option<String>,
    pub version: Option<String>,
    pub not_version: Option<String>,
    pub last_failed: bool,
    pub sort: Sort,
    pub descending: bool,
    pub page: usize,
    pub size: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Sort {
    #[default]
    Name,
    State,
    Version,
    Since,
    LastUpgrade,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "name" => Sort::Name,
            "state" => Sort::State,
            "version" => Sort::Version,
            "since" => Sort::Since,
            "last" => Sort::LastUpgrade,
            _ => return None,
        })
    }

    /// The sort key before the name; plain columns, so that the indexes in [`INDEXES`] serve
    /// the common pages without sorting the fleet (never-seen agents, NULL, sort first).
    fn column(self) -> Option<&'static str> {
        match self {
            Sort::Name => None,
            Sort::State => Some("a.conn_status"),
            Sort::Version => Some("a.version"),
            Sort::Since => Some("a.status_updated"),
            Sort::LastUpgrade => Some("l.at"),
        }
    }
}

/// One row of the agent table.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub id: String,
    pub name: String,
    pub identifiers: Value,
    pub state: String,
    pub version: String,
    pub since: Option<String>,
    pub last_outcome: Option<String>,
    pub last_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub total: usize,
    pub page: usize,
    pub size: usize,
    pub rows: Vec<Row>,
}

fn like(text: &str) -> String {
    format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// The WHERE clause of a table query and its arguments.
fn filter(q: &TableQuery) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut args = Vec::new();
    if let Some(t) = &q.text {
        // SQLite's LIKE ignores ASCII case by itself.
        clauses.push("(a.name LIKE ? ESCAPE '\\' OR a.identifiers LIKE ? ESCAPE '\\')");
        args.extend([like(t), like(t)]);
    }
    if let Some(s) = &q.state {
        clauses.push("coalesce(a.conn_status, 'unknown') = ?");
        args.push(s.clone());
    }
    if let Some(v) = &q.version {
        clauses.push("a.conn_status IS NOT NULL AND a.version = ?");
        args.push(v.clone());
    }
    if let Some(v) = &q.not_version {
        clauses.push("(a.conn_status IS NULL OR a.version IS NOT ?)");
        args.push(v.clone());
    }
    if q.last_failed {
        clauses.push("l.outcome IS NOT NULL AND l.outcome != 'succeeded'");
    }
    let sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (sql, args)
}

/// Indexes on the server's `agents` table for the sorted pages of the agent table.
pub const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS web_agents_name ON agents(name COLLATE NOCASE, id);
CREATE INDEX IF NOT EXISTS web_agents_state ON agents(conn_status, name COLLATE NOCASE, id);
CREATE INDEX IF NOT EXISTS web_agents_version ON agents(version, name COLLATE NOCASE, id);
";

pub fn table(results: &Results, q: &TableQuery) -> Result<Page, StoreError> {
    let (filter, args) = filter(q);
    let joined = "FROM agents a LEFT JOIN upgrade_last l ON l.agent_id = a.id";
    // The count needs the join only when it filters on the last result.
    let counted = if q.last_failed { joined } else { "FROM agents a" };
    let conn = results.conn();
    let total: i64 =
        conn.query_row(&format!("SELECT count(*) {counted} {filter}"), params_from_iter(&args), |r| r.get(0))?;
    let dir = if q.descending { "DESC" } else { "ASC" };
    let first = q.sort.column().map(|c| format!("{c} {dir}, ")).unwrap_or_default();
    let sql = format!(
        "SELECT a.id, a.name, a.identifiers, coalesce(a.conn_status, 'unknown'),
                {VERSION},
                a.status_updated, l.outcome, l.at
         {joined} {filter} ORDER BY {first}a.name COLLATE NOCASE {dir}, a.id {dir} LIMIT {} OFFSET {}",
        q.size,
        q.page * q.size
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(&args), |r| {
        Ok(Row {
            id: r.get(0)?,
            name: r.get(1)?,
            identifiers: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or(Value::Array(vec![])),
            state: r.get(3)?,
            version: r.get(4)?,
            since: r.get(5)?,
            last_outcome: r.get(6)?,
            last_at: r.get(7)?,
        })
    })?;
    let rows = rows.collect::<Result<Vec<_>, _>>()?;
    Ok(Page { total: total as usize, page: q.page, size: q.size, rows })
}

/// The last reported version, `unknown` for an agent never seen (as `$status` says).
const VERSION: &str = "CASE WHEN conn_status IS NULL THEN 'unknown' ELSE coalesce(version, 'unknown') END";

/// The ids of every agent the table query finds, all pages: what a rollout from the page takes.
pub fn table_ids(results: &Results, q: &TableQuery) -> Result<Vec<String>, StoreError> {
    let (filter, args) = filter(q);
    let sql = format!("SELECT a.id FROM agents a LEFT JOIN upgrade_last l ON l.agent_id = a.id {filter}");
    let conn = results.conn();
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(&args), |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Since when the agent has been in its current state at its current version.
pub fn since(results: &Results, agent_id: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    let conn = results.conn();
    let v = conn
        .query_row("SELECT status_updated FROM agents WHERE id = ?1", [agent_id], |r| r.get::<_, Option<String>>(0))
        .optional()?;
    Ok(v.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::db::{StatusRow, Store};
    use serde_json::json;

    #[test]
    fn table_filters_sorts_and_pages_in_sql() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let results = Results::open(dir.path()).unwrap();
        for (i, (name, version)) in
            [("b-lab", "1.2.0"), ("a-clinic", "1.3.0"), ("c-clinic", "1.3.0"), ("d-spare", "")].into_iter().enumerate()
        {
            let row = store.create_agent(name, "active", &json!([{"value": format!("site-{i}")}])).unwrap();
            if !version.is_empty() {
                let s = StatusRow { status: "connected".into(), version: version.into(), updated: format!("t{i}") };
                store.save_status(&row.id, &s).unwrap();
            }
        }
        let names = |q: TableQuery| {
            let page = table(&results, &TableQuery { size: 50, ..q }).unwrap();
            (page.total, page.rows.into_iter().map(|r| format!("{}@{}", r.name, r.version)).collect::<Vec<_>>())
        };
        let all = names(TableQuery::default());
        assert_eq!(
            all,
            (4, vec!["a-clinic@1.3.0".into(), "b-lab@1.2.0".into(), "c-clinic@1.3.0".into(), "d-spare@unknown".into()])
        );
        assert_eq!(names(TableQuery { text: Some("CLINIC".into()), ..Default::default() }).0, 2);
        assert_eq!(names(TableQuery { text: Some("site-1".into()), ..Default::default() }).1, ["a-clinic@1.3.0"]);
        assert_eq!(names(TableQuery { not_version: Some("1.3.0".into()), ..Default::default() }).0, 2);
        assert_eq!(names(TableQuery { state: Some("unknown".into()), ..Default::default() }).1, ["d-spare@unknown"]);
        let by_version = names(TableQuery { sort: Sort::Version, descending: true, ..Default::default() }).1;
        assert_eq!(by_version[..2], ["c-clinic@1.3.0".to_string(), "a-clinic@1.3.0".into()], "wholly reversed");
        let second = table(&results, &TableQuery { size: 3, page: 1, ..Default::default() }).unwrap();
        assert_eq!((second.total, second.rows.len()), (4, 1));

        let c = counts(&results).unwrap();
        assert_eq!(c.states, [("connected".to_string(), 3), ("unknown".to_string(), 1)]);
        assert_eq!(c.versions[0], ("1.3.0".to_string(), 2));
    }
}
