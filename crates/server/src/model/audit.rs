//! An audit event, as the store keeps it and as FHIR `AuditEvent` shows it: when, what (type,
//! subtype, action), how it ended (outcome 0/4/8/12 and a description), who acted (a client, its
//! name, its network address) and on what (agents, a rollout). It never holds a secret or a token:
//! nothing that builds one is given either.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::query::InstantFilter;

/// DICOM's code for a sign-in or token request; everything else is a RESTful operation.
pub const LOGIN: &str = "110114";
pub const REST: &str = "rest";
/// The code system of the subtypes, this server's own.
pub const SUBTYPES: &str = "https://edge-agent.dev/fhir/audit-subtype";

/// How it ended, in FHIR's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Success = 0,
    /// The caller's fault: refused, bad input, unknown.
    Minor = 4,
    /// The server's fault: a store or bus down, an agent not answering.
    Serious = 8,
    Major = 12,
}

impl Outcome {
    /// The outcome of an HTTP answer with this status.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            s if s < 400 => Outcome::Success,
            s if s < 500 => Outcome::Minor,
            _ => Outcome::Serious,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Minor => "4",
            Outcome::Serious => "8",
            Outcome::Major => "12",
        }
    }
}

/// A reference and what to show for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ref {
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// The server itself as who acted, and what of it (`rollout driver`, `update policy`): a rollout
/// that halted by itself, the update policy's steps.
pub fn the_server(what: &str) -> Ref {
    Ref { reference: "Device/edge-agent-server".into(), display: Some(what.into()) }
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: String,
    /// `YYYY-MM-DDThh:mm:ss.sssZ`.
    pub recorded: String,
    /// [`LOGIN`] or [`REST`].
    pub kind: String,
    /// What happened, e.g. `agent-remove`, `upgrade`, `refused` (see README).
    pub subtype: String,
    /// C, R, U, D or E.
    pub action: char,
    pub outcome: Outcome,
    pub description: String,
    /// Who acted: `ClientApplication/<id>` (or the server itself), when known.
    pub who: Option<Ref>,
    pub address: Option<String>,
    pub entities: Vec<Ref>,
}

impl AuditRecord {
    /// The FHIR `AuditEvent`.
    pub fn to_fhir(&self) -> Value {
        let kind = match self.kind.as_str() {
            LOGIN => {
                json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": LOGIN, "display": "User Authentication"})
            }
            _ => {
                json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": REST, "display": "RESTful Operation"})
            }
        };
        let mut agent = json!({"requestor": true});
        if let Some(who) = &self.who {
            agent["who"] = json!(who);
        }
        if let Some(a) = &self.address {
            agent["network"] = json!({"address": a, "type": "2"});
        }
        let entity: Vec<Value> = self.entities.iter().map(|e| json!({"what": e})).collect();
        let mut v = json!({
            "resourceType": "AuditEvent",
            "id": self.id,
            "meta": {"lastUpdated": self.recorded},
            "type": kind,
            "subtype": [{"system": SUBTYPES, "code": self.subtype}],
            "action": self.action.to_string(),
            "recorded": self.recorded,
            "outcome": self.outcome.code(),
            "outcomeDesc": self.description,
            "agent": [agent],
            "source": {"observer": {"display": "edge-agent-server"}},
        });
        if !entity.is_empty() {
            v["entity"] = json!(entity);
        }
        v
    }
}

/// An `AuditEvent` search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    pub date: Vec<InstantFilter>,
    /// A client reference (`ClientApplication/<id>`).
    pub agent: Option<String>,
    /// An entity reference (`Agent/<id>`, `Rollout/<id>`).
    pub entity: Option<String>,
    pub kind: Option<String>,
    pub subtype: Option<String>,
    pub outcome: Option<String>,
    /// Newest first (`_sort=-date`, the default) or oldest first (`_sort=date`).
    pub newest_first: bool,
    pub count: usize,
    pub offset: usize,
}
