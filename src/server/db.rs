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
    /// What people call it (shown by `medplum whoami`); clients made before names have none.
    pub name: Option<String>,
}

impl Client {
    pub fn display(&self) -> String {
        match (&self.name, &self.agent_id) {
            (Some(name), _) => name.clone(),
            (None, Some(agent)) => format!("Agent {agent}"),
            (None, None) => "Administrator".into(),
        }
    }
}

/// How a `name` search matches (FHIR string search: prefix by default, `:exact`, `:contains`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NameMatch {
    /// Case-insensitive prefix.
    Prefix,
    /// The whole name, case-sensitive.
    Exact,
    /// Case-insensitive substring.
    Contains,
}

/// A token search (`status`, `identifier`): any of the values, or none of them with `:not`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenFilter<T> {
    pub any_of: Vec<T>,
    pub not: bool,
}

/// One `_lastUpdated` comparison on instants written as `YYYY-MM-DDThh:mm:ss.sssZ`: the value's
/// precision is the range `[low, high)`, and each FHIR prefix compares against that range.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantFilter {
    pub prefix: DatePrefix,
    pub low: String,
    pub high: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DatePrefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// What a search sorts by (`_sort`), each ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SortKey {
    Name,
    Status,
    Identifier,
    LastUpdated,
}

/// Search criteria for `Agent` (already validated). Criteria on different parameters all apply.
#[derive(Debug, Default, Clone)]
pub struct AgentQuery {
    pub ids: Option<Vec<String>>,
    pub names: Vec<(NameMatch, String)>,
    pub status: Option<TokenFilter<String>>,
    /// (system, value) pairs; a `None` system matches any.
    pub identifier: Option<TokenFilter<(Option<String>, String)>>,
    pub last_updated: Vec<InstantFilter>,
    /// (key, descending); the id always breaks ties so that pages are stable.
    pub sort: Vec<(SortKey, bool)>,
    pub count: usize,
    pub offset: usize,
}

