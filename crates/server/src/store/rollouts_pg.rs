//! Rollouts in the PostgreSQL store: the same statements as SQLite's (`$n` placeholders), see
//! [`super::rollouts`].

use async_trait::async_trait;
use edge_agent_wire::Callback;

use super::postgres::{bounded, PgStore};
use super::rollouts::{
    events_text, member_state, rollout_of, state_name, strategy_text, RolloutStore, CLAIM_SQLITE, LAST_RESULTS,
    LIVE_IDS, MEMBER_COLUMNS, REPLACEABLE, ROLLOUT_COLUMNS, SKIP_SQLITE,
};
use super::StoreError;
use crate::rollout::model::{LastResult, Member, Rollout, RolloutState};

/// `?n` placeholders become PostgreSQL's `$n`.
fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

fn pg_rollout(r: &tokio_postgres::Row) -> Rollout {
    rollout_of(
        r.get(0),
        r.get(1),
        r.get(2),
        r.get(3),
        r.get(4),
        r.get(5),
        r.get(6),
        r.get::<_, i32>(7) as i64,
        r.get(8),
    )
}

fn pg_member(r: &tokio_postgres::Row) -> Member {
    Member {
        agent_id: r.get(0),
        name: r.get(1),
        state: member_state(r.get(2)),
        wave: r.get::<_, Option<i32>>(3).map(|w| w as u32),
        callback: r.get::<_, Option<String>>(4).map(Callback::from),
        asked_at: r.get(5),
        finished_at: r.get(6),
        reason: r.get(7),
    }
}

#[async_trait]
impl RolloutStore for PgStore {
    async fn insert_rollout(&self, r: &Rollout, members: &[Member]) -> Result<(), StoreError> {
        bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let insert =
                pg(&format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"));
            let (state, strategy, events, wave) =
                (state_name(r.state), strategy_text(r), events_text(&r.events), r.wave as i32);
            tx.execute(
                &insert,
                &[&r.id, &r.version, &state, &r.reason, &strategy, &r.selection, &r.created_at, &wave, &events],
            )
            .await?;
            let stmt = tx
                .prepare(&pg(&format!(
                    "INSERT INTO rollout_members (rollout_id, seq, {MEMBER_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                )))
                .await?;
            for (seq, m) in members.iter().enumerate() {
                let (seq, s, w) = (seq as i32, m.state.name(), m.wave.map(|w| w as i32));
                tx.execute(
                    &stmt,
                    &[
                        &r.id,
                        &seq,
                        &m.agent_id,
                        &m.name,
                        &s,
                        &w,
                        &m.callback.as_ref().map(Callback::as_str),
                        &m.asked_at,
                        &m.finished_at,
                        &m.reason,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn save_rollout(&self, r: &Rollout, expected: RolloutState) -> Result<bool, StoreError> {
        let (state, events, wave, was) =
            (state_name(r.state), events_text(&r.events), r.wave as i32, state_name(expected));
        let sql = "UPDATE rollouts SET state = $2, reason = $3, wave = $4, events = $5 WHERE id = $1 AND state = $6";
        Ok(self.execute(sql, &[&r.id, &state, &r.reason, &wave, &events, &was]).await? == 1)
    }

    async fn save_members(&self, rollout_id: &str, members: &[Member]) -> Result<(), StoreError> {
        bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let stmt = tx
                .prepare(&format!(
                    "UPDATE rollout_members SET state = $3, wave = $4, callback = $5, asked_at = $6, \
                     finished_at = $7, reason = $8 WHERE rollout_id = $1 AND agent_id = $2 AND state IN {REPLACEABLE}"
                ))
                .await?;
            for m in members {
                let (s, w) = (m.state.name(), m.wave.map(|w| w as i32));
                tx.execute(
                    &stmt,
                    &[
                        &rollout_id,
                        &m.agent_id,
                        &s,
                        &w,
                        &m.callback.as_ref().map(Callback::as_str),
                        &m.asked_at,
                        &m.finished_at,
                        &m.reason,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn claim_members(&self, rollout_id: &str, members: &[Member]) -> Result<Vec<bool>, StoreError> {
        bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let stmt = tx.prepare(&pg(CLAIM_SQLITE)).await?;
            let mut claimed = Vec::with_capacity(members.len());
            for m in members {
                let w = m.wave.map(|w| w as i32);
                claimed.push(
                    tx.execute(
                        &stmt,
                        &[&rollout_id, &m.agent_id, &w, &m.callback.as_ref().map(Callback::as_str), &m.asked_at],
                    )
                    .await?
                        == 1,
                );
            }
            tx.commit().await?;
            Ok(claimed)
        })
        .await
    }

    async fn skip_pending(&self, rollout_id: &str, reason: &str, at: i64) -> Result<u64, StoreError> {
        self.execute(&pg(SKIP_SQLITE), &[&rollout_id, &reason, &at]).await
    }

    async fn rollout(&self, id: &str) -> Result<Option<(Rollout, Vec<Member>)>, StoreError> {
        let rows = self.query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"), &[&id]).await?;
        let Some(r) = rows.first().map(pg_rollout) else { return Ok(None) };
        let sql = format!("SELECT {MEMBER_COLUMNS} FROM rollout_members WHERE rollout_id = $1 ORDER BY seq");
        let members = self.query(&sql, &[&id]).await?.iter().map(pg_member).collect();
        Ok(Some((r, members)))
    }

    async fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC");
        Ok(self.query(&sql, &[]).await?.iter().map(pg_rollout).collect())
    }

    async fn live_rollout_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.query(LIVE_IDS, &[]).await?.iter().map(|r| r.get(0)).collect())
    }

    async fn member_by_callback(&self, callback: &Callback) -> Result<Option<(String, Member)>, StoreError> {
        let sql = format!("SELECT {MEMBER_COLUMNS}, rollout_id FROM rollout_members WHERE callback = $1");
        Ok(self.query(&sql, &[&callback.as_str()]).await?.first().map(|r| (r.get(8), pg_member(r))))
    }

    async fn last_results(&self) -> Result<Vec<(String, LastResult)>, StoreError> {
        let rows = self.query(LAST_RESULTS, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let last = LastResult {
                    rollout_id: r.get(1),
                    version: r.get(2),
                    state: member_state(r.get(3)),
                    reason: r.get(4),
                };
                (r.get(0), last)
            })
            .collect())
    }
}
