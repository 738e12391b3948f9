//! Which failed upgrades are definite and which are transient, from how a member ended and the
//! agent's own words. A definite failure is the release's fault on this agent (its self-check
//! failed, it was rolled back, its signature or checksum was refused, the agent's configuration
//! forbids it): asking again would fail again. A transient one is the way's fault (a download cut
//! short, a timeout, the agent not connected, a full disk, another upgrade running): asking later
//! may work. The update policy retries transient failures and counts definite ones toward a halt.

use super::member::MemberState;

/// How a failed upgrade counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Definite,
    Transient,
}

/// Words of the agent's answers (protocol.md §3.4 and the agent's errors, lowercased) that make a
/// failure definite.
const DEFINITE: &[&str] = &[
    "self-check failed",
    "rolled back",
    "failed to upgrade to version",
    "signature check failed",
    "checksum mismatch",
    "refusing to install an unverified binary",
    "failed here before",
    "is not allowed by this agent's configuration",
    "no download url found",
];

/// What an `agent:upgrade:response` whose `statusCode` is not 200 means: the agent did not say
/// it upgraded, so it did not (protocol.md §2: success is 200, failures are `agent:error`).
pub fn upgrade_not_ok(status_code: u16) -> String {
    format!("the agent answered the upgrade request with statusCode {status_code}, not 200")
}

/// The kind of a failure: a member that `ended` (failed, timed out, expired) for `reason`. None
/// for an end that is no failure (succeeded, already, skipped).
pub fn classify(ended: MemberState, reason: Option<&str>) -> Option<FailureKind> {
    match ended {
        MemberState::Failed => {
            let text = reason.unwrap_or_default().to_lowercase();
            Some(if DEFINITE.iter().any(|d| text.contains(d)) { FailureKind::Definite } else { FailureKind::Transient })
        }
        MemberState::TimedOut | MemberState::Expired => Some(FailureKind::Transient),
        _ => None,
    }
}

/// Whether a member's end is a definite failure.
pub fn is_definite(ended: MemberState, reason: Option<&str>) -> bool {
    classify(ended, reason) == Some(FailureKind::Definite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_agent_wire::texts;

    #[test]
    fn the_agents_words_decide() {
        use FailureKind::*;
        use MemberState::*;
        let table: &[(MemberState, &str, Option<FailureKind>)] = &[
            (Failed, &texts::failed("2.0.0", "self-check failed: exit status 3"), Some(Definite)),
            (Failed, &texts::not_upgraded("2.0.0", "1.0.0", ". Rolled back: the new version crashed"), Some(Definite)),
            (Failed, &texts::not_upgraded("2.0.0-bad", "1.0.0", ""), Some(Definite)),
            (Failed, &texts::failed("2.0.0", "signature check failed for agent: bad key"), Some(Definite)),
            (Failed, &texts::failed("2.0.0", "checksum mismatch for agent: expected sha256 a, got b"), Some(Definite)),
            (Failed, &texts::failed("2.0.0", "version 2.0.0 failed here before (crash); use force"), Some(Definite)),
            (Failed, &texts::failed("2.0.0", "download of http://r/agent failed: connection reset"), Some(Transient)),
            (Failed, &texts::failed("2.0.0", "cannot fetch http://r/v2.0.0.json"), Some(Transient)),
            (Failed, &texts::failed("2.0.0", "not enough disk space in /var: 9 bytes needed"), Some(Transient)),
            (Failed, texts::IN_PROGRESS, Some(Transient)),
            (Failed, "Agent not connected", Some(Transient)),
            (TimedOut, "Timeout", Some(Transient)),
            (Expired, "offline until the deadline", Some(Transient)),
            (Succeeded, "", None),
            (Skipped, "the rollout halted first", None),
        ];
        for (state, reason, want) in table {
            assert_eq!(classify(*state, Some(reason)), *want, "{state:?} {reason}");
        }
        assert!(is_definite(Failed, Some("Error during upgrading to version 'v2.0.0': Self-check failed: boom")));
        assert!(!is_definite(Failed, None));
    }
}
