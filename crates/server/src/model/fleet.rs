//! What the operator's page asks of the fleet and gets back: counts by state and version, and one
//! sorted, filtered page of the agent table (the store answers both in SQL, `store::fleet`).

use edge_agent_wire::AgentStatus;
use serde::Serialize;
use serde_json::Value;

/// How many agents are in each connection state and on each version.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct FleetCounts {
    pub total: usize,
    /// Most agents first.
    pub states: Vec<(String, usize)>,
    /// Most agents first.
    pub versions: Vec<(String, usize)>,
}

/// What the agent table asks for (already validated).
#[derive(Debug, Clone, Default)]
pub struct TableQuery {
    /// Matches a name or an identifier value, anywhere, case-insensitively.
    pub text: Option<String>,
    pub state: Option<AgentStatus>,
    pub version: Option<String>,
    pub not_version: Option<String>,
    pub last_failed: bool,
    pub sort: Sort,
    pub descending: bool,
    pub page: usize,
    pub size: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Sort {
    #[default]
    Name,
    State,
    Version,
    Since,
    LastUpgrade,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "name" => Sort::Name,
            "state" => Sort::State,
            "version" => Sort::Version,
            "since" => Sort::Since,
            "last" => Sort::LastUpgrade,
            _ => return None,
        })
    }
}

/// One row of the agent table.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub id: String,
    pub name: String,
    pub identifiers: Value,
    pub state: String,
    pub version: String,
    pub since: Option<String>,
    pub last_outcome: Option<String>,
    pub last_at: Option<String>,
    /// When the agent was added (its `meta.lastUpdated`: nothing changes an Agent after that).
    pub added: String,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub total: usize,
    pub page: usize,
    pub size: usize,
    pub rows: Vec<Row>,
}
