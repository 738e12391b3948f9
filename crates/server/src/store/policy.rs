//! The update policy in the store, for both backends: the policy as set (one row, written only
//! over the revision its writer read, so that two operators on two nodes cannot both win), where
//! it stands (its run, written by the node that drives it), each agent's attempts at the current
//! target, and what the policy reads of the rest of the store (every agent's name, the manual
//! upgrades since the target was set).

use serde_json::Value;

use super::db::{Arg, Row, Store};
use super::error::StoreError;
use crate::model::policy_run::{Attempt, Record, Run};

/// The policy as stored: its JSON (read back with `model::policy::parse`), what the server adds
/// to it (see `model::policy_run::Stored`), and its run.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRow {
    pub spec: Value,
    pub generation: i64,
    pub set_at: i64,
    pub clears: i64,
    pub from_latest: bool,
    pub revision: i64,
    pub run: Run,
}

const POLICY_COLUMNS: &str = "spec, generation, set_at, clears, from_latest, revision, run";
const RECORD_COLUMNS: &str = "agent_id, generation, failures, last, reason, at, retry_at, rollout";

fn policy_row(r: &Row) -> Result<PolicyRow, StoreError> {
    let bad = |what: &str, e: serde_json::Error| StoreError::Decode(format!("policy {what}: {e}"));
    Ok(PolicyRow {
        spec: serde_json::from_str(&r.text(0)?).map_err(|e| bad("spec", e))?,
        generation: r.int(1)?,
        set_at: r.int(2)?,
        clears: r.int(3)?,
        from_latest: r.boolean(4)?,
        revision: r.int(5)?,
        run: serde_json::from_str(&r.text(6)?).unwrap_or_default(),
    })
}

fn record_row(r: &Row) -> Result<Record, StoreError> {
    let last = r.text(3)?;
    Ok(Record {
        agent_id: r.text(0)?,
        generation: r.int(1)?,
        failures: r.int(2)? as u32,
        last: Attempt::parse(&last).ok_or_else(|| StoreError::Decode(format!("policy attempt '{last}'")))?,
        reason: r.opt_text(4)?,
        at: r.int(5)?,
        retry_at: r.opt_int(6)?,
        rollout: r.text(7)?,
    })
}

fn run_text(run: &Run) -> String {
    serde_json::to_string(run).expect("a run serializes")
}

impl dyn Store + '_ {
    /// The policy, if one was ever set.
    pub async fn policy(&self) -> Result<Option<PolicyRow>, StoreError> {
        let sql = format!("SELECT {POLICY_COLUMNS} FROM policy WHERE id = 1");
        self.row(&sql, vec![]).await?.as_ref().map(policy_row).transpose()
    }

    /// Writes the policy (its run included) if the stored revision is still `read` (None: there
    /// was no policy); whether it did (false: another writer came first; read it again).
    pub async fn put_policy(&self, p: &PolicyRow, read: Option<i64>) -> Result<bool, StoreError> {
        let mut args = vec![
            Arg::text(p.spec.to_string()),
            Arg::Int(p.generation),
            Arg::Int(p.set_at),
            Arg::Int(p.clears),
            Arg::Bool(p.from_latest),
            Arg::Int(p.revision),
            Arg::text(run_text(&p.run)),
        ];
        let sql = match read {
            None => format!(
                "INSERT INTO policy (id, {POLICY_COLUMNS}) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING"
            ),
            Some(rev) => {
                args.push(Arg::Int(rev));
                "UPDATE policy SET spec = ?1, generation = ?2, set_at = ?3, clears = ?4, from_latest = ?5, \
                 revision = ?6, run = ?7 WHERE id = 1 AND revision = ?8"
                    .to_string()
            }
        };
        Ok(self.exec(&sql, args).await? == 1)
    }

    /// Writes where the policy stands (by the node that drives it; operators never write it).
    pub async fn save_policy_run(&self, run: &Run) -> Result<(), StoreError> {
        self.exec("UPDATE policy SET run = ?1 WHERE id = 1", vec![Arg::text(run_text(run))]).await?;
        Ok(())
    }

    /// The agents' attempts at the target of `generation`.
    pub async fn policy_records(&self, generation: i64) -> Result<Vec<Record>, StoreError> {
        let sql = format!("SELECT {RECORD_COLUMNS} FROM policy_agents WHERE generation = ?1");
        self.rows(&sql, vec![Arg::Int(generation)]).await?.iter().map(record_row).collect()
    }

    /// Writes these agents' records (each replaces the agent's last), in one transaction.
    pub async fn save_policy_records(&self, records: &[Record]) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO policy_agents ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (agent_id) DO UPDATE SET generation = excluded.generation, failures = excluded.failures, \
             last = excluded.last, reason = excluded.reason, at = excluded.at, retry_at = excluded.retry_at, \
             rollout = excluded.rollout"
        );
        let stmts = records
            .iter()
            .map(|r| {
                let args = vec![
                    Arg::text(&r.agent_id),
                    Arg::Int(r.generation),
                    Arg::Int(r.failures.into()),
                    Arg::text(r.last.name()),
                    Arg::opt_text(r.reason.clone()),
                    Arg::Int(r.at),
                    Arg::opt_int(r.retry_at),
                    Arg::text(&r.rollout),
                ];
                (sql.clone(), args)
            })
            .collect();
        self.batch(stmts).await?;
        Ok(())
    }

    /// How many agents there are.
    pub async fn agent_count(&self) -> Result<usize, StoreError> {
        Ok(self.row("SELECT count(*) FROM agents", vec![]).await?.map_or(Ok(0), |r| r.int(0))? as usize)
    }

    /// Every agent's id and name.
    pub async fn agent_names(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.rows("SELECT id, name FROM agents", vec![]).await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
    }

    /// The `$upgrade` calls recorded at `since` (an instant as stored) or later, after result
    /// `after`: (result id, agent, the version asked for; None: the latest), oldest first.
    pub async fn manual_upgrades_since(
        &self,
        since: &str,
        after: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>, StoreError> {
        let sql = "SELECT id, agent_id, requested FROM upgrade_results WHERE id > ?1 AND at >= ?2 ORDER BY id";
        let rows = self.rows(sql, vec![Arg::Int(after), Arg::text(since)]).await?;
        rows.iter().map(|r| Ok((r.int(0)?, r.text(1)?, r.opt_text(2)?))).collect()
    }
}
