//! The callback of a request (protocol.md §2): opaque on the wire, echoed exactly by whoever
//! answers, so that the reply finds the request waiting for it. A callback of any shape is
//! carried; the ones this project's server issues are `Agent/<agent id>-<uuid>`, made by
//! [`Callback::issue`] and read by [`Callback::agent_id`], and nowhere else.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A request's callback, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Callback(String);

/// The length of a UUID's text, which ends an issued callback.
const UUID_LEN: usize = 36;

impl Callback {
    /// A fresh callback for a request to `agent_id`: `Agent/<agent id>-<uuid>`.
    pub fn issue(agent_id: &str) -> Callback {
        Callback(format!("Agent/{agent_id}-{}", edge_agent_base::id::uuid()))
    }

    /// The agent an issued callback was made for; None for a callback of another shape.
    pub fn agent_id(&self) -> Option<&str> {
        let rest = self.0.strip_prefix("Agent/")?;
        let split = rest.len().checked_sub(UUID_LEN + 1)?;
        let (agent, tail) = rest.split_at(split);
        let uuid = tail.strip_prefix('-')?;
        (!agent.is_empty() && is_uuid(uuid)).then_some(agent)
    }

    /// Whether this callback was issued for a request to `agent_id`.
    pub fn is_for(&self, agent_id: &str) -> bool {
        self.agent_id() == Some(agent_id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == UUID_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl From<String> for Callback {
    fn from(text: String) -> Callback {
        Callback(text)
    }
}

impl From<&str> for Callback {
    fn from(text: &str) -> Callback {
        Callback(text.to_string())
    }
}

impl fmt::Display for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_callback_names_its_agent() {
        for agent in ["a", "0f1e-2d3c", "agent-with-dashes-4b6e8a0c-1111-4222-8333-444455556666"] {
            let cb = Callback::issue(agent);
            assert_eq!(cb.agent_id(), Some(agent), "{cb}");
            assert!(cb.is_for(agent));
            assert!(!cb.is_for("b"));
        }
    }

    #[test]
    fn callbacks_of_other_shapes_are_carried_but_name_no_agent() {
        for text in ["agent:cb:host:uuid", "", "Agent/", "Agent/x-1", "Agent/-4b6e8a0c-1111-4222-8333-444455556666"] {
            let cb = Callback::from(text);
            assert_eq!(cb.as_str(), text);
            assert_eq!(cb.agent_id(), None, "{text:?}");
        }
        let not_a_uuid = Callback::from("Agent/a-4b6e8a0c-1111-4222-8333-44445555666z");
        assert_eq!(not_a_uuid.agent_id(), None);
    }
}
