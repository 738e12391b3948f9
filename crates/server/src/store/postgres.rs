//! The PostgreSQL store, for several nodes sharing one database: a pool of connections
//! (deadpool-postgres over tokio-postgres) that reconnects by itself, numbered migrations applied
//! once at start under an advisory lock, and a bound on every call so that a database that stops
//! answering turns into an error (a 503 for the caller), never a hang. TLS as libpq's `sslmode`
//! and `sslrootcert` say ([`super::pg_tls`]).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use edge_agent_base::secret::redact_url;
use tokio_postgres::types::ToSql;

use super::db::{self, pg, Arg, Db, Dialect, Row, Stmt, Store};
use super::error::StoreError;
use super::pg_tls;
use tokio_postgres_rustls::MakeRustlsConnect;

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
    // A client's tokens, oldest first: the bound on tokens per client revokes from there.
    "CREATE INDEX tokens_client ON tokens (client_id, expires_ms);",
    "CREATE TABLE policy (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        spec TEXT NOT NULL,
        generation BIGINT NOT NULL,
        set_at BIGINT NOT NULL,
        clears BIGINT NOT NULL,
        from_latest BOOLEAN NOT NULL,
        revision BIGINT NOT NULL,
        run TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE policy_agents (
        agent_id TEXT PRIMARY KEY,
        generation BIGINT NOT NULL,
        failures INTEGER NOT NULL,
        last TEXT NOT NULL,
        reason TEXT,
        at BIGINT NOT NULL,
        retry_at BIGINT,
        rollout TEXT NOT NULL
    );",
    // Credentials taken back, which every node polls (the bus tells them sooner); agents removed,
    // which answer 410; a client's role (NULL: admin or agent, as before roles).
    "CREATE TABLE revocations (id TEXT PRIMARY KEY, at_ms BIGINT NOT NULL, body TEXT NOT NULL);
    CREATE INDEX revocations_at ON revocations (at_ms);
    CREATE TABLE removed_agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, removed_at TEXT NOT NULL);
    ALTER TABLE clients ADD COLUMN role TEXT;",
    // The audit trail: append-only (an update is refused), searched by date, actor and entity.
    "CREATE TABLE audit_events (
        id TEXT PRIMARY KEY,
        recorded TEXT NOT NULL,
        kind TEXT NOT NULL,
        subtype TEXT NOT NULL,
        outcome TEXT NOT NULL,
        actor TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX audit_events_date ON audit_events (recorded COLLATE \"C\", id COLLATE \"C\");
    CREATE INDEX audit_events_actor ON audit_events (actor, recorded COLLATE \"C\");
    CREATE TABLE audit_entities (entity TEXT NOT NULL, recorded TEXT NOT NULL, event_id TEXT NOT NULL);
    CREATE INDEX audit_entities_entity ON audit_entities (entity, recorded COLLATE \"C\");
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$;
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION audit_append_only();",
    // The rollout leader reads the results finished since its last read (not every member ever).
    "CREATE INDEX rollout_members_finished ON rollout_members (finished_at);",
    // A rollout's members counted by state, from the index alone (as the live rollouts are found).
    "DROP INDEX rollout_members_state;
    CREATE INDEX rollout_members_state_rollout ON rollout_members (state, rollout_id);",
];

/// Any number for `pg_advisory_xact_lock`, the same on every node: migrations run one node at a time.
const MIGRATION_LOCK: i64 = 0x6564_6765_6167;

pub struct PgStore {
    pool: Pool,
    project_id: String,
}

/// Runs `f` within [`CALL_LIMIT`].
async fn bounded<T>(f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_LIMIT, f).await.map_err(|_| StoreError::Timeout(CALL_LIMIT))?
}

/// The connection's configuration, and its TLS connector.
fn pg_config(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let bad = |why: String| StoreError::Url { url: redact_url(url), why };
    let (rest, tls) = pg_tls::split(url).map_err(bad)?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| bad(e.to_string()))?;
    config.ssl_mode(tls.wire_mode());
    let connector = tls.connector().map_err(bad)?;
    config.connect_timeout(Duration::from_secs(3));
    config.keepalives_idle(Duration::from_secs(10));
    config.application_name("edge-agent-server");
    Ok((config, connector))
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
        let (config, tls) = pg_config(url)?;
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_LIMIT))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(3)))
            .build()
            .map_err(|e| StoreError::Url { url: redact_url(url), why: e.to_string() })?;
        let project_id = bounded(async {
            let mut client = pool.get().await?;
            migrate(&mut client).await?;
            let row = client.query_one("SELECT value FROM meta WHERE key = 'project_id'", &[]).await?;
            Ok(row.get::<_, String>(0))
        })
        .await
        .map_err(|e| {
            let why = edge_agent_base::error::error_chain(&e);
            let hint = edge_agent_base::tls::hint(&why, "sslrootcert=FILE");
            StoreError::Connect { url: redact_url(url), why: format!("{why}{hint}") }
        })?;
        Ok(PgStore { pool, project_id })
    }
}

fn refs(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl Db for PgStore {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn rows(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, StoreError> {
        bounded(async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(&pg(sql)).await?;
            client.query(&stmt, &refs(&args)).await?.iter().map(db::postgres::row).collect()
        })
        .await
    }

    async fn exec(&self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError> {
        bounded(async {
            let client = self.pool.get().await?;
            let stmt = client.prepare_cached(&pg(sql)).await?;
            Ok(client.execute(&stmt, &refs(&args)).await?)
        })
        .await
    }

    async fn batch(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let changed = back_to_back(&tx, &stmts).await?;
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }

    async fn batch_if(&self, first: Stmt, rest: Vec<Stmt>) -> Result<Option<Vec<u64>>, StoreError> {
        bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let check = tx.prepare_cached(&pg(&first.0)).await?;
            if tx.execute(&check, &refs(&first.1)).await? == 0 {
                return Ok(None);
            }
            // The lease's row is locked for about one round trip, not one a statement.
            let changed = back_to_back(&tx, &rest).await?;
            tx.commit().await?;
            Ok(Some(changed))
        })
        .await
    }
}

/// Runs `stmts` in `tx`, sent back to back: the connection pipelines them, so a batch of a
/// wave's claims costs about one round trip, not one each. Each still runs in order, in the
/// transaction; rows changed by each.
async fn back_to_back(tx: &deadpool_postgres::Transaction<'_>, stmts: &[Stmt]) -> Result<Vec<u64>, StoreError> {
    let mut prepared = Vec::with_capacity(stmts.len());
    for (sql, _) in stmts {
        prepared.push(tx.prepare_cached(&pg(sql)).await?);
    }
    let params: Vec<_> = stmts.iter().map(|(_, args)| refs(args)).collect();
    let runs = prepared.iter().zip(&params).map(|(stmt, params)| tx.execute(stmt, params));
    Ok(futures_util::future::try_join_all(runs).await?)
}

impl Store for PgStore {
    fn project_id(&self) -> &str {
        &self.project_id
    }
}
