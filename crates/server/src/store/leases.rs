//! Named leases: at most one holder at a time, across every node sharing the store.

use std::time::Duration;

use edge_agent_base::time::now_ms;

use super::db::{Arg, Dialect, Stmt, Store};
use super::error::StoreError;

impl dyn Store + '_ {
    /// Takes the lease `name` for `holder` for `ttl`, or extends it when `holder` has it already.
    /// True when `holder` holds it now; false when another holder's lease has not expired. Across
    /// every node sharing the store, at most one holder has an unexpired lease at any instant.
    pub async fn lease_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ms = ttl.as_millis() as i64;
        let taken = match self.dialect() {
            // One process: its clock is the only clock.
            Dialect::Sqlite => {
                let now = now_ms();
                let sql = "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
                     WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4";
                self.exec(sql, vec![Arg::text(name), Arg::text(holder), Arg::Int(now + ms), Arg::Int(now)]).await?
            }
            // The database's clock decides expiry, so nodes whose clocks differ still agree.
            Dialect::Postgres => {
                let sql = "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, now() + ?3 * interval '1 millisecond') \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= now()";
                self.exec(sql, vec![Arg::text(name), Arg::text(holder), Arg::Float(ms as f64)]).await?
            }
        };
        Ok(taken == 1)
    }

    /// The first statement of a write made under the lease ([`super::db::Db::batch_if`]): it
    /// changes the lease's row (to what it was) while `holder` still has it unexpired, so the
    /// write goes only then; and it locks the row until the write commits, so that no other
    /// holder can take the lease over (and read the store) before the write is in.
    pub fn fence(&self, name: &str, holder: &str) -> Stmt {
        let (name, holder) = (Arg::text(name), Arg::text(holder));
        match self.dialect() {
            Dialect::Sqlite => {
                let sql = "UPDATE leases SET holder = holder WHERE name = ?1 AND holder = ?2 AND expires_ms > ?3";
                (sql.to_string(), vec![name, holder, Arg::Int(now_ms())])
            }
            Dialect::Postgres => {
                let sql = "UPDATE leases SET holder = holder WHERE name = ?1 AND holder = ?2 AND expires_at > now()";
                (sql.to_string(), vec![name, holder])
            }
        }
    }

    /// Gives the lease up at once if `holder` has it; true when it did.
    pub async fn lease_release(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM leases WHERE name = ?1 AND holder = ?2";
        Ok(self.exec(sql, vec![Arg::text(name), Arg::text(holder)]).await? == 1)
    }
}
