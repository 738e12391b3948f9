//! Rollout members in the store, for both backends. Every write is guarded by the member
//! transition table ([`sources_of`], [`renewable`]): a member is written only from a state the
//! table lets it leave for the one written (or again in its state, where the table allows it, with
//! the same callback), so whichever node files an answer first, it stays, and no node asks a
//! member another node asked.

use edge_agent_wire::Callback;

use super::db::{Arg, Row, Stmt, Store};
use super::error::StoreError;
use crate::model::member::{renewable, sources_of, Member, MemberState};

pub(super) const MEMBER_COLUMNS: &str = "agent_id, name, state, wave, callback, asked_at, finished_at, reason";

pub(super) fn member_row(r: &Row) -> Result<Member, StoreError> {
    Ok(Member {
        agent_id: r.text(0)?,
        name: r.text(1)?,
        state: MemberState::parse(&r.text(2)?).unwrap_or(MemberState::Failed),
        wave: r.opt_int(3)?.map(|w| w as u32),
        callback: r.opt_text(4)?.map(Callback::from),
        asked_at: r.opt_int(5)?,
        finished_at: r.opt_int(6)?,
        reason: r.opt_text(7)?,
    })
}

/// The member's columns, as [`MEMBER_COLUMNS`] lists them.
fn member_args(m: &Member) -> Vec<Arg> {
    vec![
        Arg::text(&m.agent_id),
        Arg::text(&m.name),
        Arg::text(m.state.name()),
        Arg::opt_int(m.wave.map(i64::from)),
        Arg::opt_text(m.callback.as_ref().map(Callback::as_str)),
        Arg::opt_int(m.asked_at),
        Arg::opt_int(m.finished_at),
        Arg::opt_text(m.reason.clone()),
    ]
}

/// The statement that inserts member `seq` of a new rollout.
pub(super) fn insert_member(rollout_id: &str, seq: usize, m: &Member) -> Stmt {
    let sql = format!(
        "INSERT INTO rollout_members (rollout_id, seq, {MEMBER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    );
    let mut args = vec![Arg::text(rollout_id), Arg::Int(seq as i64)];
    args.extend(member_args(m));
    (sql, args)
}

/// `state IN (…)` for the states a member may be written in `target` from; `FALSE` when none.
pub fn guard(target: MemberState) -> String {
    let sources: Vec<String> = sources_of(target).iter().map(|s| format!("'{}'", s.name())).collect();
    if sources.is_empty() {
        return "FALSE".into();
    }
    format!("state IN ({})", sources.join(", "))
}

/// [`guard`], or, where the table lets a member be written again in its state, that state with
/// the callback in parameter `callback` (a request sent again is the same request).
fn save_guard(target: MemberState, callback: usize) -> String {
    let from = guard(target);
    if !renewable(target) {
        return from;
    }
    format!("({from} OR (state = '{}' AND callback = ?{callback}))", target.name())
}

impl dyn Store + '_ {
    /// Writes members of a rollout, in one transaction, each only from a state the transition
    /// table lets it leave for the one written; how many rows each write changed (0: refused,
    /// the store knows better).
    pub async fn save_members(&self, rollout_id: &str, members: &[Member]) -> Result<Vec<u64>, StoreError> {
        self.batch(self.member_writes(rollout_id, members)).await
    }

    /// [`Self::save_members`] for members whose request is taken back (in flight to pending),
    /// written only while `holder` holds the lease `lease` ([`Self::fence`]: on PostgreSQL the
    /// lease's row stays locked until they are in). A node that lost the lease, whose write lands
    /// late (behind a partition, after a stall), never puts back to pending a member that the
    /// node now driving has sent again: that member would be asked a second time; and a node
    /// taking the lease over reads them after the write, never between its statements.
    pub async fn unask_members(
        &self,
        rollout_id: &str,
        members: &[Member],
        (lease, holder): (&str, &str),
    ) -> Result<Vec<u64>, StoreError> {
        let writes = self.member_writes(rollout_id, members);
        Ok(self.batch_if(self.fence(lease, holder), writes).await?.unwrap_or_else(|| vec![0; members.len()]))
    }

    /// One guarded `UPDATE` for each member.
    fn member_writes(&self, rollout_id: &str, members: &[Member]) -> Vec<Stmt> {
        members
            .iter()
            .map(|m| {
                let sql = format!(
                    "UPDATE rollout_members SET state = ?3, wave = ?4, callback = ?5, asked_at = ?6, \
                     finished_at = ?7, reason = ?8 WHERE rollout_id = ?1 AND agent_id = ?2 AND {}",
                    save_guard(m.state, 5)
                );
                let mut args = vec![Arg::text(rollout_id), Arg::text(&m.agent_id)];
                args.extend(member_args(m).into_iter().skip(2));
                (sql, args)
            })
            .collect()
    }

    /// Records that these members are asked, each only if it is still pending in the store (no
    /// other node asked it, no cancel skipped it) and the rollout is still active (once a pause
    /// or a cancel is written, no node asks anyone new); which ones were.
    pub async fn claim_members(&self, rollout_id: &str, members: &[Member]) -> Result<Vec<bool>, StoreError> {
        let sql = format!(
            "UPDATE rollout_members SET state = '{}', wave = ?3, callback = ?4, asked_at = ?5 \
             WHERE rollout_id = ?1 AND agent_id = ?2 AND {} \
             AND EXISTS (SELECT 1 FROM rollouts WHERE id = ?1 AND state = 'active')",
            MemberState::InProgress.name(),
            guard(MemberState::InProgress)
        );
        let stmts = members
            .iter()
            .map(|m| {
                let args = vec![
                    Arg::text(rollout_id),
                    Arg::text(&m.agent_id),
                    Arg::opt_int(m.wave.map(i64::from)),
                    Arg::opt_text(m.callback.as_ref().map(Callback::as_str)),
                    Arg::opt_int(m.asked_at),
                ];
                (sql.clone(), args)
            })
            .collect();
        Ok(self.batch(stmts).await?.into_iter().map(|n| n == 1).collect())
    }

    /// Marks every member still pending as skipped (a cancel); how many.
    pub async fn skip_pending(&self, rollout_id: &str, reason: &str, at: i64) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE rollout_members SET state = '{}', reason = ?2, finished_at = ?3 WHERE rollout_id = ?1 AND {}",
            MemberState::Skipped.name(),
            guard(MemberState::Skipped)
        );
        self.exec(&sql, vec![Arg::text(rollout_id), Arg::text(reason), Arg::Int(at)]).await
    }

    /// The rollout and member that a request with this callback was sent for, if any.
    pub async fn member_by_callback(&self, callback: &Callback) -> Result<Option<(String, Member)>, StoreError> {
        let sql = format!("SELECT {MEMBER_COLUMNS}, rollout_id FROM rollout_members WHERE callback = ?1");
        let row = self.row(&sql, vec![Arg::text(callback.as_str())]).await?;
        row.map(|r| Ok((r.text(8)?, member_row(&r)?))).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_the_tables_sources() {
        assert_eq!(guard(MemberState::InProgress), "state IN ('pending')");
        assert_eq!(guard(MemberState::Succeeded), "state IN ('in-progress', 'timed-out')");
        assert_eq!(guard(MemberState::Already), "FALSE");
        assert_eq!(
            save_guard(MemberState::InProgress, 5),
            "(state IN ('pending') OR (state = 'in-progress' AND callback = ?5))"
        );
        assert_eq!(save_guard(MemberState::Failed, 5), guard(MemberState::Failed));
    }
}
