//! The agent daemon: keeps one WebSocket to the control server ([`session`]), answers its
//! requests ([`handlers`]), runs upgrades ([`upgrades`], over [`crate::upgrade`]) and serves the
//! host's `agent upgrade` on its control socket ([`control`]). [`run`] is the whole daemon; the
//! binary only parses flags, loads the config and sets up logging.

pub mod control;
pub mod handlers;
pub mod session;
pub mod shared;
pub mod token;
pub mod upgrades;

use std::sync::Arc;

use edge_agent_base::build_info::{version_str, TARGET};
use edge_agent_wire::Envelope;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use shared::{Exit, Shared};

/// Runs the daemon until shutdown, or until an installed upgrade needs a restart.
pub async fn run(shared: Arc<Shared>, outbox: mpsc::Receiver<Envelope>, shutdown: CancellationToken) -> Exit {
    let cfg = shared.config();
    tracing::info!(
        version = version_str(),
        target = TARGET,
        agent_id = %cfg.agent_id,
        server = %cfg.base_url,
        releases = cfg.releases_url.as_ref().map(|u| u.as_str()).unwrap_or("none"),
        route = %cfg.proxy.route(&cfg.ws_url()),
        "edge-agent starting"
    );
    shared.write_status(&shared.link.lock().unwrap().clone());
    // Ready once the loop runs, not once the server answers: a host that boots while the server
    // is down must not fail its unit.
    crate::notify::notify(&format!("READY=1\nSTATUS=connecting to {}", cfg.ws_url()));
    tokio::spawn(crate::notify::watchdog());
    tokio::spawn(control::serve(shared.clone()));
    upgrades::resume(&shared);
    if let Some(warning) = cfg.trust.warning() {
        tracing::warn!(releases = cfg.trust.label(), "{warning}");
    }
    session::run(shared, outbox, shutdown).await
}
