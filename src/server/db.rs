//! What the server remembers, in one SQLite file in its data directory: `Agent` resources, the
//! client credentials that may act for them, and each agent's last known status and version.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// An `Agent` resource as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub identifiers: Value,
    pub last_updated: String,
}

impl AgentRow {
    /// The FHIR JSON of the resource.
    pub fn to_fhir(&self) -> Value {
        serde_json::to_value(self).expect("an Agent serializes")
    }
}

/// The FHIR `Agent` resource, written straight to the answer without a JSON tree in between.
impl serde::Serialize for AgentRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let with_identifier = self.identifiers.as_array().is_some_and(|a| !a.is_empty());
        let mut m = s.serialize_map(Some(5 + usize::from(with_identifier)))?;
        m.serialize_entry("resourceType", "Agent")?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("meta", &json!({"lastUpdated": self.last_updated}))?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("status", &self.status)?;
        if with_identifier {
            m.serialize_entry("identifier", &self.identifiers)?;
        }
        m.end()
    }
}

/// The last known connection status of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    pub status: String,
    pub version: String,
    pub updated: String,
}

/// A client that may call the server: an administrator, or the credentials of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub id: String,
    pub admin: bool,
    pub agent_id: Option<String>,
}

/// Search criteria for `Agent` (already validated).
#[derive(Debug, Default, Clone)]
pub struct AgentQuery {
    pub ids: Option<Vec<String>>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub identifier: Option<(Option<String>, String)>,
    pub count: usize,
    pub offset: usize,
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
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
";

fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Opens (creating if needed) `DIR/edge-agent-server.db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
        let path = dir.join("edge-agent-server.db");
        let open_error = |source| StoreError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(&path).map_err(open_error)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_error)?;
        conn.execute_batch(SCHEMA).map_err(open_error)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    pub fn create_agent(&self, name: &str, status: &str, identifiers: &Value) -> Result<AgentRow, StoreError> {
        let row = AgentRow {
            id: util::uuid(),
            name: name.to_string(),
            status: status.to_string(),
            identifiers: identifiers.clone(),
            last_updated: util::now_iso(),
        };
        self.conn.lock().unwrap().execute(
            "INSERT INTO agents (id, name, status, identifiers, last_updated) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.id, row.name, row.status, row.identifiers.to_string(), row.last_updated],
        )?;
        Ok(row)
    }

    /// Creates a client with a fresh random secret; returns (client, secret).
    pub fn create_client(&self, admin: bool, agent_id: Option<&str>) -> Result<(Client, String), StoreError> {
        let client = Client { id: util::uuid(), admin, agent_id: agent_id.map(str::to_owned) };
        let secret = util::random_hex(32);
        self.conn.lock().unwrap().execute(
            "INSERT INTO clients (id, secret_sha256, admin, agent_id) VALUES (?1, ?2, ?3, ?4)",
            params![client.id, hash_secret(&secret), admin, client.agent_id],
        )?;
        Ok((client, secret))
    }

    /// The client whose id and secret these are, if any.
    pub fn authenticate(&self, id: &str, secret: &str) -> Result<Option<Client>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let found = conn
            .query_row("SELECT secret_sha256, admin, agent_id FROM clients WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .optional()?;
        Ok(found.filter(|(hash, _, _)| *hash == hash_secret(secret)).map(|(_, admin, agent_id)| Client {
            id: id.to_string(),
            admin,
            agent_id,
        }))
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.query_row(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"), [id], agent_row).optional()?)
    }

    /// One page of matching agents, and how many match in all.
    pub fn search(&self, q: &AgentQuery) -> Result<(Vec<AgentRow>, usize), StoreError> {
        let mut clauses = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(ids) = &q.ids {
            clauses.push(format!("id IN ({})", vec!["?"; ids.len()].join(",")));
            args.extend(ids.iter().cloned());
        }
        if let Some(name) = &q.name {
            clauses.push("lower(name) LIKE lower(?) ESCAPE '\\'".to_string());
            args.push(format!("{}%", name.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        }
        if let Some(status) = &q.status {
            clauses.push("status = ?".into());
            args.push(status.clone());
        }
        if let Some((system, value)) = &q.identifier {
            let mut c = "EXISTS (SELECT 1 FROM json_each(agents.identifiers) WHERE json_extract(value, '$.value') = ?"
                .to_string();
            args.push(value.clone());
            if let Some(system) = system {
                c.push_str(" AND json_extract(value, '$.system') = ?");
                args.push(system.clone());
            }
            clauses.push(c + ")");
        }
        let filter = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let conn = self.conn.lock().unwrap();
        let total: i64 =
            conn.query_row(&format!("SELECT count(*) FROM agents {filter}"), params_from_iter(&args), |r| r.get(0))?;
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents {filter} ORDER BY name, id LIMIT {} OFFSET {}",
            q.count, q.offset
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(&args), agent_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok((rows, total as usize))
    }

    pub fn status(&self, id: &str) -> Result<Option<StatusRow>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let row = conn
            .query_row("SELECT conn_status, version, status_updated FROM agents WHERE id = ?1", [id], |r| {
                Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?))
            })
            .optional()?;
        Ok(row.and_then(|(s, v, u)| {
            Some(StatusRow { status: s?, version: v.unwrap_or_else(|| "unknown".into()), updated: u? })
        }))
    }

    pub fn save_status(&self, id: &str, s: &StatusRow) -> Result<(), StoreError> {
        self.conn.lock().unwrap().execute(
            "UPDATE agents SET conn_status = ?2, version = ?3, status_updated = ?4 WHERE id = ?1",
            params![id, s.status, s.version, s.updated],
        )?;
        Ok(())
    }

    /// At start-up no socket is open: whatever was connected is now disconnected.
    pub fn mark_all_disconnected(&self) -> Result<(), StoreError> {
        self.conn.lock().unwrap().execute(
            "UPDATE agents SET conn_status = 'disconnected', status_updated = ?1 WHERE conn_status = 'connected'",
            [util::now_iso()],
        )?;
        Ok(())
    }
}

const AGENT_COLUMNS: &str = "id, name, status, identifiers, last_updated";

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        status: r.get(2)?,
        identifiers: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(Value::Array(vec![])),
        last_updated: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_clients_and_search() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ident = json!([{"system": "urn:site", "value": "lab-7"}]);
        let a = store.create_agent("Lab_7 agent", "active", &ident).unwrap();
        let b = store.create_agent("Clinic agent", "off", &json!([])).unwrap();
        let (client, secret) = store.create_client(false, Some(&a.id)).unwrap();
        assert_eq!(store.authenticate(&client.id, &secret).unwrap(), Some(client.clone()));
        assert_eq!(store.authenticate(&client.id, "wrong").unwrap(), None);

        let q = |f: fn(&mut AgentQuery)| {
            let mut q = AgentQuery { count: 20, ..Default::default() };
            f(&mut q);
            store.search(&q).unwrap().0.into_iter().map(|r| r.name).collect::<Vec<_>>()
        };
        assert_eq!(q(|_| {}), ["Clinic agent", "Lab_7 agent"]);
        assert_eq!(q(|q| q.name = Some("lab_".into())), ["Lab_7 agent"]);
        assert_eq!(q(|q| q.name = Some("lab%".into())), Vec::<String>::new());
        assert_eq!(q(|q| q.status = Some("off".into())), ["Clinic agent"]);
        assert_eq!(q(|q| q.identifier = Some((Some("urn:site".into()), "lab-7".into()))), ["Lab_7 agent"]);
        assert_eq!(q(|q| q.identifier = Some((Some("urn:other".into()), "lab-7".into()))), Vec::<String>::new());
        let ids = vec![b.id.clone(), "nope".into()];
        let (rows, total) = store.search(&AgentQuery { ids: Some(ids), count: 20, ..Default::default() }).unwrap();
        assert_eq!((rows.len(), total), (1, 1));

        assert_eq!(store.status(&a.id).unwrap(), None);
        let s = StatusRow { status: "connected".into(), version: "1.2.3".into(), updated: util::now_iso() };
        store.save_status(&a.id, &s).unwrap();
        store.mark_all_disconnected().unwrap();
        let after = store.status(&a.id).unwrap().unwrap();
        assert_eq!((after.status.as_str(), after.version.as_str()), ("disconnected", "1.2.3"));
    }
}
