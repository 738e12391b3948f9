//! Self-upgrade. This build does not upgrade yet: every request is answered with an error so the
//! server never waits for a timeout.

use std::sync::Arc;

use serde_json::Value;

use crate::agent::Shared;
use crate::protocol::{Envelope, Message};

/// Answers an `agent:upgrade:request`.
pub fn request(
    _shared: &Arc<Shared>,
    version: Option<String>,
    _force: bool,
    callback: Option<String>,
) -> Option<Envelope> {
    let v = version.unwrap_or_else(|| "latest".into());
    Some(
        Message::error(format!("Error during upgrading to version 'v{v}': upgrades are not available in this build"))
            .reply_to(callback),
    )
}

/// The recent upgrade results, for stats.
pub fn history_json(_shared: &Shared) -> Value {
    Value::Array(vec![])
}
