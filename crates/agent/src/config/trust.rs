//! Which releases the agent may install: those signed by a key in `trusted_keys`, or, only when
//! the configuration says `allow_unsigned = true`, unsigned ones. A configuration with neither
//! (what agents were given before signatures became the default) refuses every upgrade.

use edge_agent_release::signature::{check_public_key, public_key_line};

use super::ConfigError;

/// What `trusted_keys` and `allow_unsigned` say, validated together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseTrust {
    /// A release must carry a minisign signature by one of these keys (base64 lines).
    Signed(Vec<String>),
    /// `allow_unsigned = true`: a release is checked by its published sha256 only.
    Unsigned,
    /// Neither: every upgrade is refused until one of the two is configured.
    NotConfigured,
}

/// What to add, in the words of the configuration file; part of every refusal.
pub const WHAT_TO_ADD: &str = "add trusted_keys = [\"<release public key>\"] to the agent's configuration \
     (the key `agent release keygen` made, which `agent-server agent add` writes when the server knows it), \
     or allow_unsigned = true to accept unsigned releases";

impl ReleaseTrust {
    /// The one place `trusted_keys` and `allow_unsigned` are read together.
    pub fn from_raw(keys: Option<Vec<String>>, allow_unsigned: Option<bool>) -> Result<ReleaseTrust, ConfigError> {
        let keys: Vec<String> =
            keys.unwrap_or_default().iter().map(|k| public_key_line(k)).filter(|k| !k.is_empty()).collect();
        for key in &keys {
            check_public_key(key).map_err(|problem| ConfigError::invalid("trusted_keys", key, problem))?;
        }
        match (keys.is_empty(), allow_unsigned.unwrap_or(false)) {
            (false, true) => Err(ConfigError::invalid(
                "allow_unsigned",
                true,
                "trusted_keys are set, so releases must be signed: remove allow_unsigned",
            )),
            (false, false) => Ok(ReleaseTrust::Signed(keys)),
            (true, true) => Ok(ReleaseTrust::Unsigned),
            (true, false) => Ok(ReleaseTrust::NotConfigured),
        }
    }

    /// The trusted keys (none unless [`ReleaseTrust::Signed`]).
    pub fn keys(&self) -> &[String] {
        match self {
            ReleaseTrust::Signed(keys) => keys,
            _ => &[],
        }
    }

    /// How releases are checked, in one word or two, for `agent status` and `agent:stats`.
    pub fn label(&self) -> &'static str {
        match self {
            ReleaseTrust::Signed(_) => "signed",
            ReleaseTrust::Unsigned => "unsigned allowed",
            ReleaseTrust::NotConfigured => "not configured",
        }
    }

    /// The warning start-up, `agent status` and `agent:stats` show, if this trust deserves one.
    pub fn warning(&self) -> Option<String> {
        match self {
            ReleaseTrust::Signed(_) => None,
            ReleaseTrust::Unsigned => Some(
                "allow_unsigned = true: releases are installed without a signature check (sha256 only); \
                 list the release public key in trusted_keys and remove allow_unsigned"
                    .into(),
            ),
            ReleaseTrust::NotConfigured => {
                Some(format!("no trusted_keys configured: every upgrade is refused; {WHAT_TO_ADD}"))
            }
        }
    }
}
