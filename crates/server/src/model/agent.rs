//! An `Agent` resource, its last known status, and the clients that may call the server: the
//! records every layer reads.

use edge_agent_wire::{AgentStatus, ReportedVersion};
use serde_json::Value;

use super::access::Role;

/// The most characters an agent's name, or an identifier's system or value, may have.
pub const MAX_TEXT: usize = 256;

/// Whether `text` (trimmed) fits an agent's name or an identifier: at most [`MAX_TEXT`]
/// characters, none a control character (a NUL cut a search pattern short in the store), a line
/// or paragraph separator, or an invisible mark that reorders or hides text where it is shown
/// (`U+202E` shows `clinic-7\u{202E}gpj` as `clinic-7jpg`).
pub fn fits_text(text: &str) -> bool {
    let hidden =
        |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}');
    text.chars().count() <= MAX_TEXT && !text.chars().any(|c| c.is_control() || hidden(c))
}

/// Why an identifier could never be found by a search (`identifier=[system]|value`, comma: any
/// of): a system holding `|` or `,`, or a value holding `,`, is split where the search splits
/// (found by an attacker's probe: `urn:s|x` as a system was taken, and no search, rollout or
/// policy selector could find its agent). None when it can be found.
pub fn unsearchable_identifier(system: &str, value: &str) -> Option<&'static str> {
    if system.trim() != system || value.trim() != value {
        return Some("a system or value may not begin or end with spaces (a search trims them)");
    }
    if system.contains(['|', ',']) {
        return Some("a system may not hold '|' or ',' (a search splits on them)");
    }
    value.contains(',').then_some("a value may not hold ',' (a search splits lists on it)")
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
        m.serialize_entry("meta", &Meta { last_updated: &self.last_updated })?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("status", &self.status)?;
        if with_identifier {
            m.serialize_entry("identifier", &self.identifiers)?;
        }
        m.end()
    }
}

/// A resource's `meta`.
#[derive(serde::Serialize)]
struct Meta<'a> {
    #[serde(rename = "lastUpdated")]
    last_updated: &'a str,
}

/// The last known connection status of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    pub status: AgentStatus,
    pub version: String,
    pub updated: String,
}

/// A client that may call the server: an operator's client with its role, or the credentials of
/// one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub id: String,
    pub role: Role,
    pub agent_id: Option<String>,
    /// What people call it (shown by `medplum whoami`); clients made before names have none.
    pub name: Option<String>,
}

impl Client {
    /// The client as an audit event's actor or entity: `ClientApplication/<id>` and its name.
    pub fn reference(&self) -> super::audit::Ref {
        super::audit::Ref { reference: format!("ClientApplication/{}", self.id), display: Some(self.display()) }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn display(&self) -> String {
        match (&self.name, &self.agent_id) {
            (Some(name), _) => name.clone(),
            (None, Some(agent)) => format!("Agent {agent}"),
            (None, None) => self.role.title().into(),
        }
    }
}

impl StatusRow {
    /// A stored status from its nullable columns: None when the agent was never seen. A stored
    /// version that is not one is shown as `invalid`.
    pub fn from_columns(status: Option<String>, version: Option<String>, updated: Option<String>) -> Option<StatusRow> {
        let status = AgentStatus::parse(&status?)?;
        let version = version.map_or_else(|| "unknown".into(), |v| ReportedVersion::shown(&v));
        Some(StatusRow { status, version, updated: updated? })
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn a_name_is_short_and_shows_as_it_is() {
        assert!(fits_text("clinic-7 (Lab 2, Zürich)"));
        assert!(fits_text(&"x".repeat(MAX_TEXT)));
        assert!(!fits_text(&"x".repeat(MAX_TEXT + 1)));
        for bad in ["a\u{0}b", "a\nb", "clinic-7\u{202E}gpj", "a\u{200B}b", "a\u{2028}b", "\u{FEFF}a", "a\u{2066}b"] {
            assert!(!fits_text(bad), "{bad:?}");
        }
    }
}