pub struct Store {
    pub(crate) conn: Mutex<Connection>,
    project_id: String,
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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
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
    // One id for this server's data, the `Project` that Medplum clients expect a login to be in.
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('project_id', ?1)", [util::uuid()])?;
    Ok(())
}

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
        migrate(&conn).map_err(open_error)?;
        let project_id =
            conn.query_row("SELECT value FROM meta WHERE key = 'project_id'", [], |r| r.get(0)).map_err(open_error)?;
        Ok(Store { conn: Mutex::new(conn), project_id })
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

    /// The id of this server's `Project`, made once with the database.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// Creates a client with a fresh random secret; returns (client, secret).
    pub fn create_client(
        &self,
        admin: bool,
        agent_id: Option<&str>,
        name: &str,
    ) -> Result<(Client, String), StoreError> {
        let client =
            Client { id: util::uuid(), admin, agent_id: agent_id.map(str::to_owned), name: Some(name.to_string()) };
        let secret = util::random_hex(32);
        self.conn.lock().unwrap().execute(
            "INSERT INTO clients (id, secret_sha256, admin, agent_id, name) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![client.id, hash_secret(&secret), admin, client.agent_id, client.name],
        )?;
        Ok((client, secret))
    }

    /// The client whose id and secret these are, if any.
    pub fn authenticate(&self, id: &str, secret: &str) -> Result<Option<Client>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let found = conn
            .query_row("SELECT secret_sha256, admin, agent_id, name FROM clients WHERE id = ?1", [id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Client { id: id.to_string(), admin: r.get(1)?, agent_id: r.get(2)?, name: r.get(3)? },
                ))
            })
            .optional()?;
        Ok(found.filter(|(hash, _)| *hash == hash_secret(secret)).map(|(_, client)| client))
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.query_row(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?1"), [id], agent_row).optional()?)
    }

    /// One page of matching agents, and how many match in all.
    pub fn search(&self, q: &AgentQuery) -> Result<(Vec<AgentRow>, usize), StoreError> {
        let (filter, args) = search_filter(q);
        let conn = self.conn.lock().unwrap();
        let total: i64 =
            conn.query_row(&format!("SELECT count(*) FROM agents {filter}"), params_from_iter(&args), |r| r.get(0))?;
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents {filter} ORDER BY {} LIMIT {} OFFSET {}",
            order_by(&q.sort),
            q.count,
            q.offset
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

fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// The `WHERE` clause of a search and its arguments, in order.
fn search_filter(q: &AgentQuery) -> (String, Vec<String>) {
    let mut clauses = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if let Some(ids) = &q.ids {
        clauses.push(format!("id IN ({})", vec!["?"; ids.len()].join(",")));
        args.extend(ids.iter().cloned());
    }
    for (how, name) in &q.names {
        let (clause, arg) = match how {
            NameMatch::Exact => ("name = ?", name.clone()),
            NameMatch::Prefix => ("lower(name) LIKE lower(?) ESCAPE '\\'", format!("{}%", like_escape(name))),
            NameMatch::Contains => ("lower(name) LIKE lower(?) ESCAPE '\\'", format!("%{}%", like_escape(name))),
        };
        clauses.push(clause.to_string());
        args.push(arg);
    }
    if let Some(status) = &q.status {
        let list = vec!["?"; status.any_of.len()].join(",");
        clauses.push(format!("status {}IN ({list})", if status.not { "NOT " } else { "" }));
        args.extend(status.any_of.iter().cloned());
    }
    if let Some(identifier) = &q.identifier {
        let mut any = Vec::new();
        for (system, value) in &identifier.any_of {
            let mut c = "json_extract(value, '$.value') = ?".to_string();
            args.push(value.clone());
            if let Some(system) = system {
                c.push_str(" AND json_extract(value, '$.system') = ?");
                args.push(system.clone());
            }
            any.push(format!("({c})"));
        }
        let exists = format!("EXISTS (SELECT 1 FROM json_each(agents.identifiers) WHERE {})", any.join(" OR "));
        clauses.push(if identifier.not { format!("NOT {exists}") } else { exists });
    }
    for f in &q.last_updated {
        let (clause, bounds): (&str, Vec<&String>) = match f.prefix {
            DatePrefix::Eq => ("(last_updated >= ? AND last_updated < ?)", vec![&f.low, &f.high]),
            DatePrefix::Ne => ("NOT (last_updated >= ? AND last_updated < ?)", vec![&f.low, &f.high]),
            DatePrefix::Gt | DatePrefix::Sa => ("last_updated >= ?", vec![&f.high]),
            DatePrefix::Ge => ("last_updated >= ?", vec![&f.low]),
            DatePrefix::Lt | DatePrefix::Eb => ("last_updated < ?", vec![&f.low]),
            DatePrefix::Le => ("last_updated < ?", vec![&f.high]),
        };
        clauses.push(clause.to_string());
        args.extend(bounds.into_iter().cloned());
    }
    let filter = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    (filter, args)
}

/// `ORDER BY` for `_sort`; by name when none is given, and always by id last.
fn order_by(sort: &[(SortKey, bool)]) -> String {
    let mut keys: Vec<String> = sort
        .iter()
        .map(|(key, desc)| {
            let column = match key {
                SortKey::Name => "name",
                SortKey::Status => "status",
                SortKey::Identifier => "json_extract(identifiers, '$[0].value')",
                SortKey::LastUpdated => "last_updated",
            };
            format!("{column}{}", if *desc { " DESC" } else { "" })
        })
        .collect();
    if keys.is_empty() {
        keys.push("name".into());
    }
    keys.push("id".into());
    keys.join(", ")
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
        let (client, secret) = store.create_client(false, Some(&a.id), "Lab_7 agent").unwrap();
        assert_eq!(store.authenticate(&client.id, &secret).unwrap(), Some(client.clone()));
        assert_eq!(store.authenticate(&client.id, "wrong").unwrap(), None);

        let q = |f: &dyn Fn(&mut AgentQuery)| {
            let mut q = AgentQuery { count: 20, ..Default::default() };
            f(&mut q);
            store.search(&q).unwrap().0.into_iter().map(|r| r.name).collect::<Vec<_>>()
        };
        assert_eq!(q(&|_| {}), ["Clinic agent", "Lab_7 agent"]);
        assert_eq!(q(&|q| q.names = vec![(NameMatch::Prefix, "lab_".into())]), ["Lab_7 agent"]);
        assert_eq!(q(&|q| q.names = vec![(NameMatch::Prefix, "lab%".into())]), Vec::<String>::new());
        assert_eq!(q(&|q| q.names = vec![(NameMatch::Exact, "lab_7 agent".into())]), Vec::<String>::new());
        assert_eq!(q(&|q| q.names = vec![(NameMatch::Exact, "Lab_7 agent".into())]), ["Lab_7 agent"]);
        assert_eq!(q(&|q| q.names = vec![(NameMatch::Contains, "NIC".into())]), ["Clinic agent"]);
        let token = |v: &str, not| Some(TokenFilter { any_of: vec![v.to_string()], not });
        assert_eq!(q(&|q| q.status = token("off", false)), ["Clinic agent"]);
        assert_eq!(q(&|q| q.status = token("off", true)), ["Lab_7 agent"]);
        let ident = |system: &str, not| {
            Some(TokenFilter { any_of: vec![(Some(system.to_string()), "lab-7".to_string())], not })
        };
        assert_eq!(q(&|q| q.identifier = ident("urn:site", false)), ["Lab_7 agent"]);
        assert_eq!(q(&|q| q.identifier = ident("urn:other", false)), Vec::<String>::new());
        assert_eq!(q(&|q| q.identifier = ident("urn:site", true)), ["Clinic agent"]);
        assert_eq!(q(&|q| q.sort = vec![(SortKey::Name, true)]), ["Lab_7 agent", "Clinic agent"]);
        assert_eq!(q(&|q| q.sort = vec![(SortKey::Status, false)]), ["Lab_7 agent", "Clinic agent"]);
        let far = |prefix| InstantFilter { prefix, low: "2000-01-01".into(), high: "2000-01-02".into() };
        assert_eq!(q(&|q| q.last_updated = vec![far(DatePrefix::Gt)]).len(), 2);
        assert_eq!(q(&|q| q.last_updated = vec![far(DatePrefix::Lt)]).len(), 0);
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
