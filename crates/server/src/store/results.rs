//! Upgrade results and the web page's fleet queries in the store, for both backends: every
//! recorded `$upgrade` answer (`upgrade_results`), each agent's last one (`upgrade_last`, written
//! in the same transaction), and the counts and agent table of [`super::fleet`].

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, OptionalExtension};
use tokio_postgres::types::ToSql;

use super::fleet::{self, Counts, Page, Row, TableQuery};
use super::postgres::{bounded, PgStore};
use super::sql::Dialect;
use super::sqlite::SqliteStore;
use super::types::{Outcome, UpgradeResult};
use super::StoreError;

#[async_trait]
pub trait ResultsStore: Send + Sync {
    /// Records an upgrade answer; it becomes the agent's last result.
    async fn insert_result(&self, r: &UpgradeResult) -> Result<(), StoreError>;
    /// The newest `limit` results of one agent, newest first.
    async fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<UpgradeResult>, StoreError>;
    /// Each agent's last result with the agent's name, failures first, then newest first.
    async fn latest_results(&self, limit: usize) -> Result<Vec<(String, UpgradeResult)>, StoreError>;
    /// How many agents are in each state and on each version.
    async fn fleet_counts(&self) -> Result<Counts, StoreError>;
    /// One page of the agent table, and how many agents match in all.
    async fn fleet_table(&self, q: &TableQuery) -> Result<Page, StoreError>;
    /// The ids of every agent the table query finds, all pages.
    async fn fleet_ids(&self, q: &TableQuery) -> Result<Vec<String>, StoreError>;
    /// Since when the agent has been in its stored state at its stored version.
    async fn status_since(&self, agent_id: &str) -> Result<Option<String>, StoreError>;
}

const RESULT_COLUMNS: &str = "agent_id, at, requested, force, from_version, outcome, text";
const HISTORY: &str = "SELECT agent_id, at, requested, force, from_version, outcome, text FROM upgrade_results \
    WHERE agent_id = ?1 ORDER BY id DESC LIMIT ?2";
const LATEST: &str = "SELECT r.agent_id, r.at, r.requested, r.force, r.from_version, r.outcome, r.text, a.name \
    FROM upgrade_last l JOIN upgrade_results r ON r.id = l.result_id JOIN agents a ON a.id = l.agent_id \
    ORDER BY l.outcome = 'succeeded', l.at DESC, l.agent_id LIMIT ?1";
const SINCE: &str = "SELECT status_updated FROM agents WHERE id = ?1";

/// `?n` placeholders become PostgreSQL's `$n`.
fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

#[allow(clippy::too_many_arguments)]
fn result_of(
    agent_id: String,
    at: String,
    requested: Option<String>,
    force: bool,
    from: String,
    outcome: &str,
    text: String,
) -> UpgradeResult {
    UpgradeResult { agent_id, at, requested, force, from, outcome: Outcome::parse(outcome), text }
}

fn sqlite_result(r: &rusqlite::Row<'_>) -> rusqlite::Result<UpgradeResult> {
    Ok(result_of(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, &r.get::<_, String>(5)?, r.get(6)?))
}

fn sqlite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        name: r.get(1)?,
        identifiers: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
        state: r.get(3)?,
        version: r.get(4)?,
        since: r.get(5)?,
        last_outcome: r.get(6)?,
        last_at: r.get(7)?,
    })
}

fn sqlite_groups(conn: &rusqlite::Connection, sql: &str) -> Result<Vec<(Option<String>, usize)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as usize)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[async_trait]
impl ResultsStore for SqliteStore {
    async fn insert_result(&self, r: &UpgradeResult) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO upgrade_results ({RESULT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![r.agent_id, r.at, r.requested, r.force, r.from, r.outcome.as_str(), r.text],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT OR REPLACE INTO upgrade_last (agent_id, result_id, outcome, at) VALUES (?1, ?2, ?3, ?4)",
            params![r.agent_id, id, r.outcome.as_str(), r.at],
        )?;
        tx.commit()?;
        Ok(())
    }

    async fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<UpgradeResult>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(HISTORY)?;
        let rows = stmt.query_map(params![agent_id, limit as i64], sqlite_result)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    async fn latest_results(&self, limit: usize) -> Result<Vec<(String, UpgradeResult)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(LATEST)?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get::<_, String>(7)?, sqlite_result(r)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    async fn fleet_counts(&self) -> Result<Counts, StoreError> {
        let conn = self.conn.lock().unwrap();
        let states = sqlite_groups(&conn, fleet::COUNT_STATES)?;
        let versions = sqlite_groups(&conn, fleet::COUNT_VERSIONS)?;
        Ok(fleet::counts(states, versions))
    }

