//! The records the store keeps and the criteria it searches by, shared by every backend.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};

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
    /// Leave out counting every match (bulk operations need the page only); the total returned
    /// is then the page's length.
    pub skip_total: bool,
    pub offset: usize,
}

impl StatusRow {
    /// A stored status from its nullable columns: None when the agent was never seen.
    pub fn from_columns(status: Option<String>, version: Option<String>, updated: Option<String>) -> Option<StatusRow> {
        Some(StatusRow { status: status?, version: version.unwrap_or_else(|| "unknown".into()), updated: updated? })
    }
}

/// How an upgrade ended, as counted in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    RolledBack,
    TimedOut,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Succeeded, Outcome::Failed, Outcome::RolledBack, Outcome::TimedOut];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::TimedOut => "timed_out",
        }
    }

    /// The outcome stored as `s` (what [`Outcome::as_str`] wrote).
    pub fn parse(s: &str) -> Outcome {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s).unwrap_or(Outcome::Failed)
    }

    /// The outcome of an `$upgrade` answer: its HTTP status and the text the agent (or the server's
    /// wait) gave. A new version that did not hold is reported as `Failed to upgrade to version …`
    /// (protocol.md §3.4), or with the rollback's reason.
    pub fn classify(status: StatusCode, text: &str) -> Outcome {
        if status.is_success() {
            Outcome::Succeeded
        } else if text == "Timeout" {
            Outcome::TimedOut
        } else if text.starts_with("Failed to upgrade to version") || text.to_lowercase().contains("rolled back") {
            Outcome::RolledBack
        } else {
            Outcome::Failed
        }
    }
}

/// One recorded upgrade attempt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeResult {
    pub agent_id: String,
    pub at: String,
    /// The version asked for; `None` for "latest".
    pub requested: Option<String>,
    pub force: bool,
    /// The version the agent reported when it was asked.
    pub from: String,
    pub outcome: Outcome,
    /// `All OK`, or the reason exactly as the agent reported it.
    pub text: String,
}
