//! The embedded store: one SQLite file in the data directory (the directory created 0700, the
//! file 0600), used from async code through one connection under a mutex (each call is short).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::Value;

use super::sql::{self, Dialect};
use super::{hash_secret, now_ms, AgentQuery, AgentRow, Client, StatusRow, Store, StoreError};

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
";

/// Columns added after the first release, created in place on an older database.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("clients", "name", "TEXT")];

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

const CLIENT_COLUMNS: &str = "clients.id, clients.admin, clients.agent_id, clients.name";

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    Ok(Client { id: r.get(0)?, admin: r.get(1)?, agent_id: r.get(2)?, name: r.get(3)? })
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
impl Store for SqliteStore {
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
        self.conn.lock().unwrap().execute(
            "INSERT INTO agents (id, name, status, identifiers, last_updated) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.id, row.name, row.status, row.identifiers.to_string(), row.last_updated],
        )?;
        Ok(row)
    }

    async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {} FROM agents WHERE id = ?1", sql::AGENT_COLUMNS);
        Ok(conn.query_row(&sql, [id], agent_row).optional()?)
    }

    async fn search(&self, q: &AgentQuery) -> Result<(Vec<AgentRow>, usize), StoreError> {
        let s = sql::search(q, Dialect::Sqlite);
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(&s.page)?;
        let rows = stmt.query_map(params_from_iter(&s.args), agent_row)?.collect::<Result<Vec<_>, _>>()?;
        let total = match &s.count {
            Some(count) => conn.query_row(count, params_from_iter(&s.args), |r| r.get::<_, i64>(0))? as usize,
            None => rows.len(),
        };
        Ok((rows, total))
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
        self.conn.lock().unwrap().execute(
            "INSERT INTO clients (id, secret_sha256, admin, agent_id, name) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![client.id, hash_secret(&secret), admin, client.agent_id, client.name],
        )?;
        Ok((client, secret))
    }

    async fn authenticate(&self, id: &str, secret: &str) -> Result<Option<Client>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = ?1 AND secret_sha256 = ?2");
        Ok(conn.query_row(&sql, [id, &hash_secret(secret)], client_row).optional()?)
    }

    async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached("SELECT conn_status, version, status_updated FROM agents WHERE id = ?1")?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = stmt
                .query_row([id], |r| {
                    Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
                })
                .optional()?;
            out.push(row.and_then(|(s, v, u)| StatusRow::from_columns(s, v, u)));
        }
        Ok(out)
    }

    async fn save_status(&self, id: &str, s: &StatusRow) -> Result<(), StoreError> {
        self.conn.lock().unwrap().execute(
            "UPDATE agents SET conn_status = ?2, version = ?3, status_updated = ?4 WHERE id = ?1",
            params![id, s.status, s.version, s.updated],
        )?;
        Ok(())
    }

    async fn save_token(&self, token_hash: &str, client_id: &str, expires_ms: i64) -> Result<(), StoreError> {
        self.conn.lock().unwrap().execute(
            "INSERT INTO tokens (token_sha256, client_id, expires_ms) VALUES (?1, ?2, ?3)",
            params![token_hash, client_id, expires_ms],
        )?;
        Ok(())
    }

    async fn token_client(&self, token_hash: &str, now_ms: i64) -> Result<Option<(Client, i64)>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let sql = format!(
            "SELECT {CLIENT_COLUMNS}, tokens.expires_ms FROM tokens JOIN clients ON clients.id = tokens.client_id \
             WHERE tokens.token_sha256 = ?1 AND tokens.expires_ms > ?2"
        );
        Ok(conn.query_row(&sql, params![token_hash, now_ms], |r| Ok((client_row(r)?, r.get(4)?))).optional()?)
    }

    async fn purge_tokens(&self, now_ms: i64) -> Result<u64, StoreError> {
        Ok(self.conn.lock().unwrap().execute("DELETE FROM tokens WHERE expires_ms <= ?1", [now_ms])? as u64)
    }

    async fn lease_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let conn = self.conn.lock().unwrap();
        let taken = conn.execute(
            "INSERT INTO leases (name, holder, expires_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms \
             WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?4",
            params![name, holder, now + ttl.as_millis() as i64, now],
        )?;
        Ok(taken == 1)
    }

    async fn lease_release(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.execute("DELETE FROM leases WHERE name = ?1 AND holder = ?2", [name, holder])? == 1)
    }
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        status: r.get(2)?,
        identifiers: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(Value::Array(vec![])),
        last_updated: r.get(4)?,
    })
}