    async fn fleet_table(&self, q: &TableQuery) -> Result<Page, StoreError> {
        let s = fleet::table(q, Dialect::Sqlite);
        let conn = self.conn.lock().unwrap();
        let total: i64 = conn.query_row(&s.count, params_from_iter(&s.args), |r| r.get(0))?;
        let mut stmt = conn.prepare_cached(&s.page)?;
        let rows = stmt.query_map(params_from_iter(&s.args), sqlite_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(Page { total: total as usize, page: q.page, size: q.size, rows })
    }

    async fn fleet_ids(&self, q: &TableQuery) -> Result<Vec<String>, StoreError> {
        let s = fleet::table(q, Dialect::Sqlite);
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(&s.ids)?;
        let rows = stmt.query_map(params_from_iter(&s.args), |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    async fn status_since(&self, agent_id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let v = conn.query_row(SINCE, [agent_id], |r| r.get::<_, Option<String>>(0)).optional()?;
        Ok(v.flatten())
    }
}

fn pg_result(r: &tokio_postgres::Row) -> UpgradeResult {
    result_of(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))
}

fn pg_row(r: &tokio_postgres::Row) -> Row {
    Row {
        id: r.get(0),
        name: r.get(1),
        identifiers: serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default(),
        state: r.get(3),
        version: r.get(4),
        since: r.get(5),
        last_outcome: r.get(6),
        last_at: r.get(7),
    }
}

fn text_args(args: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl ResultsStore for PgStore {
    async fn insert_result(&self, r: &UpgradeResult) -> Result<(), StoreError> {
        bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let insert = format!(
                "INSERT INTO upgrade_results ({RESULT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"
            );
            let outcome = r.outcome.as_str();
            let row = tx
                .query_one(&insert, &[&r.agent_id, &r.at, &r.requested, &r.force, &r.from, &outcome, &r.text])
                .await?;
            let id: i64 = row.get(0);
            tx.execute(
                "INSERT INTO upgrade_last (agent_id, result_id, outcome, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (agent_id) DO UPDATE SET result_id = excluded.result_id, outcome = excluded.outcome, \
                 at = excluded.at",
                &[&r.agent_id, &id, &outcome, &r.at],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<UpgradeResult>, StoreError> {
        let rows = self.query(&pg(HISTORY), &[&agent_id, &(limit as i64)]).await?;
        Ok(rows.iter().map(pg_result).collect())
    }

    async fn latest_results(&self, limit: usize) -> Result<Vec<(String, UpgradeResult)>, StoreError> {
        let rows = self.query(&pg(LATEST), &[&(limit as i64)]).await?;
        Ok(rows.iter().map(|r| (r.get(7), pg_result(r))).collect())
    }

    async fn fleet_counts(&self) -> Result<Counts, StoreError> {
        let groups = |rows: Vec<tokio_postgres::Row>| -> Vec<(Option<String>, usize)> {
            rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as usize)).collect()
        };
        let states = groups(self.query(fleet::COUNT_STATES, &[]).await?);
        let versions = groups(self.query(fleet::COUNT_VERSIONS, &[]).await?);
        Ok(fleet::counts(states, versions))
    }

    async fn fleet_table(&self, q: &TableQuery) -> Result<Page, StoreError> {
        let s = fleet::table(q, Dialect::Postgres);
        let args = text_args(&s.args);
        let total: i64 = self.query(&s.count, &args).await?.first().map(|r| r.get(0)).unwrap_or(0);
        let rows = self.query(&s.page, &args).await?.iter().map(pg_row).collect();
        Ok(Page { total: total as usize, page: q.page, size: q.size, rows })
    }

    async fn fleet_ids(&self, q: &TableQuery) -> Result<Vec<String>, StoreError> {
        let s = fleet::table(q, Dialect::Postgres);
        Ok(self.query(&s.ids, &text_args(&s.args)).await?.iter().map(|r| r.get(0)).collect())
    }

    async fn status_since(&self, agent_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.query(&pg(SINCE), &[&agent_id]).await?.first().and_then(|r| r.get(0)))
    }
}
