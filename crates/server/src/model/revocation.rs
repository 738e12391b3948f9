//! A revocation: what was taken back (tokens by their hash, clients, agents whose sockets must
//! close), written in the store with the change that caused it and told to every node on the bus.
//! Each node applies it once (by its id), whichever way it arrives first.

use serde::{Deserialize, Serialize};

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
