//! Rollouts in the store, for both backends, so that a rollout survives a restart (kill -9
//! included) and any node can take over driving it. A rollout's own fields are written only when
//! its stored state is the one the writer read (an operator may have changed it on another
//! node); its members are [`super::members`].

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use semver::Version;
use serde_json::Value;

use super::db::{Arg, Row, Stmt, Store};
use super::error::StoreError;
use super::members::{insert_member, member_row, MEMBER_COLUMNS};
use crate::model::member::{counts, Counts, Member, MemberState};
use crate::model::rollout::{Event, LastResult, Rollout, RolloutState, Summary, MAX_FAILURES_SHOWN};
use crate::model::strategy;

const ROLLOUT_COLUMNS: &str = "id, version, state, reason, strategy, selection, created_at, wave, events";
/// Open rollouts, and ended ones with a member still pending or in flight: looked up rollout by
/// rollout on the index by (state, rollout), never by listing every pending member (a live
/// rollout of 100,000 offline agents made that 8 ms a read on SQLite).
const LIVE_IDS: &str = "SELECT id FROM rollouts r WHERE state IN ('active', 'paused') OR EXISTS \
    (SELECT 1 FROM rollout_members m WHERE m.state IN ('in-progress', 'pending') AND m.rollout_id = r.id) \
    ORDER BY created_at";
const LAST_RESULTS: &str = "SELECT agent_id, rollout_id, version, state, reason, finished_at FROM (SELECT \
    m.agent_id, m.rollout_id, r.version, m.state, m.reason, m.finished_at, ROW_NUMBER() OVER (PARTITION BY \
    m.agent_id ORDER BY m.finished_at DESC) AS n FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id \
    WHERE m.finished_at IS NOT NULL) AS last WHERE n = 1";
/// The members that finished at or after ?1, oldest first (on the `finished_at` index).
const FINISHED_SINCE: &str = "SELECT m.agent_id, m.rollout_id, r.version, m.state, m.reason, m.finished_at \
    FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id WHERE m.finished_at >= ?1 ORDER BY m.finished_at";

/// How many agents [`Store::members_among`] looks up at once.
pub const AMONG: usize = 256;

/// `'pending', 'in-progress'`: states as an SQL list.
fn state_list<'a>(states: impl Iterator<Item = &'a MemberState>) -> String {
    states.map(|s| format!("'{}'", s.name())).collect::<Vec<_>>().join(", ")
}

