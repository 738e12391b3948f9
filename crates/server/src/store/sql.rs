//! The SQL of an `Agent` search, written once for both backends: they differ in JSON functions
//! and collation, and must return the same rows in the same order.

use super::db::Dialect;
use crate::model::query::{AgentQuery, DatePrefix, NameMatch, SortKey};

/// The count and page statements of a search, and their (text) arguments in order.
#[derive(Debug)]
pub struct SearchSql {
    /// None when the query skips the total.
    pub count: Option<String>,
    pub page: String,
    pub args: Vec<String>,
}

pub const AGENT_COLUMNS: &str = "id, name, status, identifiers, last_updated";

/// The columns of an agent row as text in this dialect (PostgreSQL keeps identifiers as JSONB).
pub fn agent_columns(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => AGENT_COLUMNS,
        Dialect::Postgres => "id, name, status, identifiers::text, last_updated",
    }
}

fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

struct Builder {
    d: Dialect,
    args: Vec<String>,
}

impl Builder {
    /// Adds an argument; its placeholder.
    fn arg(&mut self, value: String) -> String {
        self.args.push(value);
        format!("?{}", self.args.len())
    }

    fn identifier_clause(&mut self, system: &Option<String>, value: &str) -> String {
        let (v, s) = match self.d {
            Dialect::Sqlite => ("json_extract(value, '$.value')", "json_extract(value, '$.system')"),
            Dialect::Postgres => ("e->>'value'", "e->>'system'"),
        };
        let mut c = format!("{v} = {}", self.arg(value.to_string()));
        if let Some(system) = system {
            c.push_str(&format!(" AND {s} = {}", self.arg(system.clone())));
        }
        format!("({c})")
    }
}

/// The `WHERE` clause of a search and its arguments.
fn filter(q: &AgentQuery, d: Dialect) -> (String, Vec<String>) {
    let mut b = Builder { d, args: Vec::new() };
    let mut clauses = Vec::new();
    if let Some(ids) = &q.ids {
        let list: Vec<String> = ids.iter().map(|id| b.arg(id.clone())).collect();
        clauses.push(if list.is_empty() { "FALSE".to_string() } else { format!("id IN ({})", list.join(",")) });
    }
    for (how, name) in &q.names {
        clauses.push(match how {
            NameMatch::Exact => format!("name = {}", b.arg(name.clone())),
            NameMatch::Prefix => {
                format!("lower(name) LIKE lower({}) ESCAPE '\\'", b.arg(format!("{}%", like_escape(name))))
            }
            NameMatch::Contains => {
                format!("lower(name) LIKE lower({}) ESCAPE '\\'", b.arg(format!("%{}%", like_escape(name))))
            }
        });
    }
    if let Some(status) = &q.status {
        let list: Vec<String> = status.any_of.iter().map(|s| b.arg(s.clone())).collect();
        clauses.push(format!("status {}IN ({})", if status.not { "NOT " } else { "" }, list.join(",")));
    }
    if let Some(identifier) = &q.identifier {
        let any: Vec<String> = identifier.any_of.iter().map(|(s, v)| b.identifier_clause(s, v)).collect();
        let each = match d {
            Dialect::Sqlite => "json_each(agents.identifiers)",
            Dialect::Postgres => "jsonb_array_elements(agents.identifiers) AS e",
        };
        let exists = format!("EXISTS (SELECT 1 FROM {each} WHERE {})", any.join(" OR "));
        clauses.push(if identifier.not { format!("NOT {exists}") } else { exists });
    }
    for f in &q.last_updated {
        clauses.push(match f.prefix {
            DatePrefix::Eq => {
                format!("(last_updated >= {} AND last_updated < {})", b.arg(f.low.clone()), b.arg(f.high.clone()))
            }
            DatePrefix::Ne => {
                format!("NOT (last_updated >= {} AND last_updated < {})", b.arg(f.low.clone()), b.arg(f.high.clone()))
            }
            DatePrefix::Gt | DatePrefix::Sa => format!("last_updated >= {}", b.arg(f.high.clone())),
            DatePrefix::Ge => format!("last_updated >= {}", b.arg(f.low.clone())),
            DatePrefix::Lt | DatePrefix::Eb => format!("last_updated < {}", b.arg(f.low.clone())),
            DatePrefix::Le => format!("last_updated < {}", b.arg(f.high.clone())),
        });
    }
    let filter = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (filter, b.args)
}

/// `ORDER BY` for `_sort`; by name when none is given, and always by id last. Text sorts by code
/// point in both backends, and an agent without identifiers sorts first ascending.
fn order_by(sort: &[(SortKey, bool)], d: Dialect) -> String {
    let text = |column: &str| match d {
        Dialect::Sqlite => column.to_string(),
        Dialect::Postgres => format!("{column} COLLATE \"C\""),
    };
    let mut keys: Vec<String> = sort
        .iter()
        .map(|(key, desc)| {
            let column = match (key, d) {
                (SortKey::Name, _) => text("name"),
                (SortKey::Status, _) => text("status"),
                (SortKey::Identifier, Dialect::Sqlite) => "json_extract(identifiers, '$[0].value')".into(),
                (SortKey::Identifier, Dialect::Postgres) => text("(identifiers->0->>'value')"),
                (SortKey::LastUpdated, _) => text("last_updated"),
            };
            let nulls = if *key == SortKey::Identifier {
                if *desc {
                    " NULLS LAST"
                } else {
                    " NULLS FIRST"
                }
            } else {
                ""
            };
            format!("{column}{}{nulls}", if *desc { " DESC" } else { "" })
        })
        .collect();
    if keys.is_empty() {
        keys.push(text("name"));
    }
    keys.push(text("id"));
    keys.join(", ")
}

/// The statements of a search in dialect `d`.
pub fn search(q: &AgentQuery, d: Dialect) -> SearchSql {
    let (filter, args) = filter(q, d);
    SearchSql {
        count: (!q.skip_total).then(|| format!("SELECT count(*) FROM agents {filter}")),
        page: format!(
            "SELECT {} FROM agents {filter} ORDER BY {} LIMIT {} OFFSET {}",
            agent_columns(d),
            order_by(&q.sort, d),
            q.count,
            q.offset
        ),
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::query::TokenFilter;

    #[test]
    fn placeholders_follow_the_dialect() {
        let q = AgentQuery {
            ids: Some(vec!["a".into(), "b".into()]),
            status: Some(TokenFilter { any_of: vec!["off".into()], not: true }),
            identifier: Some(TokenFilter { any_of: vec![(Some("urn:s".into()), "7".into())], not: false }),
            count: 10,
            ..Default::default()
        };
        let pg = search(&q, Dialect::Postgres);
        assert!(pg.page.contains("id IN (?1,?2)"), "{}", pg.page);
        assert!(pg.page.contains("status NOT IN (?3)"), "{}", pg.page);
        assert!(pg.page.contains("e->>'value' = ?4 AND e->>'system' = ?5"), "{}", pg.page);
        assert_eq!(pg.args, ["a", "b", "off", "7", "urn:s"]);
        let lite = search(&q, Dialect::Sqlite);
        assert!(lite.page.contains("json_extract(value, '$.value') = ?4"), "{}", lite.page);
        assert_eq!(lite.args, pg.args);
    }
}
