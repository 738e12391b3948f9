//! The PostgreSQL store, for several nodes sharing one database: a pool of connections
//! (deadpool-postgres over tokio-postgres) that reconnects by itself, numbered migrations applied
//! once at start under an advisory lock, and a bound on every call so that a database that stops
//! answering turns into an error (a 503 for the caller), never a hang.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::sql::{self, Dialect};
use super::{hash_secret, AgentQuery, AgentRow, Client, StatusRow, Store, StoreError};

/// How long one store call may take, connection included.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// The schema, one step per entry; step n is applied once, recorded in `schema_migrations`.
/// Append new steps; never edit one that has shipped.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        identifiers JSONB NOT NULL DEFAULT '[]',
        last_updated TEXT NOT NULL,
        conn_status TEXT,
        version TEXT,
        status_updated TEXT
    );
    CREATE INDEX agents_name ON agents (name);
    CREATE TABLE clients (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        admin BOOLEAN NOT NULL DEFAULT FALSE,
        agent_id TEXT REFERENCES agents(id),
        name TEXT
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE tokens (
        token_sha256 TEXT PRIMARY KEY,
        client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        expires_ms BIGINT NOT NULL
    );
    CREATE INDEX tokens_expiry ON tokens (expires_ms);
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);",
    // Searches sort by code point with the id last: a page of a large fleet is an index scan.
    "CREATE INDEX agents_name_c ON agents (name COLLATE \"C\", id COLLATE \"C\");",
    "CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        strategy TEXT NOT NULL,
        selection TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        wave INTEGER NOT NULL,
        events TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE rollout_members (
        rollout_id TEXT NOT NULL REFERENCES rollouts(id),
        agent_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        wave INTEGER,
        callback TEXT,
        asked_at BIGINT,
        finished_at BIGINT,
        reason TEXT,
        PRIMARY KEY (rollout_id, agent_id)
    );
    CREATE INDEX rollout_members_callback ON rollout_members (callback);
    CREATE INDEX rollout_members_agent ON rollout_members (agent_id, finished_at);
    CREATE INDEX rollout_members_state ON rollout_members (state);",
    "CREATE TABLE upgrade_results (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        agent_id TEXT NOT NULL,
        at TEXT NOT NULL,
        requested TEXT,
        force BOOLEAN NOT NULL,
        from_version TEXT NOT NULL,
        outcome TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX upgrade_results_agent ON upgrade_results (agent_id, id);
    CREATE TABLE upgrade_last (
        agent_id TEXT PRIMARY KEY,
        result_id BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX web_agents_name ON agents ((lower(name) COLLATE \"C\"), (id COLLATE \"C\"));
    CREATE INDEX web_agents_state ON agents ((conn_status COLLATE \"C\") NULLS FIRST, (lower(name) COLLATE \"C\"), (id COLLATE \"C\"));
    CREATE INDEX web_agents_version ON agents ((version COLLATE \"C\") NULLS FIRST, (lower(name) COLLATE \"C\"), (id COLLATE \"C\"));",
    "CREATE TABLE sessions (
        id_sha256 TEXT PRIMARY KEY,
        client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    CREATE INDEX sessions_expiry ON sessions (expires_ms);",
];

/// Any number for `pg_advisory_xact_lock`, the same on every node: migrations run one node at a time.
const MIGRATION_LOCK: i64 = 0x6564_6765_6167;

pub struct PgStore {
    pub(super) pool: Pool,
    project_id: String,
}

/// Runs `f` within [`CALL_LIMIT`].
pub(super) async fn bounded<T>(f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_LIMIT, f).await.map_err(|_| StoreError::Timeout(CALL_LIMIT))?
}

fn pg_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let bad = |why: String| StoreError::Url { url: redact(url), why };
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| bad(e.to_string()))?;
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(bad("sslmode=require is not supported: this build speaks to PostgreSQL without TLS; \
                        use a local socket, a private network or a TLS tunnel, and sslmode=disable"
            .into()));
    }
    config.connect_timeout(Duration::from_secs(3));
    config.keepalives_idle(Duration::from_secs(10));
    config.application_name("edge-agent-server");
    Ok(config)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())").await?;
    let done: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let version = i + 1;
        tx.batch_execute(step).await.map_err(|source| StoreError::Migrate { version, source })?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&(version as i32)]).await?;
        tracing::info!(version, "database migrated");
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('project_id', $1) ON CONFLICT DO NOTHING",
        &[&edge_agent_base::id::uuid()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

impl PgStore {
    /// Connects (failing within seconds when the database cannot be reached) and migrates.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let config = pg_config(url)?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_LIMIT))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(3)))
            .build()
            .map_err(|e| StoreError::Url { url: redact(url), why: e.to_string() })?;
        let project_id = bounded(async {
            let mut client = pool.get().await?;
            migrate(&mut client).await?;
            let row = client.query_one("SELECT value FROM meta WHERE key = 'project_id'", &[]).await?;
            Ok(row.get::<_, String>(0))
        })
        .await?;
        Ok(PgStore { pool, project_id })
    }

    pub(super) async fn query(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        bounded(async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.query(&stmt, args).await?)
        })
        .await
    }

    pub(super) async fn execute(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        bounded(async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.execute(&stmt, args).await?)
        })
        .await
    }
}

