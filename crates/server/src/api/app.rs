//! What every handler of the REST API and the web page works with, built once at start-up.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::conn::hub::Hub;
use crate::conn::revocations::Revocations;
use crate::fleet::policy::engine::Policies;
use crate::fleet::results::Results;
use crate::fleet::rollout::engine::Rollouts;
use crate::identity::sessions::Sessions;
use crate::identity::tokens::Tokens;
use crate::limits::throttle::Throttle;
use crate::metrics::Metrics;
use crate::store::Store;

/// The server's services, shared by the REST API and the operator's page.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub tokens: Arc<Tokens>,
    /// Credentials taken back, on every node at once.
    pub revocations: Arc<Revocations>,
    /// The rates of the token endpoint and the page's sign-in.
    pub throttle: Arc<Throttle>,
    pub sessions: Arc<Sessions>,
    pub results: Arc<Results>,
    pub metrics: Arc<Metrics>,
    pub rollouts: Arc<Rollouts>,
    pub policy: Arc<Policies>,
    /// This node's id on the bus (random at each start), shown by `/healthcheck`.
    pub node: String,
    pub shutdown: CancellationToken,
}
