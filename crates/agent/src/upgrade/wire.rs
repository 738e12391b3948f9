//! The upgrade's answers as the server reads them (protocol.md §3.1, §3.4): which of Medplum's
//! texts ([`edge_agent_wire::texts`]) answers which failure. `Display` is for people and logs.

use edge_agent_base::error::error_chain;
use edge_agent_wire::{texts, Target};

use super::error::UpgradeError;
use super::journal::Reply;

/// An answer that is an `agent:error`.
pub enum WireText<'a> {
    /// Another upgrade runs and this request is not forced.
    InProgress,
    /// The version text given is not a version.
    InvalidVersion(&'a str),
    /// The upgrade to `target` (as asked: a version, or the latest) failed before its swap.
    Failed { target: &'a Target, error: &'a UpgradeError },
    /// After the swap: the running version is not the target; `why` says what happened.
    NotUpgraded { target: &'a Target, running: &'a str, why: &'a str },
}

/// The body of the `agent:error`.
pub fn text(w: WireText<'_>) -> String {
    match w {
        WireText::InProgress | WireText::Failed { error: UpgradeError::InProgress, .. } => texts::IN_PROGRESS.into(),
        WireText::InvalidVersion(v) => texts::invalid_version(v),
        // A version no release source publishes reads as one that is not a version, as in Medplum.
        WireText::Failed { error: UpgradeError::NoSuchVersion { version, .. }, .. } => {
            texts::invalid_version(&version.to_string())
        }
        WireText::Failed { target, error } => texts::failed(&target.label(), &error_chain(error)),
        WireText::NotUpgraded { target, running, why } => texts::not_upgraded(&target.label(), running, why),
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
    use semver::Version;

    use super::*;

    #[test]
    fn invalid_and_unpublished_versions_read_alike_on_the_wire_only() {
        let missing =
            UpgradeError::NoSuchVersion { version: Version::new(9, 9, 9), url: "http://r/v9.9.9.json".into() };
        assert_eq!(
            text(WireText::InvalidVersion("1.x")),
            "Error during upgrading to version 'v1.x'. '1.x' is not a valid version"
        );
        let target = Target::Exact(Version::new(9, 9, 9));
        assert_eq!(
            text(WireText::Failed { target: &target, error: &missing }),
            "Error during upgrading to version 'v9.9.9'. '9.9.9' is not a valid version"
        );
        assert!(missing.to_string().contains("answered 404"), "Display says what really happened: {missing}");
    }

    #[test]
    fn causes_reach_the_wire_text() {
        let e = UpgradeError::io("the downloaded file", std::path::Path::new("/x"), std::io::Error::other("boom"));
        assert_eq!(
            text(WireText::Failed { target: &Target::Exact(Version::new(1, 2, 0)), error: &e }),
            "Error during upgrading to version 'v1.2.0': cannot write the downloaded file /x: boom"
        );
        // As Medplum's agent says it: an upgrade to the latest is named 'latest', not what it resolved.
        assert_eq!(
            text(WireText::Failed { target: &Target::Latest, error: &e }),
            "Error during upgrading to version 'latest': cannot write the downloaded file /x: boom"
        );
    }

    #[test]
    fn an_agent_that_trusts_no_key_says_what_to_add() {
        let target = Target::Exact(Version::new(1, 2, 0));
        let said = text(WireText::Failed { target: &target, error: &UpgradeError::NotTrusted });
        assert!(said.starts_with("Error during upgrading to version 'v1.2.0': no trusted_keys configured"), "{said}");
        assert!(
            said.contains("add trusted_keys = [\"<release public key>\"]") && said.contains("allow_unsigned = true")
        );
    }
}
