//! Rollouts and their members in the store, for both backends, so that a rollout survives a
//! restart (kill -9 included) and any node can take over driving it. A member's final state is
//! never overwritten by a later write, except `timed-out` by the agent's late answer: whichever
//! node files an answer first, it stays.

use async_trait::async_trait;
use edge_agent_wire::Callback;
use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use super::sqlite::SqliteStore;
use super::StoreError;
use crate::rollout::model::{Event, LastResult, Member, MemberState, Rollout, RolloutState};
use crate::rollout::strategy;

#[async_trait]
pub trait RolloutStore: Send + Sync {
    /// Stores a new rollout and all its members at once.
    async fn insert_rollout(&self, r: &Rollout, members: &[Member]) -> Result<(), StoreError>;
    /// Writes a rollout's own fields (not its members) if its stored state is still `expected`
    /// (an operator may have changed it on another node); whether it did.
    async fn save_rollout(&self, r: &Rollout, expected: RolloutState) -> Result<bool, StoreError>;
    /// Writes members of a rollout, in one transaction, keeping any final state already stored.
    async fn save_members(&self, rollout_id: &str, members: &[Member]) -> Result<(), StoreError>;
    /// Records that these members are asked, each only if it is still pending in the store (no
    /// other node asked it, no cancel skipped it); which ones were.
    async fn claim_members(&self, rollout_id: &str, members: &[Member]) -> Result<Vec<bool>, StoreError>;
    /// Marks every member still pending as skipped (a cancel); how many.
    async fn skip_pending(&self, rollout_id: &str, reason: &str, at: i64) -> Result<u64, StoreError>;
    /// A rollout and its members, in the order they were chosen.
    async fn rollout(&self, id: &str) -> Result<Option<(Rollout, Vec<Member>)>, StoreError>;
    /// Every rollout, newest first, without members.
    async fn rollouts(&self) -> Result<Vec<Rollout>, StoreError>;
    /// The rollouts to drive: open ones, and ended ones with members still in flight.
    async fn live_rollout_ids(&self) -> Result<Vec<String>, StoreError>;
    /// The rollout and member that a request with this callback was sent for, if any.
    async fn member_by_callback(&self, callback: &Callback) -> Result<Option<(String, Member)>, StoreError>;
    /// The last rollout result of every agent that has one.
    async fn last_results(&self) -> Result<Vec<(String, LastResult)>, StoreError>;
}

pub(super) const ROLLOUT_COLUMNS: &str = "id, version, state, reason, strategy, selection, created_at, wave, events";
pub(super) const MEMBER_COLUMNS: &str = "agent_id, name, state, wave, callback, asked_at, finished_at, reason";
/// The states a write may replace: nothing final but `timed-out`.
pub(super) const REPLACEABLE: &str = "('pending', 'in-progress', 'timed-out')";
/// A claim holds only while the rollout is active: once a pause or a cancel is written, no node
/// asks anyone new.
pub(super) const CLAIM_SQLITE: &str = "UPDATE rollout_members SET state = 'in-progress', wave = ?3, callback = ?4, \
    asked_at = ?5 WHERE rollout_id = ?1 AND agent_id = ?2 AND state = 'pending' \
    AND EXISTS (SELECT 1 FROM rollouts WHERE id = ?1 AND state = 'active')";
pub(super) const SKIP_SQLITE: &str = "UPDATE rollout_members SET state = 'skipped', reason = ?2, finished_at = ?3 \
    WHERE rollout_id = ?1 AND state = 'pending'";
pub(super) const LIVE_IDS: &str = "SELECT id FROM rollouts WHERE state IN ('active', 'paused') OR id IN \
    (SELECT rollout_id FROM rollout_members WHERE state IN ('in-progress', 'pending')) ORDER BY created_at";
pub(super) const LAST_RESULTS: &str = "SELECT agent_id, rollout_id, version, state, reason FROM (SELECT m.agent_id, \
    m.rollout_id, r.version, m.state, m.reason, ROW_NUMBER() OVER (PARTITION BY m.agent_id ORDER BY \
    m.finished_at DESC) AS n FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id \
    WHERE m.finished_at IS NOT NULL) AS last WHERE n = 1";

