//! How nodes share what lives in one node's memory: which node holds each agent's socket (and the
//! agent's live status), frames for an agent whose socket is on another node, and replies whose
//! caller waits on another node, and what every node must hear at once (a revocation). One interface, two implementations: in-process for a single
//! node ([`local`]), Redis between nodes ([`redis`], its client over TLS or not made by
//! [`redis_tls`]). The hub uses it; handlers never see which.

pub mod local;
pub mod redis;
pub mod redis_tls;
pub mod watched;

use std::time::Duration;

use async_trait::async_trait;
use edge_agent_wire::Callback;

use crate::model::agent::StatusRow;
use crate::model::revocation::Revocation;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis URL {url}: {why}")]
    Url { url: String, why: String },
    #[error("cannot connect to Redis at {url}: {why}")]
    Connect { url: String, why: String },
}

impl BusError {
    /// The call provably never reached Redis (the connection was refused): whatever it would have
    /// published was not.
    pub fn not_sent(&self) -> bool {
        match self {
            BusError::Redis(e) => e.is_connection_refusal(),
            BusError::Url { .. } | BusError::Connect { .. } => true,
            BusError::Timeout(_) => false,
        }
    }
}

/// What another node sent this one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Inbound {
    /// A frame to send on `agent`'s socket, which this node holds.
    Deliver { agent: String, frame: String },
    /// An agent's reply to a request waiting on this node.
    Reply { callback: Callback, frame: String },
    /// Credentials taken back, told to every node ([`Bus::broadcast`]): see `conn::revocations`.
    Revoke { revocation: Revocation },
}

/// A socket this node holds: the agent, the socket's id on this node, the agent's live status.
#[derive(Debug, Clone)]
pub struct Held {
    pub agent: String,
    pub conn: u64,
    pub status: StatusRow,
}

#[async_trait]
pub trait Bus: Send + Sync {
    /// Records that this node holds `held.agent`'s newest socket, with its live status.
    async fn hold(&self, held: &Held) -> Result<(), BusError>;
    /// The last socket of `agent` on this node (`conn`) closed: forgets the record if it still
    /// names this node; true when it names another node (the agent holds a socket there now, and
    /// its status is that node's to write).
    async fn release(&self, agent: &str, conn: u64) -> Result<bool, BusError>;
    /// Renews the records of every socket this node holds (they expire unless renewed), without
    /// taking back an agent that has since connected to another node.
    async fn refresh(&self, held: &[Held]) -> Result<(), BusError>;
    /// How long a record of a socket ([`Bus::hold`], [`Bus::refresh`]) lasts unless renewed;
    /// None when the bus keeps none: a single node's does not, and is then not handed a list of
    /// every socket to renew.
    fn record_ttl(&self) -> Option<Duration>;
    /// The live status of each agent whose socket any node holds (None: no live node holds it).
    async fn presence(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, BusError>;
    /// Which socket holds each agent, as `<node> <conn>` (None: no live node holds it). A request
    /// sent to one socket is sent again when the agent's socket is another one.
    async fn where_held(&self, ids: &[String]) -> Result<Vec<Option<String>>, BusError>;
    /// Hands `frame` to the node holding `agent`'s socket; false when no live node holds it.
    async fn forward(&self, agent: &str, frame: &str) -> Result<bool, BusError>;
    /// Replies carrying `callback` are to come back to this node for the next `wait`.
    async fn expect_reply(&self, callback: &Callback, wait: Duration) -> Result<(), BusError>;
    /// A reply that no request on this node waits for, to the node that waits; false when none.
    async fn route_reply(&self, callback: &Callback, frame: &str) -> Result<bool, BusError>;
    /// Tells every node (this one too, when it listens on a bus) `msg`.
    async fn broadcast(&self, msg: &Inbound) -> Result<(), BusError>;
}