fn events_text(events: &[Event]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

/// A version as stored (written from a `Version`, so always one; a foreign value reads as 0.0.0).
pub(super) fn version_of(text: &str) -> Version {
    Version::parse(text).unwrap_or(Version::new(0, 0, 0))
}

fn rollout_row(r: &Row) -> Result<Rollout, StoreError> {
    let strategy: Value = serde_json::from_str(&r.text(4)?).unwrap_or_default();
    Ok(Rollout {
        id: r.text(0)?,
        version: version_of(&r.text(1)?),
        state: RolloutState::parse(&r.text(2)?).unwrap_or(RolloutState::Halted),
        reason: r.opt_text(3)?,
        // Stored strategies were validated when the rollout was made.
        strategy: strategy::from_json(&strategy).unwrap_or_default(),
        selection: r.text(5)?,
        created_at: r.int(6)?,
        wave: r.int(7)? as u32,
        events: serde_json::from_str(&r.text(8)?).unwrap_or_default(),
    })
}

impl dyn Store + '_ {
    /// Stores a new rollout and all its members at once, with `also` (its audit event).
    pub async fn insert_rollout(&self, r: &Rollout, members: &[Member], also: Vec<Stmt>) -> Result<(), StoreError> {
        let insert = format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
        let args = vec![
            Arg::text(&r.id),
            Arg::text(r.version.to_string()),
            Arg::text(r.state.name()),
            Arg::opt_text(r.reason.clone()),
            Arg::text(strategy::to_json(&r.strategy).to_string()),
            Arg::text(&r.selection),
            Arg::Int(r.created_at),
            Arg::Int(r.wave.into()),
            Arg::text(events_text(&r.events)),
        ];
        let mut stmts = vec![(insert, args)];
        stmts.extend(members.iter().enumerate().map(|(seq, m)| insert_member(&r.id, seq, m)));
        stmts.extend(also);
        self.batch(stmts).await?;
        Ok(())
    }

    /// Writes a rollout's own fields (not its members) if its stored state is still `expected`
    /// (an operator may have changed it on another node), with `also`, the audit event that
    /// records the change, in the same transaction (a reader who sees the change finds its event,
    /// and a crash leaves neither without the other); whether it did.
    pub async fn save_rollout(&self, r: &Rollout, expected: RolloutState, also: Vec<Stmt>) -> Result<bool, StoreError> {
        let sql = "UPDATE rollouts SET state = ?2, reason = ?3, wave = ?4, events = ?5 WHERE id = ?1 AND state = ?6";
        let args = vec![
            Arg::text(&r.id),
            Arg::text(r.state.name()),
            Arg::opt_text(r.reason.clone()),
            Arg::Int(r.wave.into()),
            Arg::text(events_text(&r.events)),
            Arg::text(expected.name()),
        ];
        if also.is_empty() {
            return Ok(self.exec(sql, args).await? == 1);
        }
        Ok(self.batch_if((sql.to_string(), args), also).await?.is_some())
    }

    /// A rollout and its members, in the order they were chosen.
    pub async fn rollout(&self, id: &str) -> Result<Option<(Rollout, Vec<Member>)>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1");
        let Some(r) = self.row(&sql, vec![Arg::text(id)]).await? else { return Ok(None) };
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM rollout_members WHERE rollout_id = ?1 ORDER BY seq");
        let members = self.rows(&sql, vec![Arg::text(id)]).await?.iter().map(member_row).collect::<Result<_, _>>()?;
        Ok(Some((rollout_row(&r)?, members)))
    }

    /// Which of `agents` (at most [`AMONG`]) are members of rollout `id`: looked up on the
    /// members' primary key, whatever the rollout's size. Always [`AMONG`] parameters (padded
    /// with an id no agent has), so that one prepared statement serves every call.
    pub async fn members_among(&self, id: &str, agents: &[&str]) -> Result<HashSet<String>, StoreError> {
        assert!(agents.len() <= AMONG, "at most {AMONG} agents a lookup");
        static SQL: LazyLock<String> = LazyLock::new(|| {
            let list: Vec<String> = (2..AMONG + 2).map(|i| format!("?{i}")).collect();
            format!("SELECT agent_id FROM rollout_members WHERE rollout_id = ?1 AND agent_id IN ({})", list.join(", "))
        });
        let mut args = vec![Arg::text(id)];
        args.extend(agents.iter().map(|a| Arg::text(*a)));
        args.resize_with(AMONG + 1, || Arg::text(""));
        self.rows(&SQL, args).await?.iter().map(|r| r.text(0)).collect()
    }

    /// A rollout's own row, without its members.
    pub async fn rollout_head(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1");
        self.row(&sql, vec![Arg::text(id)]).await?.as_ref().map(rollout_row).transpose()
    }

    /// A rollout's counts by member state (every state named).
    pub async fn rollout_counts(&self, id: &str) -> Result<Counts, StoreError> {
        let mut counted = self.rollouts_counts(&[id.to_string()]).await?;
        Ok(counted.remove(id).unwrap_or_else(|| counts(&[])))
    }

    /// A rollout's summary: its row, its members' counts and its first failed members, without
    /// reading the others.
    pub async fn rollout_summary(&self, id: &str) -> Result<Option<Summary>, StoreError> {
        let Some(rollout) = self.rollout_head(id).await? else { return Ok(None) };
        let counts = self.rollout_counts(id).await?;
        let sql = format!(
            "SELECT {MEMBER_COLUMNS} FROM rollout_members WHERE rollout_id = ?1 AND state IN ({}) ORDER BY seq LIMIT {MAX_FAILURES_SHOWN}",
            state_list(MemberState::ALL.iter().filter(|s| s.is_failure()))
        );
        let failures = self.rows(&sql, vec![Arg::text(id)]).await?.iter().map(member_row).collect::<Result<_, _>>()?;
        Ok(Some(Summary { rollout, counts, failures }))
    }

    /// The members of every rollout that finished at or after `since` (ms), with their rollout's
    /// id, oldest first: what other nodes filed since the driver's last read, in one read on the
    /// index of `finished_at` (not rollout by rollout on its members, which read every member of
    /// a large one).
    pub async fn members_finished_since(&self, since: i64) -> Result<Vec<(String, Member)>, StoreError> {
        let sql = format!(
            "SELECT {MEMBER_COLUMNS}, rollout_id FROM rollout_members WHERE finished_at >= ?1 ORDER BY finished_at, seq"
        );
        let at = MEMBER_COLUMNS.split(',').count();
        self.rows(&sql, vec![Arg::Int(since)]).await?.iter().map(|r| Ok((r.text(at)?, member_row(r)?))).collect()
    }

    /// A page of the rollouts, newest first, without members; and how many there are in all (a
    /// second read: a rollout created between the two may be counted and not shown).
    pub async fn rollouts_page(&self, offset: usize, count: usize) -> Result<(Vec<Rollout>, usize), StoreError> {
        let sql = format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id DESC LIMIT {count} OFFSET {offset}"
        );
        let page = self.rows(&sql, vec![]).await?.iter().map(rollout_row).collect::<Result<_, _>>()?;
        let total = match self.rows("SELECT count(*) FROM rollouts", vec![]).await?.first() {
            Some(r) => r.int(0)? as usize,
            None => 0,
        };
        Ok((page, total))
    }

    /// The counts by member state of each of `ids` (every state named), in one read on the index
    /// by state and rollout.
    pub async fn rollouts_counts(&self, ids: &[String]) -> Result<HashMap<String, Counts>, StoreError> {
        let mut out: HashMap<String, Counts> = ids.iter().map(|id| (id.clone(), counts(&[]))).collect();
        if ids.is_empty() {
            return Ok(out);
        }
        let marks = (1..=ids.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT rollout_id, state, count(*) FROM rollout_members WHERE state IN ({}) AND rollout_id IN ({marks}) \
             GROUP BY rollout_id, state",
            state_list(MemberState::ALL.iter())
        );
        for r in self.rows(&sql, ids.iter().map(Arg::text).collect()).await? {
            if let (Some(c), Some(state)) = (out.get_mut(&r.text(0)?), MemberState::parse(&r.text(1)?)) {
                c.insert(state, r.int(2)? as usize);
            }
        }
        Ok(out)
    }

    /// Every rollout, newest first, without members.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC");
        self.rows(&sql, vec![]).await?.iter().map(rollout_row).collect()
    }

    /// The rollouts to drive: open ones, and ended ones with members still in flight.
    pub async fn live_rollout_ids(&self) -> Result<Vec<String>, StoreError> {
        self.rows(LIVE_IDS, vec![]).await?.iter().map(|r| r.text(0)).collect()
    }

    /// With no `since`, the last rollout result of every agent that has one (a read of every
    /// member ever). With `since` (ms), only the results of members that finished at or after it,
    /// oldest first, so that a reader who has the rest keeps up at the cost of what changed.
    /// Each with the time it finished.
    pub async fn last_results(&self, since: Option<i64>) -> Result<Vec<(String, i64, LastResult)>, StoreError> {
        let rows = match since {
            None => self.rows(LAST_RESULTS, vec![]).await?,
            Some(at) => self.rows(FINISHED_SINCE, vec![Arg::Int(at)]).await?,
        };
        rows.iter()
            .map(|r| {
                let last = LastResult {
                    rollout_id: r.text(1)?,
                    version: version_of(&r.text(2)?),
                    state: MemberState::parse(&r.text(3)?).unwrap_or(MemberState::Failed),
                    reason: r.opt_text(4)?,
                };
                Ok((r.text(0)?, r.int(5)?, last))
            })
            .collect()
    }
}
