//! The version an agent reports about itself (its heartbeat's `version`), read once where it
//! enters the server: semver (`1.4.2` or `v1.4.2`) of at most [`MAX_REPORTED_LEN`] characters.
//! Anything else is kept and shown as [`INVALID`], never as the text the agent sent, so that an
//! agent cannot fill the store, the answers or the metrics with text of its choosing.

use semver::Version;

use crate::target::parse_version;

/// The longest version text an agent may report.
pub const MAX_REPORTED_LEN: usize = 64;
/// How a version that is not one is stored and shown.
pub const INVALID: &str = "invalid";

/// What an agent said its version is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedVersion {
    Valid(Version),
    /// Not semver, or too long.
    Invalid,
}

impl ReportedVersion {
    pub fn parse(text: &str) -> ReportedVersion {
        if text.len() > MAX_REPORTED_LEN {
            return ReportedVersion::Invalid;
        }
        parse_version(text).map_or(ReportedVersion::Invalid, ReportedVersion::Valid)
    }

    /// The version as stored and shown: the semver, or `invalid`.
    pub fn label(&self) -> String {
        match self {
            ReportedVersion::Valid(v) => v.to_string(),
            ReportedVersion::Invalid => INVALID.to_string(),
        }
    }

    /// A stored label as it may be shown: itself when it is a version (or `unknown`, `invalid`),
    /// else `invalid` (text stored before versions were checked).
    pub fn shown(stored: &str) -> String {
        match stored {
            "unknown" | INVALID => stored.to_string(),
            other => ReportedVersion::parse(other).label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_semver_is_a_version() {
        assert_eq!(ReportedVersion::parse("1.4.2").label(), "1.4.2");
        assert_eq!(ReportedVersion::parse("v3.2.14-7fd9a1d").label(), "3.2.14-7fd9a1d");
        for bad in
            ["", "latest", "1.x", "1.2.3 ; DROP TABLE", &format!("1.2.3-{}", "a".repeat(60)), &"9".repeat(1_000_000)]
        {
            assert_eq!(ReportedVersion::parse(bad), ReportedVersion::Invalid, "{}", &bad[..bad.len().min(20)]);
        }
        assert_eq!(ReportedVersion::shown("unknown"), "unknown");
        assert_eq!(ReportedVersion::shown(&"x".repeat(500)), "invalid");
        assert_eq!(ReportedVersion::shown("2.0.0"), "2.0.0");
    }
}
