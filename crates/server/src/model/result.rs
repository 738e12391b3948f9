//! Upgrade results as the server records them: every `$upgrade` answer, classified for the
//! metrics and the page.

use edge_agent_wire::Target;
use serde::Serialize;

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

    /// The outcome of an `$upgrade` answer: whether it was a success, and the text the agent (or
    /// the server's wait) gave. A new version that did not hold is reported as `Failed to upgrade
    /// to version …` (protocol.md §3.4), or with the rollback's reason.
    pub fn classify(success: bool, text: &str) -> Outcome {
        if success {
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
    /// What was asked for: a version, or the latest.
    pub requested: Target,
    pub force: bool,
    /// The version the agent reported when it was asked.
    pub from: String,
    pub outcome: Outcome,
    /// `All OK`, or the reason exactly as the agent reported it.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_answers() {
        let table = [
            (true, "All OK", Outcome::Succeeded),
            (false, "Timeout", Outcome::TimedOut),
            (false, "Agent not connected", Outcome::Failed),
            (false, "Failed to upgrade to version 1.2.0. Agent still running with version 1.1.0", Outcome::RolledBack),
            (false, "Rolled back: rolled back by the operator (agent rollback)", Outcome::RolledBack),
            (false, "Error during upgrading to version 'v9.9.9'. '9.9.9' is not a valid version", Outcome::Failed),
        ];
        for (success, text, want) in table {
            assert_eq!(Outcome::classify(success, text), want, "{text}");
        }
    }
}