fn agent_row(r: &Row) -> AgentRow {
    AgentRow {
        id: r.get(0),
        name: r.get(1),
        status: r.get(2),
        identifiers: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or(Value::Array(vec![])),
        last_updated: r.get(4),
    }
}

const CLIENT_COLUMNS: &str = "clients.id, clients.admin, clients.agent_id, clients.name";

fn client_row(r: &Row) -> Client {
    Client { id: r.get(0), admin: r.get(1), agent_id: r.get(2), name: r.get(3) }
}

#[async_trait]
impl Store for PgStore {
    fn project_id(&self) -> &str {
        &self.project_id
    }

    async fn create_agent(&self, name: &str, status: &str, identifiers: &Value) -> Result<AgentRow, StoreError> {
        let row = AgentRow {
            id: edge_agent_base::id::uuid(),
            name: name.to_string(),
            status: status.to_string(),
            identifiers: identifiers.clone(),
            last_updated: edge_agent_base::time::now_iso(),
        };
        let ident = row.identifiers.to_string();
        self.execute(
            "INSERT INTO agents (id, name, status, identifiers, last_updated) VALUES ($1, $2, $3, CAST($4::text AS jsonb), $5)",
            &[&row.id, &row.name, &row.status, &ident, &row.last_updated],
        )
        .await?;
        Ok(row)
    }

    async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {} FROM agents WHERE id = $1", sql::agent_columns(Dialect::Postgres));
        Ok(self.query(&sql, &[&id]).await?.first().map(agent_row))
    }

    async fn search(&self, q: &AgentQuery) -> Result<(Vec<AgentRow>, usize), StoreError> {
        let s = sql::search(q, Dialect::Postgres);
        let args: Vec<&(dyn ToSql + Sync)> = s.args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = self.query(&s.page, &args).await?;
        let total = match &s.count {
            Some(count) => self.query(count, &args).await?.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as usize,
            None => rows.len(),
        };
        Ok((rows.iter().map(agent_row).collect(), total))
    }

    async fn create_client(
        &self,
        admin: bool,
        agent_id: Option<&str>,
        name: &str,
    ) -> Result<(Client, String), StoreError> {
        let client = Client {
            id: edge_agent_base::id::uuid(),
            admin,
            agent_id: agent_id.map(str::to_owned),
            name: Some(name.to_string()),
        };
        let secret = edge_agent_base::id::random_hex(32);
        self.execute(
            "INSERT INTO clients (id, secret_sha256, admin, agent_id, name) VALUES ($1, $2, $3, $4, $5)",
            &[&client.id, &hash_secret(&secret), &admin, &client.agent_id, &client.name],
        )
        .await?;
        Ok((client, secret))
    }

    async fn authenticate(&self, id: &str, secret: &str) -> Result<Option<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1 AND secret_sha256 = $2");
        Ok(self.query(&sql, &[&id, &hash_secret(secret)]).await?.first().map(client_row))
    }

    async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, StoreError> {
        let rows = self
            .query("SELECT id, conn_status, version, status_updated FROM agents WHERE id = ANY($1)", &[&ids])
            .await?;
        let mut found: std::collections::HashMap<String, StatusRow> = rows
            .iter()
            .filter_map(|r| Some((r.get(0), StatusRow::from_columns(r.get(1), r.get(2), r.get(3))?)))
            .collect();
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    async fn save_status(&self, id: &str, s: &StatusRow) -> Result<(), StoreError> {
        self.execute(
            "UPDATE agents SET conn_status = $2, version = $3, status_updated = $4 WHERE id = $1",
            &[&id, &s.status, &s.version, &s.updated],
        )
        .await?;
        Ok(())
    }

    async fn save_token(&self, token_hash: &str, client_id: &str, expires_ms: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO tokens (token_sha256, client_id, expires_ms) VALUES ($1, $2, $3)",
            &[&token_hash, &client_id, &expires_ms],
        )
        .await?;
        Ok(())
    }

    async fn token_client(&self, token_hash: &str, now_ms: i64) -> Result<Option<(Client, i64)>, StoreError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS}, tokens.expires_ms FROM tokens JOIN clients ON clients.id = tokens.client_id \
             WHERE tokens.token_sha256 = $1 AND tokens.expires_ms > $2"
        );
        Ok(self.query(&sql, &[&token_hash, &now_ms]).await?.first().map(|r| (client_row(r), r.get(4))))
    }

    async fn purge_tokens(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.execute("DELETE FROM tokens WHERE expires_ms <= $1", &[&now_ms]).await
    }

    async fn lease_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        // The database's clock decides expiry, so nodes whose clocks differ still agree.
        let ms = ttl.as_millis() as f64;
        let taken = self
            .execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at <= now()",
                &[&name, &holder, &ms],
            )
            .await?;
        Ok(taken == 1)
    }

    async fn lease_release(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        Ok(self.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder]).await? == 1)
    }
}
