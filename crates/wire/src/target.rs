//! The version an upgrade asks for, read once where a request enters (the server's `$upgrade`,
//! the agent's upgrade request, `agent upgrade --version`) and carried as a [`Target`] from there
//! on. [`parse_version`] is the one rule for reading a version: `1.4.2` and `v1.4.2` are the same
//! version, surrounding blanks are ignored, anything else must be semver.

use std::fmt;

use semver::Version;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an upgrade is to install.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The latest release the agent's release source publishes (never older than the running one).
    Latest,
    /// This version, older or newer.
    Exact(Version),
}

/// A version text that is no version.
#[derive(Debug, thiserror::Error)]
#[error("'{text}' is not a valid version")]
pub struct VersionError {
    /// The text as given, trimmed.
    pub text: String,
    #[source]
    pub source: semver::Error,
}

/// Reads a version: `1.4.2` or `v1.4.2`, with an optional pre-release and build.
pub fn parse_version(text: &str) -> Result<Version, VersionError> {
    let t = text.trim();
    Version::parse(t.strip_prefix('v').unwrap_or(t)).map_err(|source| VersionError { text: t.to_string(), source })
}

/// The label of the latest release, in answers, logs and histories.
pub const LATEST: &str = "latest";

impl Target {
    /// The target a request names: no text (or blanks) is the latest release, any other text
    /// must be a version.
    pub fn parse(text: Option<&str>) -> Result<Target, VersionError> {
        match text.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Target::Latest),
            Some(t) => parse_version(t).map(Target::Exact),
        }
    }

    /// A label as [`Target::label`] writes it: `latest`, or a version.
    pub fn from_label(label: &str) -> Result<Target, VersionError> {
        match label.trim() {
            LATEST => Ok(Target::Latest),
            other => parse_version(other).map(Target::Exact),
        }
    }

    /// `latest`, or the version: how answers, logs and histories name the target.
    pub fn label(&self) -> String {
        match self {
            Target::Latest => LATEST.to_string(),
            Target::Exact(v) => v.to_string(),
        }
    }

    /// The exact version, if one was asked for.
    pub fn version(&self) -> Option<&Version> {
        match self {
            Target::Latest => None,
            Target::Exact(v) => Some(v),
        }
    }

    /// The `version` field of an `agent:upgrade:request`: absent for the latest.
    pub fn to_wire(&self) -> Option<String> {
        self.version().map(Version::to_string)
    }
}

impl From<Option<Version>> for Target {
    fn from(v: Option<Version>) -> Target {
        v.map_or(Target::Latest, Target::Exact)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str(LATEST),
            Target::Exact(v) => v.fmt(f),
        }
    }
}

/// Stored as its label.
impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let label = String::deserialize(d)?;
        Target::from_label(&label).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_may_carry_a_v_and_blanks() {
        assert_eq!(parse_version("v1.2.3").unwrap(), Version::new(1, 2, 3));
        assert_eq!(parse_version(" 1.2.3\n").unwrap(), Version::new(1, 2, 3));
        assert_eq!(parse_version("1.2.3-rc.1").unwrap().to_string(), "1.2.3-rc.1");
        for bad in ["1.2", "latest", "vv1.2.3", "", "1.2.3.4"] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_version(" x ").unwrap_err().to_string(), "'x' is not a valid version");
    }

    #[test]
    fn a_target_is_the_latest_or_an_exact_version() {
        assert_eq!(Target::parse(None).unwrap(), Target::Latest);
        assert_eq!(Target::parse(Some("  ")).unwrap(), Target::Latest);
        assert_eq!(Target::parse(Some("v2.0.0")).unwrap(), Target::Exact(Version::new(2, 0, 0)));
        assert!(Target::parse(Some("latest")).is_err(), "a request names the latest by naming no version");
        assert_eq!(Target::from_label("latest").unwrap(), Target::Latest);
        for t in [Target::Latest, Target::Exact(Version::new(1, 4, 2))] {
            assert_eq!(Target::from_label(&t.label()).unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t);
        }
        assert_eq!(Target::Exact(Version::new(1, 4, 2)).to_wire().as_deref(), Some("1.4.2"));
        assert_eq!(Target::Latest.to_wire(), None);
    }
}
