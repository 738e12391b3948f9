//! Rollouts and their members in the server's store, so that a rollout survives a restart (kill -9
//! included) and resumes where it was. Every change of a member is one row written.

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::model::{Event, Member, MemberState, Rollout, RolloutState};
use super::strategy;
use crate::server::db::{Store, StoreError};

/// The last rollout result of an agent, for `$status` and search results.
#[derive(Debug, Clone, PartialEq)]
pub struct LastResult {
    pub rollout_id: String,
    pub version: String,
    pub state: MemberState,
    pub reason: Option<String>,
}

fn state_name(s: RolloutState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn parse_state(text: &str) -> RolloutState {
    serde_json::from_value(Value::String(text.to_string())).unwrap_or(RolloutState::Halted)
}

const ROLLOUT_COLUMNS: &str = "id, version, state, reason, strategy, selection, created_at, wave, events";
const MEMBER_COLUMNS: &str = "agent_id, name, state, wave, callback, asked_at, finished_at, reason";

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    let strategy: Value = serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default();
    Ok(Rollout {
        id: r.get(0)?,
        version: r.get(1)?,
        state: parse_state(&r.get::<_, String>(2)?),
        reason: r.get(3)?,
        // Stored strategies were validated when the rollout was made.
        strategy: strategy::from_json(&strategy).unwrap_or_default(),
        selection: r.get(5)?,
        created_at: r.get(6)?,
        wave: r.get(7)?,
        events: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
    })
}

fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        agent_id: r.get(0)?,
        name: r.get(1)?,
        state: MemberState::parse(&r.get::<_, String>(2)?).unwrap_or(MemberState::Failed),
        wave: r.get(3)?,
        callback: r.get(4)?,
        asked_at: r.get(5)?,
        finished_at: r.get(6)?,
        reason: r.get(7)?,
    })
}

fn events_json(events: &[Event]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

impl Store {
    /// Stores a new rollout and all its members at once.
    pub fn insert_rollout(&self, r: &Rollout, members: &[Member]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                r.id,
                r.version,
                state_name(r.state),
                r.reason,
                strategy::to_json(&r.strategy).to_string(),
                r.selection,
                r.created_at,
                r.wave,
                events_json(&r.events)
            ],
        )?;
        {
            let mut stmt = tx.prepare(&format!(
                "INSERT INTO rollout_members (rollout_id, seq, {MEMBER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?;
            for (seq, m) in members.iter().enumerate() {
                stmt.execute(params![
                    r.id,
                    seq as i64,
                    m.agent_id,
                    m.name,
                    m.state.name(),
                    m.wave,
                    m.callback,
                    m.asked_at,
                    m.finished_at,
                    m.reason
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes a rollout's own fields (not its members).
    pub fn save_rollout(&self, r: &Rollout) -> Result<(), StoreError> {
        self.conn.lock().unwrap().execute(
            "UPDATE rollouts SET state = ?2, reason = ?3, wave = ?4, events = ?5 WHERE id = ?1",
            params![r.id, state_name(r.state), r.reason, r.wave, events_json(&r.events)],
        )?;
        Ok(())
    }

    /// Writes members of a rollout, in one transaction.
    pub fn save_members(&self, rollout_id: &str, members: &[&Member]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE rollout_members SET state = ?3, wave = ?4, callback = ?5, asked_at = ?6, finished_at = ?7, \
                 reason = ?8 WHERE rollout_id = ?1 AND agent_id = ?2",
            )?;
            for m in members {
                stmt.execute(params![
                    rollout_id,
                    m.agent_id,
                    m.state.name(),
                    m.wave,
                    m.callback,
                    m.asked_at,
                    m.finished_at,
                    m.reason
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A rollout and its members, in the order they were chosen.
    pub fn rollout(&self, id: &str) -> Result<Option<(Rollout, Vec<Member>)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1");
        let Some(r) = conn.query_row(&sql, [id], rollout_row).optional()? else { return Ok(None) };
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MEMBER_COLUMNS} FROM rollout_members WHERE rollout_id = ?1 ORDER BY seq"
        ))?;
        let members = stmt.query_map([id], member_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(Some((r, members)))
    }

    /// Every rollout, newest first, without members.
    pub fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC"))?;
        let rows = stmt.query_map([], rollout_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The rollouts the driver must hold: open ones, and ended ones with members still in flight.
    pub fn live_rollout_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM rollouts WHERE state IN ('active', 'paused') OR id IN \
             (SELECT rollout_id FROM rollout_members WHERE state = 'in-progress') ORDER BY created_at",
        )?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// The rollout and member that a request with this callback was sent for, if any.
    pub fn member_by_callback(&self, callback: &str) -> Result<Option<(String, Member)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {MEMBER_COLUMNS}, rollout_id FROM rollout_members WHERE callback = ?1");
        Ok(conn.query_row(&sql, [callback], |r| Ok((r.get(8)?, member_row(r)?))).optional()?)
    }

    /// The last rollout result of every agent that has one.
    pub fn last_results(&self) -> Result<Vec<(String, LastResult)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, rollout_id, version, state, reason FROM (SELECT m.agent_id, m.rollout_id, r.version, \
             m.state, m.reason, ROW_NUMBER() OVER (PARTITION BY m.agent_id ORDER BY m.finished_at DESC) AS n \
             FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id WHERE m.finished_at IS NOT NULL) WHERE n = 1",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    LastResult {
                        rollout_id: r.get(1)?,
                        version: r.get(2)?,
                        state: MemberState::parse(&r.get::<_, String>(3)?).unwrap_or(MemberState::Failed),
                        reason: r.get(4)?,
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
