//! An agent's connection status, as `$status` answers it (protocol.md §4.2) and as the server
//! keeps it.

use std::fmt;

/// Where an agent stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentStatus {
    /// A node holds its socket.
    Connected,
    /// It was seen, and no node holds its socket now.
    Disconnected,
    /// It was never seen.
    Unknown,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 3] = [AgentStatus::Connected, AgentStatus::Disconnected, AgentStatus::Unknown];

    /// The wire and stored text: `connected`, `disconnected`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Connected => "connected",
            AgentStatus::Disconnected => "disconnected",
            AgentStatus::Unknown => "unknown",
        }
    }

    /// The status written as [`AgentStatus::as_str`] writes it; None for any other text.
    pub fn parse(text: &str) -> Option<AgentStatus> {
        AgentStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip() {
        for s in AgentStatus::ALL {
            assert_eq!(AgentStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(AgentStatus::parse("Connected"), None);
    }
}
