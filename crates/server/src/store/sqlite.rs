//! The embedded store: one SQLite file in the data directory (the directory created 0700, the
//! file 0600), used from async code through one connection under a mutex (each call is short).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params_from_iter, Connection};

use super::db::{self, Arg, Db, Dialect, Row, Stmt, Store};
use super::error::StoreError;

pub struct SqliteStore {
    pub(super) conn: Mutex<Connection>,
    project_id: String,
}

/// The schema; every statement is idempotent, so it runs at every start.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    identifiers TEXT NOT NULL DEFAULT '[]',
    last_updated TEXT NOT NULL,
    conn_status TEXT,
    version TEXT,
    status_updated TEXT
);
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    agent_id TEXT REFERENCES agents(id)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id),
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens (expires_ms);
CREATE INDEX IF NOT EXISTS tokens_client ON tokens (client_id, expires_ms);
CREATE TABLE IF NOT EXISTS sessions (
    id_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id),
    csrf TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_ms);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    strategy TEXT NOT NULL,
    selection TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    wave INTEGER NOT NULL,
    events TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS rollout_members (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    agent_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    wave INTEGER,
    callback TEXT,
    asked_at INTEGER,
    finished_at INTEGER,
    reason TEXT,
    PRIMARY KEY (rollout_id, agent_id)
);
CREATE INDEX IF NOT EXISTS rollout_members_callback ON rollout_members(callback);
CREATE INDEX IF NOT EXISTS rollout_members_agent ON rollout_members(agent_id, finished_at);
CREATE INDEX IF NOT EXISTS rollout_members_finished ON rollout_members(finished_at);
-- By state, then rollout: the live rollouts' members, and a rollout's counts by state (covering).
DROP INDEX IF EXISTS rollout_members_state;
CREATE INDEX IF NOT EXISTS rollout_members_state_rollout ON rollout_members(state, rollout_id);
CREATE TABLE IF NOT EXISTS upgrade_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    at TEXT NOT NULL,
    requested TEXT,
    force INTEGER NOT NULL,
    from_version TEXT NOT NULL,
    outcome TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS upgrade_results_agent ON upgrade_results(agent_id, id);
CREATE TABLE IF NOT EXISTS upgrade_last (
    agent_id TEXT PRIMARY KEY,
    result_id INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS web_agents_name ON agents(name COLLATE NOCASE, id);
CREATE INDEX IF NOT EXISTS web_agents_state ON agents(conn_status, name COLLATE NOCASE, id);
CREATE INDEX IF NOT EXISTS web_agents_version ON agents(version, name COLLATE NOCASE, id);
-- A search's default order: a page of a large fleet is read in order, not sorted from all of it.
CREATE INDEX IF NOT EXISTS agents_name_id ON agents(name, id);
CREATE TABLE IF NOT EXISTS policy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    spec TEXT NOT NULL,
    generation INTEGER NOT NULL,
    set_at INTEGER NOT NULL,
    clears INTEGER NOT NULL,
    from_latest INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    run TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS policy_agents (
    agent_id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    last TEXT NOT NULL,
    reason TEXT,
    at INTEGER NOT NULL,
    retry_at INTEGER,
    rollout TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    id TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_at ON revocations (at_ms);
CREATE TABLE IF NOT EXISTS audit_events (
    id TEXT PRIMARY KEY,
    recorded TEXT NOT NULL,
    kind TEXT NOT NULL,
    subtype TEXT NOT NULL,
    outcome TEXT NOT NULL,
    actor TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_date ON audit_events (recorded, id);
CREATE INDEX IF NOT EXISTS audit_events_actor ON audit_events (actor, recorded);
CREATE TABLE IF NOT EXISTS audit_entities (
    entity TEXT NOT NULL,
    recorded TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_entities_entity ON audit_entities (entity, recorded);
CREATE TRIGGER IF NOT EXISTS audit_events_append_only BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TABLE IF NOT EXISTS removed_agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    removed_at TEXT NOT NULL
);
";

/// Columns added after the first release, created in place on an older database.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("clients", "name", "TEXT"), ("clients", "role", "TEXT")];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    for (table, column, ty) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            &format!("SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
        }
    }
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('project_id', ?1)", [edge_agent_base::id::uuid()])?;
    Ok(())
}

/// Creates the data directory (0700) and the database file (0600) when missing, and takes away
/// what other users could read of an existing database file.
fn private_files(dir: &Path, db: &Path) -> Result<(), StoreError> {
    let dir_error = |source| StoreError::DataDir { path: dir.display().to_string(), source };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(dir_error)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(db).map_err(dir_error)?;
    std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o600)).map_err(dir_error)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `DIR/edge-agent-server.db`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = dir.join("edge-agent-server.db");
        private_files(dir, &path)?;
        let open_error = |source| StoreError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(&path).map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_error)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open_error)?;
        migrate(&conn).map_err(open_error)?;
        let project_id =
            conn.query_row("SELECT value FROM meta WHERE key = 'project_id'", [], |r| r.get(0)).map_err(open_error)?;
        Ok(SqliteStore { conn: Mutex::new(conn), project_id })
    }
}

#[async_trait]
impl Db for SqliteStore {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn rows(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params_from_iter(&args), db::sqlite::row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    async fn exec(&self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError> {
        let conn = self.conn.lock().unwrap();
        let changed = conn.prepare_cached(sql)?.execute(params_from_iter(&args))?;
        Ok(changed as u64)
    }

    async fn batch(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        let mut changed = Vec::with_capacity(stmts.len());
        for (sql, args) in &stmts {
            changed.push(tx.prepare_cached(sql)?.execute(params_from_iter(args))? as u64);
        }
        tx.commit()?;
        Ok(changed)
    }

    async fn batch_if(&self, first: Stmt, rest: Vec<Stmt>) -> Result<Option<Vec<u64>>, StoreError> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        if tx.prepare_cached(&first.0)?.execute(params_from_iter(&first.1))? == 0 {
            return Ok(None);
        }
        let mut changed = Vec::with_capacity(rest.len());
        for (sql, args) in &rest {
            changed.push(tx.prepare_cached(sql)?.execute(params_from_iter(args))? as u64);
        }
        tx.commit()?;
        Ok(Some(changed))
    }
}

impl Store for SqliteStore {
    fn project_id(&self) -> &str {
        &self.project_id
    }
}