pub(super) fn state_name(s: RolloutState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn parse_state(text: &str) -> RolloutState {
    serde_json::from_value(Value::String(text.to_string())).unwrap_or(RolloutState::Halted)
}

pub(super) fn member_state(text: &str) -> MemberState {
    MemberState::parse(text).unwrap_or(MemberState::Failed)
}

pub(super) fn strategy_text(r: &Rollout) -> String {
    strategy::to_json(&r.strategy).to_string()
}

pub(super) fn events_text(events: &[Event]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

/// A stored rollout from its text columns.
#[allow(clippy::too_many_arguments)]
pub(super) fn rollout_of(
    id: String,
    version: String,
    state: String,
    reason: Option<String>,
    strategy: String,
    selection: String,
    created_at: i64,
    wave: i64,
    events: String,
) -> Rollout {
    let strategy: Value = serde_json::from_str(&strategy).unwrap_or_default();
    Rollout {
        id,
        version,
        state: parse_state(&state),
        reason,
        // Stored strategies were validated when the rollout was made.
        strategy: strategy::from_json(&strategy).unwrap_or_default(),
        selection,
        created_at,
        wave: wave as u32,
        events: serde_json::from_str(&events).unwrap_or_default(),
    }
}

fn sqlite_rollout(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    Ok(rollout_of(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

fn sqlite_member(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        agent_id: r.get(0)?,
        name: r.get(1)?,
        state: member_state(&r.get::<_, String>(2)?),
        wave: r.get(3)?,
        callback: r.get::<_, Option<String>>(4)?.map(Callback::from),
        asked_at: r.get(5)?,
        finished_at: r.get(6)?,
        reason: r.get(7)?,
    })
}

fn sqlite_last(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, LastResult)> {
    let last = LastResult {
        rollout_id: r.get(1)?,
        version: r.get(2)?,
        state: member_state(&r.get::<_, String>(3)?),
        reason: r.get(4)?,
    };
    Ok((r.get(0)?, last))
}

#[async_trait]
impl RolloutStore for SqliteStore {
    async fn insert_rollout(&self, r: &Rollout, members: &[Member]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
            params![
                r.id,
                r.version,
                state_name(r.state),
                r.reason,
                strategy_text(r),
                r.selection,
                r.created_at,
                r.wave,
                events_text(&r.events)
            ],
        )?;
        {
            let mut stmt = tx.prepare(&format!(
                "INSERT INTO rollout_members (rollout_id, seq, {MEMBER_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?;
            for (seq, m) in members.iter().enumerate() {
                let s = m.state.name();
                let args = params![
                    r.id,
                    seq as i64,
                    m.agent_id,
                    m.name,
                    s,
                    m.wave,
                    m.callback.as_ref().map(Callback::as_str),
                    m.asked_at,
                    m.finished_at,
                    m.reason
                ];
                stmt.execute(args)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn save_rollout(&self, r: &Rollout, expected: RolloutState) -> Result<bool, StoreError> {
        let n = self.conn.lock().unwrap().execute(
            "UPDATE rollouts SET state = ?2, reason = ?3, wave = ?4, events = ?5 WHERE id = ?1 AND state = ?6",
            params![r.id, state_name(r.state), r.reason, r.wave, events_text(&r.events), state_name(expected)],
        )?;
        Ok(n == 1)
    }

    async fn save_members(&self, rollout_id: &str, members: &[Member]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE rollout_members SET state = ?3, wave = ?4, callback = ?5, asked_at = ?6, finished_at = ?7, \
                 reason = ?8 WHERE rollout_id = ?1 AND agent_id = ?2 AND state IN {REPLACEABLE}"
            ))?;
            for m in members {
                let s = m.state.name();
                stmt.execute(params![
                    rollout_id,
                    m.agent_id,
                    s,
                    m.wave,
                    m.callback.as_ref().map(Callback::as_str),
                    m.asked_at,
                    m.finished_at,
                    m.reason
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn claim_members(&self, rollout_id: &str, members: &[Member]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        let mut claimed = Vec::with_capacity(members.len());
        {
            let mut stmt = tx.prepare_cached(CLAIM_SQLITE)?;
            for m in members {
                claimed.push(
                    stmt.execute(params![
                        rollout_id,
                        m.agent_id,
                        m.wave,
                        m.callback.as_ref().map(Callback::as_str),
                        m.asked_at
                    ])? == 1,
                );
            }
        }
        tx.commit()?;
        Ok(claimed)
    }

    async fn skip_pending(&self, rollout_id: &str, reason: &str, at: i64) -> Result<u64, StoreError> {
        Ok(self.conn.lock().unwrap().execute(SKIP_SQLITE, params![rollout_id, reason, at])? as u64)
    }

    async fn rollout(&self, id: &str) -> Result<Option<(Rollout, Vec<Member>)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1");
        let Some(r) = conn.query_row(&sql, [id], sqlite_rollout).optional()? else { return Ok(None) };
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM rollout_members WHERE rollout_id = ?1 ORDER BY seq");
        let members = conn.prepare_cached(&sql)?.query_map([id], sqlite_member)?.collect::<Result<Vec<_>, _>>()?;
        Ok(Some((r, members)))
    }

    async fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC");
        let rows = conn.prepare_cached(&sql)?.query_map([], sqlite_rollout)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    async fn live_rollout_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let ids = conn.prepare_cached(LIVE_IDS)?.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    async fn member_by_callback(&self, callback: &Callback) -> Result<Option<(String, Member)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {MEMBER_COLUMNS}, rollout_id FROM rollout_members WHERE callback = ?1");
        Ok(conn.query_row(&sql, [callback.as_str()], |r| Ok((r.get(8)?, sqlite_member(r)?))).optional()?)
    }

    async fn last_results(&self) -> Result<Vec<(String, LastResult)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let rows = conn.prepare_cached(LAST_RESULTS)?.query_map([], sqlite_last)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
