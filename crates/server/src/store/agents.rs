//! `Agent` resources and each agent's last stored status, for both backends.

use edge_agent_base::id::uuid;
use edge_agent_base::time::now_iso;
use serde_json::Value;

use super::db::{Arg, Dialect, Row, Store};
use super::error::StoreError;
use super::sql::{self, agent_columns};
use crate::model::agent::{AgentRow, StatusRow};
use crate::model::query::{AgentQuery, TokenFilter};

fn agent_row(mut r: Row) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        id: r.take_text(0)?,
        name: r.take_text(1)?,
        status: r.take_text(2)?,
        identifiers: serde_json::from_str(&r.take_text(3)?).unwrap_or(Value::Array(vec![])),
        last_updated: r.take_text(4)?,
    })
}

/// An agent row's columns as arguments: ?1 id, ?2 name, ?3 status, ?4 identifiers, ?5 last_updated.
pub(super) fn agent_args(row: &AgentRow) -> Vec<Arg> {
    vec![
        Arg::text(&row.id),
        Arg::text(&row.name),
        Arg::text(&row.status),
        Arg::text(row.identifiers.to_string()),
        Arg::text(&row.last_updated),
    ]
}

/// The identifiers' placeholder (?4): JSON text, which PostgreSQL keeps as `jsonb`.
pub(super) fn identifiers_arg(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "?4",
        Dialect::Postgres => "CAST(?4::text AS jsonb)",
    }
}

/// The sweep's page of agents stored as connected after ?1, in id order. Read along the primary
/// key, filtering the status as it goes: SQLite, left to itself, takes the status index, which
/// is not in id order, and sorts every connected agent for each page (all of a node's agents,
/// for each thousand: a sweep of 18,900 took 6x as long). PostgreSQL plans it from its
/// statistics.
pub(super) fn stored_connected_sql(d: Dialect, limit: usize) -> String {
    // A unary `+` keeps SQLite from using an index on the column.
    let status = match d {
        Dialect::Sqlite => "+conn_status",
        Dialect::Postgres => "conn_status",
    };
    format!(
        "SELECT id, coalesce(status_updated, '') FROM agents WHERE id > ?1 AND {status} = 'connected' \
         ORDER BY id LIMIT {limit}"
    )
}

