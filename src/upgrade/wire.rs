//! The upgrade's answers as the server reads them (protocol.md §3.1, §3.4): Medplum's texts,
//! written here and nowhere else, apart from `Display` (which is for people and logs).

use super::error::UpgradeError;
use super::journal::Reply;
use crate::util::error_chain;

/// An answer that is an `agent:error`.
pub enum WireText<'a> {
    /// Another upgrade runs and this request is not forced.
    InProgress,
    /// The version given is not a version (or names no published release).
    InvalidVersion(&'a str),
    /// The upgrade to `target` (a version, or `latest`) failed before its swap.
    Failed { target: &'a str, error: &'a UpgradeError },
    /// After the swap: the running version is not the target; `why` says what happened.
    NotUpgraded { target: &'a str, running: &'a str, why: &'a str },
}

/// The body of the `agent:error`.
pub fn text(w: WireText<'_>) -> String {
    match w {
        WireText::InProgress => "Pending upgrade is already in progress".into(),
        WireText::InvalidVersion(v) => {
            format!("Error during upgrading to version 'v{v}'. '{v}' is not a valid version")
        }
        WireText::Failed { error: UpgradeError::InvalidVersion { text: v, .. }, .. } => {
            text(WireText::InvalidVersion(v))
        }
        WireText::Failed { error: UpgradeError::NoSuchVersion { version, .. }, .. } => {
            text(WireText::InvalidVersion(&version.to_string()))
        }
        WireText::Failed { error: UpgradeError::InProgress, .. } => text(WireText::InProgress),
        // Medplum's agent names an upgrade to the latest version 'latest', whatever it resolved.
        WireText::Failed { target: "latest", error } => {
            format!("Error during upgrading to version 'latest': {}", error_chain(error))
        }
        WireText::Failed { target, error } => {
            format!("Error during upgrading to version 'v{target}': {}", error_chain(error))
        }
        WireText::NotUpgraded { target, running, why } => {
            format!("Failed to upgrade to version {target}. Agent still running with version {running}{why}")
        }
    }
}

/// The `agent:error` body of an answer, if it is one.
pub fn reply_text(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Ok => None,
        Reply::Error(body) => Some(body.clone()),
        Reply::Cancelled(target) => Some(text(WireText::Failed { target, error: &UpgradeError::Cancelled })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_and_unpublished_versions_read_alike_on_the_wire_only() {
        let invalid =
            UpgradeError::InvalidVersion { text: "1.x".into(), source: semver::Version::parse("1.x").unwrap_err() };
        let missing =
            UpgradeError::NoSuchVersion { version: semver::Version::new(9, 9, 9), url: "http://r/v9.9.9.json".into() };
        assert_eq!(
            text(WireText::Failed { target: "1.x", error: &invalid }),
            "Error during upgrading to version 'v1.x'. '1.x' is not a valid version"
        );
        assert_eq!(
            text(WireText::Failed { target: "9.9.9", error: &missing }),
            "Error during upgrading to version 'v9.9.9'. '9.9.9' is not a valid version"
        );
        assert_ne!(invalid.to_string(), missing.to_string(), "Display says what really happened");
        assert!(missing.to_string().contains("answered 404"), "{missing}");
    }

    #[test]
    fn causes_reach_the_wire_text() {
        let e = UpgradeError::io("the downloaded file", std::path::Path::new("/x"), std::io::Error::other("boom"));
        assert_eq!(
            text(WireText::Failed { target: "1.2.0", error: &e }),
            "Error during upgrading to version 'v1.2.0': cannot write the downloaded file /x: boom"
        );
        // As Medplum's agent says it: an upgrade to the latest is named 'latest', not what it resolved.
        assert_eq!(
            text(WireText::Failed { target: "latest", error: &e }),
            "Error during upgrading to version 'latest': cannot write the downloaded file /x: boom"
        );
    }
}
