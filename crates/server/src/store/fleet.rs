//! The fleet queries behind the operator's web page, written once for both backends: counts by
//! state and version, and one sorted, filtered page of the agent table joined with each agent's
//! last upgrade result, done in SQL so that the answer stays small and fast at ten thousand agents.
//! The backends differ in placeholders, case folding, collation and where NULLs sort; both return
//! the same rows in the same order.

use edge_agent_wire::ReportedVersion;

use super::db::Dialect;
use crate::model::fleet::{FleetCounts, Sort, TableQuery};

/// The sort key before the name; plain columns, so that the indexes serve the common pages
/// without sorting the fleet (never-seen agents, NULL, sort first ascending).
fn sort_column(sort: Sort) -> Option<&'static str> {
    match sort {
        Sort::Name => None,
        Sort::State => Some("a.conn_status"),
        Sort::Version => Some("a.version"),
        Sort::Since => Some("a.status_updated"),
        Sort::LastUpgrade => Some("l.at"),
    }
}

/// The statements of a table query in one dialect, and their (text) arguments in order.
#[derive(Debug)]
pub struct TableSql {
    pub count: String,
    pub page: String,
    /// Every matching agent's id, all pages.
    pub ids: String,
    pub args: Vec<String>,
}

fn like(text: &str) -> String {
    format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// The WHERE clause of a table query and its arguments.
fn filter(q: &TableQuery, d: Dialect) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut args: Vec<String> = Vec::new();
    let arg = |args: &mut Vec<String>, v: String| {
        args.push(v);
        format!("?{}", args.len())
    };
    if let Some(t) = &q.text {
        let (name, ident) = (arg(&mut args, like(t)), arg(&mut args, like(t)));
        // SQLite's LIKE ignores ASCII case by itself; PostgreSQL keeps identifiers as JSONB.
        clauses.push(match d {
            Dialect::Sqlite => {
                format!("(a.name LIKE {name} ESCAPE '\\' OR a.identifiers LIKE {ident} ESCAPE '\\')")
            }
            Dialect::Postgres => {
                format!("(a.name ILIKE {name} ESCAPE '\\' OR a.identifiers::text ILIKE {ident} ESCAPE '\\')")
            }
        });
    }
    if let Some(s) = &q.state {
        clauses.push(format!("coalesce(a.conn_status, 'unknown') = {}", arg(&mut args, s.as_str().to_string())));
    }
    if let Some(v) = &q.version {
        clauses.push(format!("a.conn_status IS NOT NULL AND a.version = {}", arg(&mut args, v.clone())));
    }
    if let Some(v) = &q.not_version {
        let not = match d {
            Dialect::Sqlite => "IS NOT",
            Dialect::Postgres => "IS DISTINCT FROM",
        };
        clauses.push(format!("(a.conn_status IS NULL OR a.version {not} {})", arg(&mut args, v.clone())));
    }
    if q.last_failed {
        clauses.push("l.outcome IS NOT NULL AND l.outcome != 'succeeded'".into());
    }
    let sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (sql, args)
}

/// `ORDER BY` of the table: the sort key, then the name ignoring case, then the id, all in one
/// direction. SQLite compares text bytewise and sorts NULL first ascending; PostgreSQL is told to.
fn order_by(q: &TableQuery, d: Dialect) -> String {
    let dir = if q.descending { "DESC" } else { "ASC" };
    let (name, id, text, nulls) = match d {
        Dialect::Sqlite => ("a.name COLLATE NOCASE", "a.id", "", ""),
        Dialect::Postgres => (
            "lower(a.name) COLLATE \"C\"",
            "a.id COLLATE \"C\"",
            " COLLATE \"C\"",
            if q.descending { " NULLS LAST" } else { " NULLS FIRST" },
        ),
    };
    let first = sort_column(q.sort).map(|c| format!("{c}{text} {dir}{nulls}, ")).unwrap_or_default();
    format!("{first}{name} {dir}, {id} {dir}")
}

/// The last reported version, `unknown` for an agent never seen (as `$status` says).
const VERSION: &str = "CASE WHEN a.conn_status IS NULL THEN 'unknown' ELSE coalesce(a.version, 'unknown') END";

