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

/// Agents never seen are `unknown`, in state and version, as `$status` says.
pub fn counts(results: &Results) -> Result<Counts, StoreError> {
    let conn = results.conn();
    let group = |column: &str| -> Result<Vec<(String, usize)>, StoreError> {
        let sql = format!("SELECT {column} AS k, count(*) AS n FROM agents GROUP BY k ORDER BY n DESC, k");
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    };
    let states = group("coalesce(conn_status, 'unknown')")?;
    let versions = group(VERSION)?;
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

    fn column(self) -> &'static str {
        match self {
            Sort::Name => "lower(a.name)",
            Sort::State => "coalesce(a.conn_status, 'unknown')",
            Sort::Version => "coalesce(a.version, '')",
            Sort::Since => "coalesce(a.status_updated, '')",
            Sort::LastUpgrade => "coalesce(l.at, '')",
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
        clauses.push("(lower(a.name) LIKE lower(?) ESCAPE '\\' OR lower(a.identifiers) LIKE lower(?) ESCAPE '\\')");
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

pub fn table(results: &Results, q: &TableQuery) -> Result<Page, StoreError> {
    let (filter, args) = filter(q);
    let from = "FROM agents a LEFT JOIN upgrade_last l ON l.agent_id = a.id";
    let conn = results.conn();
    let total: i64 =
        conn.query_row(&format!("SELECT count(*) {from} {filter}"), params_from_iter(&args), |r| r.get(0))?;
    let dir = if q.descending { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT a.id, a.name, a.identifiers, coalesce(a.conn_status, 'unknown'),
                {VERSION},
                a.status_updated, l.outcome, l.at
         {from} {filter} ORDER BY {} {dir}, lower(a.name), a.id LIMIT {} OFFSET {}",
        q.sort.column(),
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

/// Since when the agent has been in its current state at its current version.
pub fn since(results: &Results, agent_id: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    let conn = results.conn();
    let v = conn
        .query_row("SELECT status_updated FROM agents WHERE id = ?1", [agent_id], |r| r.get::<_, Option<String>>(0))
        .optional()?;
    Ok(v.flatten())
}
