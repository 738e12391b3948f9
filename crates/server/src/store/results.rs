//! Upgrade results and the web page's fleet queries in the store, for both backends: every
//! recorded `$upgrade` answer (`upgrade_results`), each agent's last one (`upgrade_last`, written
//! in the same transaction), and the counts and agent table of [`super::fleet`].

use edge_agent_wire::Target;

use super::db::{Arg, Row, Store};
use super::error::StoreError;
use super::fleet;
use crate::model::fleet::{FleetCounts, Page, Row as TableRow, TableQuery};
use crate::model::result::{Outcome, UpgradeResult};

const RESULT_COLUMNS: &str = "agent_id, at, requested, force, from_version, outcome, text";

fn result_row(r: &Row) -> Result<UpgradeResult, StoreError> {
    let requested = r.opt_text(2)?.and_then(|v| edge_agent_wire::parse_version(&v).ok());
    Ok(UpgradeResult {
        agent_id: r.text(0)?,
        at: r.text(1)?,
        requested: Target::from(requested),
        force: r.boolean(3)?,
        from: r.text(4)?,
        outcome: Outcome::parse(&r.text(5)?),
        text: r.text(6)?,
    })
}

fn table_row(r: &Row) -> Result<TableRow, StoreError> {
    Ok(TableRow {
        id: r.text(0)?,
        name: r.text(1)?,
        identifiers: serde_json::from_str(&r.text(2)?).unwrap_or_default(),
        state: r.text(3)?,
        version: edge_agent_wire::ReportedVersion::shown(&r.text(4)?),
        since: r.opt_text(5)?,
        last_outcome: r.opt_text(6)?,
        last_at: r.opt_text(7)?,
        added: r.text(8)?,
    })
}

fn texts(args: &[String]) -> Vec<Arg> {
    args.iter().map(Arg::text).collect()
}

impl dyn Store + '_ {
    /// Records an upgrade answer; it becomes the agent's last result.
    pub async fn insert_result(&self, r: &UpgradeResult) -> Result<(), StoreError> {
        let insert = format!("INSERT INTO upgrade_results ({RESULT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        let args = vec![
            Arg::text(&r.agent_id),
            Arg::text(&r.at),
            Arg::opt_text(r.requested.to_wire()),
            Arg::Bool(r.force),
            Arg::text(&r.from),
            Arg::text(r.outcome.as_str()),
            Arg::text(&r.text),
        ];
        // In the same transaction, the agent's newest result is the one just inserted.
        let last = "INSERT INTO upgrade_last (agent_id, result_id, outcome, at) \
            VALUES (?1, (SELECT max(id) FROM upgrade_results WHERE agent_id = ?1), ?2, ?3) \
            ON CONFLICT (agent_id) DO UPDATE SET result_id = excluded.result_id, outcome = excluded.outcome, \
            at = excluded.at";
        let last_args = vec![Arg::text(&r.agent_id), Arg::text(r.outcome.as_str()), Arg::text(&r.at)];
        self.batch(vec![(insert, args), (last.to_string(), last_args)]).await?;
        Ok(())
    }

    /// The newest `limit` results of one agent, newest first.
    pub async fn history(&self, agent_id: &str, limit: usize) -> Result<Vec<UpgradeResult>, StoreError> {
        let sql = format!("SELECT {RESULT_COLUMNS} FROM upgrade_results WHERE agent_id = ?1 ORDER BY id DESC LIMIT ?2");
        self.rows(&sql, vec![Arg::text(agent_id), Arg::Int(limit as i64)]).await?.iter().map(result_row).collect()
    }

    /// Each agent's last result with the agent's name, failures first, then newest first.
    pub async fn latest_results(&self, limit: usize) -> Result<Vec<(String, UpgradeResult)>, StoreError> {
        let sql = "SELECT r.agent_id, r.at, r.requested, r.force, r.from_version, r.outcome, r.text, a.name \
            FROM upgrade_last l JOIN upgrade_results r ON r.id = l.result_id JOIN agents a ON a.id = l.agent_id \
            ORDER BY l.outcome = 'succeeded', l.at DESC, l.agent_id LIMIT ?1";
        let rows = self.rows(sql, vec![Arg::Int(limit as i64)]).await?;
        rows.iter().map(|r| Ok((r.text(7)?, result_row(r)?))).collect()
    }

    /// How many agents are in each state and on each version.
    pub async fn fleet_counts(&self) -> Result<FleetCounts, StoreError> {
        let groups = |rows: Vec<Row>| -> Result<Vec<(Option<String>, usize)>, StoreError> {
            rows.iter().map(|r| Ok((r.opt_text(0)?, r.int(1)? as usize))).collect()
        };
        let states = groups(self.rows(fleet::COUNT_STATES, vec![]).await?)?;
        let versions = groups(self.rows(fleet::COUNT_VERSIONS, vec![]).await?)?;
        Ok(fleet::counts(states, versions))
    }

    /// One page of the agent table, and how many agents match in all.
    pub async fn fleet_table(&self, q: &TableQuery) -> Result<Page, StoreError> {
        let s = fleet::table(q, self.dialect());
        let total = self.row(&s.count, texts(&s.args)).await?.map_or(Ok(0), |r| r.int(0))?;
        let rows = self.rows(&s.page, texts(&s.args)).await?.iter().map(table_row).collect::<Result<_, _>>()?;
        Ok(Page { total: total as usize, page: q.page, size: q.size, rows })
    }

    /// The ids of every agent the table query finds, all pages.
    pub async fn fleet_ids(&self, q: &TableQuery) -> Result<Vec<String>, StoreError> {
        let s = fleet::table(q, self.dialect());
        self.rows(&s.ids, texts(&s.args)).await?.iter().map(|r| r.text(0)).collect()
    }

    /// Since when the agent has been in its stored state at its stored version.
    pub async fn status_since(&self, agent_id: &str) -> Result<Option<String>, StoreError> {
        let row = self.row("SELECT status_updated FROM agents WHERE id = ?1", vec![Arg::text(agent_id)]).await?;
        Ok(row.map(|r| r.opt_text(0)).transpose()?.flatten())
    }
}