/// The statements of a table query in dialect `d`.
pub fn table(q: &TableQuery, d: Dialect) -> TableSql {
    let (filter, args) = filter(q, d);
    let joined = "FROM agents a LEFT JOIN upgrade_last l ON l.agent_id = a.id";
    // The count needs the join only when it filters on the last result.
    let counted = if q.last_failed { joined } else { "FROM agents a" };
    let identifiers = match d {
        Dialect::Sqlite => "a.identifiers",
        Dialect::Postgres => "a.identifiers::text",
    };
    TableSql {
        count: format!("SELECT count(*) {counted} {filter}"),
        page: format!(
            "SELECT a.id, a.name, {identifiers}, coalesce(a.conn_status, 'unknown'), {VERSION}, a.status_updated, \
             l.outcome, l.at, a.last_updated {joined} {filter} ORDER BY {} LIMIT {} OFFSET {}",
            order_by(q, d),
            q.size,
            q.page * q.size
        ),
        ids: format!("SELECT a.id {joined} {filter}"),
        args,
    }
}

/// `(state, n)` and `(version, n)` groups as the store counted them (NULL: never seen) merged
/// into [`FleetCounts`], `unknown` for an agent never seen.
pub fn counts(states: Vec<(Option<String>, usize)>, versions: Vec<(Option<String>, usize)>) -> FleetCounts {
    let merge = |groups: Vec<(Option<String>, usize)>, shown: fn(&str) -> String| {
        let mut merged: Vec<(String, usize)> = Vec::new();
        for (key, n) in groups {
            let key = key.map_or_else(|| "unknown".into(), |k| shown(&k));
            match merged.iter_mut().find(|(k, _)| *k == key) {
                Some((_, m)) => *m += n,
                None => merged.push((key, n)),
            }
        }
        merged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        merged
    };
    // Versions stored before they were checked show as `invalid`, merged into one group.
    let (states, versions) = (merge(states, str::to_string), merge(versions, ReportedVersion::shown));
    let total = states.iter().map(|(_, n)| n).sum();
    FleetCounts { total, states, versions }
}

/// Grouped on the plain columns, so that the store counts from its indexes instead of reading
/// every agent. An agent never seen has neither state nor version; a seen one always has both.
pub const COUNT_STATES: &str = "SELECT conn_status, count(*) FROM agents GROUP BY conn_status";
pub const COUNT_VERSIONS: &str = "SELECT version, count(*) FROM agents GROUP BY version";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_order_follow_the_dialect() {
        let q = TableQuery {
            text: Some("50%_off".into()),
            not_version: Some("1.3.0".into()),
            sort: Sort::Version,
            descending: true,
            size: 10,
            page: 2,
            ..Default::default()
        };
        let pg = table(&q, Dialect::Postgres);
        assert!(pg.page.contains("ILIKE ?1") && pg.page.contains("ILIKE ?2"), "{}", pg.page);
        assert!(pg.page.contains("IS DISTINCT FROM ?3"), "{}", pg.page);
        assert!(pg.page.contains("a.version COLLATE \"C\" DESC NULLS LAST"), "{}", pg.page);
        assert!(pg.page.ends_with("LIMIT 10 OFFSET 20"), "{}", pg.page);
        assert_eq!(pg.args, ["%50\\%\\_off%", "%50\\%\\_off%", "1.3.0"]);
        let lite = table(&q, Dialect::Sqlite);
        assert!(lite.page.contains("a.version IS NOT ?3") && !lite.page.contains("ILIKE"), "{}", lite.page);
        assert!(lite.page.contains("a.version DESC, a.name COLLATE NOCASE DESC, a.id DESC"), "{}", lite.page);
        assert_eq!(lite.args, pg.args);
        assert!(!lite.count.contains("upgrade_last"), "the count joins only to filter on results");
    }

    #[test]
    fn counts_merge_never_seen_into_unknown() {
        let c = counts(
            vec![(Some("connected".into()), 3), (None, 1), (Some("disconnected".into()), 3)],
            vec![(Some("1.3.0".into()), 2), (Some("1.2.0".into()), 4), (None, 1)],
        );
        assert_eq!(c.total, 7);
        assert_eq!(c.states, [("connected".into(), 3), ("disconnected".into(), 3), ("unknown".into(), 1)]);
        assert_eq!(c.versions[0], ("1.2.0".to_string(), 4));
        let junk = counts(vec![], vec![(Some("x".repeat(1000)), 2), (Some("not a version".into()), 1)]);
        assert_eq!(junk.versions, [("invalid".to_string(), 3)]);
    }
}