impl dyn Store + '_ {
    /// Makes an agent; with `lease` (its name and holder), only while that lease is held
    /// ([`Self::fence`]), else [`StoreError::LeaseLost`].
    pub async fn create_agent(
        &self,
        name: &str,
        status: &str,
        identifiers: &Value,
        lease: Option<(&str, &str)>,
    ) -> Result<AgentRow, StoreError> {
        let row = AgentRow {
            id: uuid(),
            name: name.to_string(),
            status: status.to_string(),
            identifiers: identifiers.clone(),
            last_updated: now_iso(),
        };
        let identifiers = identifiers_arg(self.dialect());
        let sql = format!(
            "INSERT INTO agents (id, name, status, identifiers, last_updated) VALUES (?1, ?2, ?3, {identifiers}, ?5)"
        );
        let args = agent_args(&row);
        match lease {
            None => {
                self.exec(&sql, args).await?;
            }
            Some((lease, holder)) => {
                let made = self.batch_if(self.fence(lease, holder), vec![(sql, args)]).await?;
                made.ok_or_else(|| StoreError::LeaseLost(lease.to_string()))?;
            }
        }
        Ok(row)
    }

    pub async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {} FROM agents WHERE id = ?1", agent_columns(self.dialect()));
        self.row(&sql, vec![Arg::text(id)]).await?.map(agent_row).transpose()
    }

    /// What a connecting agent's socket needs: its `Agent`'s status (`active`, `off`) and its
    /// last stored version, in one read.
    pub async fn connecting(&self, id: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        let row = self.row("SELECT status, version FROM agents WHERE id = ?1", vec![Arg::text(id)]).await?;
        row.map(|r| Ok((r.text(0)?, r.opt_text(1)?))).transpose()
    }

    /// The first agent other than `except` that has one of `identifiers` (system, value), with
    /// the identifier as `system|value`. Two identifiers are the same when their values are and
    /// their systems are, or either has none. Identifiers are unique: each write of an `Agent`
    /// asks first. One search by value, the systems compared here.
    pub async fn identifier_clash(
        &self,
        identifiers: &[(Option<String>, String)],
        except: Option<&str>,
    ) -> Result<Option<(String, String)>, StoreError> {
        if identifiers.is_empty() {
            return Ok(None);
        }
        let any_of = identifiers.iter().map(|(_, v)| (None, v.clone())).collect();
        let q =
            AgentQuery { identifier: Some(TokenFilter { any_of, not: false }), count: 1_000, ..AgentQuery::default() };
        let q = AgentQuery { skip_total: true, ..q };
        for row in self.search(&q).await?.0.into_iter().filter(|r| Some(r.id.as_str()) != except) {
            for held in row.identifiers.as_array().into_iter().flatten() {
                let held_system = held["system"].as_str().filter(|s| !s.is_empty());
                for (system, value) in identifiers {
                    let systems_meet = match (system.as_deref(), held_system) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    };
                    if held["value"].as_str() == Some(value.as_str()) && systems_meet {
                        return Ok(Some((row.id, format!("{}|{value}", system.as_deref().unwrap_or_default()))));
                    }
                }
            }
        }
        Ok(None)
    }

    /// One page of matching agents, and how many match in all.
    pub async fn search(&self, q: &AgentQuery) -> Result<(Vec<AgentRow>, usize), StoreError> {
        let s = sql::search(q, self.dialect());
        let args = || s.args.iter().map(Arg::text).collect::<Vec<_>>();
        let rows = self.rows(&s.page, args()).await?.into_iter().map(agent_row).collect::<Result<Vec<_>, _>>()?;
        let total = match &s.count {
            Some(count) => self.row(count, args()).await?.map_or(Ok(0), |r| r.int(0))? as usize,
            None => rows.len(),
        };
        Ok((rows, total))
    }

    /// The last stored status of each agent, in the order asked (None: never seen, or no agent).
    pub async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, StoreError> {
        let which = match self.dialect() {
            Dialect::Sqlite => "id IN (SELECT value FROM json_each(?1))",
            Dialect::Postgres => "id = ANY(?1)",
        };
        let sql = format!("SELECT id, conn_status, version, status_updated FROM agents WHERE {which}");
        let mut found = std::collections::HashMap::new();
        for r in self.rows(&sql, vec![Arg::List(ids.to_vec())]).await? {
            if let Some(s) = StatusRow::from_columns(r.opt_text(1)?, r.opt_text(2)?, r.opt_text(3)?) {
                found.insert(r.text(0)?, s);
            }
        }
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    /// A page of the agents stored as connected, in the order of their ids, after `after`: each
    /// id with the time its status was stored (read by [`crate::conn::sweep`]).
    pub async fn stored_connected(&self, after: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.rows(&stored_connected_sql(self.dialect(), limit), vec![Arg::text(after)]).await?;
        rows.into_iter().map(|mut r| Ok((r.take_text(0)?, r.take_text(1)?))).collect()
    }

    /// Stores each agent of `gone` (its id, and the time its status was stored as it was read)
    /// as disconnected, unless its status was stored again since. The time stays as it was: a
    /// node writing the agent's return, which happened later, writes over it. How many changed.
    pub async fn store_gone(&self, gone: &[(String, String)]) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE agents SET conn_status = 'disconnected' \
            WHERE id = ?1 AND conn_status = 'connected' AND coalesce(status_updated, '') = ?2";
        let writes = gone.iter().map(|(id, at)| (SQL.to_string(), vec![Arg::text(id), Arg::text(at)])).collect();
        Ok(self.batch(writes).await?.into_iter().sum())
    }

    /// Each agent's status, in one statement; a stored status newer than the one given stays
    /// (two nodes may write an agent's leaving and its arrival in either order).
    pub async fn save_statuses(&self, rows: &[(String, StatusRow)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let list: Vec<Value> = rows
            .iter()
            .map(|(id, s)| serde_json::json!({"id": id, "s": s.status.as_str(), "v": s.version, "u": s.updated}))
            .collect();
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "UPDATE agents SET conn_status = j.value->>'s', version = j.value->>'v', status_updated = j.value->>'u' \
                 FROM json_each(?1) AS j WHERE agents.id = j.value->>'id' \
                 AND (agents.status_updated IS NULL OR agents.status_updated <= j.value->>'u')"
            }
            Dialect::Postgres => {
                "UPDATE agents SET conn_status = j.s, version = j.v, status_updated = j.u \
                 FROM jsonb_to_recordset(CAST(?1::text AS jsonb)) AS j(id text, s text, v text, u text) \
                 WHERE agents.id = j.id AND (agents.status_updated IS NULL OR agents.status_updated <= j.u)"
            }
        };
        self.exec(sql, vec![Arg::Text(Value::Array(list).to_string())]).await?;
        Ok(())
    }
}
