//! A revocation: what was taken back (tokens by their hash, clients, agents whose sockets must
//! close), written in the store with the change that caused it and told to every node on the bus.
//! Each node applies it once (by its id), whichever way it arrives first.

use serde::{Deserialize, Serialize};

/// What an agent is told as its socket closes because it was removed.
pub const AGENT_REMOVED: &str = "Agent removed: its credentials were revoked and it may no longer connect";
/// What an agent is told as its socket closes because it was switched off.
pub const AGENT_SWITCHED_OFF: &str = "Agent switched off (status off): it may connect again once its status is active";
/// What an agent is told as its socket closes because its credentials were replaced.
pub const AGENT_ROTATED: &str = "Agent credentials replaced: connect again with the new client secret";
/// Why a client's tokens and sessions ended: it was removed.
pub const CLIENT_REMOVED: &str = "Client removed: its credentials were revoked";
/// Why a client's tokens and sessions ended: its secret was replaced.
pub const CLIENT_ROTATED: &str = "Client secret replaced: connect again with the new secret";
/// Why a client's remembered tokens are forgotten: its role changed (read again at once).
pub const ROLE_CHANGED: &str = "Role changed";

/// What every node must forget or close, at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    /// Random, so that a node applies it once though it hears of it twice (bus and store).
    pub id: String,
    /// When it was written (ms since the epoch, the writer's clock).
    pub at_ms: i64,
    /// Hashes of the tokens revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Clients whose every token and session ended (removed, rotated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Agents whose sockets must close (removed, switched off, their credentials rotated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Why, in words an agent is told before its socket closes.
    pub reason: String,
}
