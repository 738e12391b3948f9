//! The server put together: the store, the bus, the hub, the identities, the fleet and the HTTP
//! surfaces (each group brings its own routes and state), the background loops, and the listeners,
//! until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use edge_agent_base::build_info::VERSION;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::app::AppState;
use crate::config::ServerConfig;
use crate::conn::bus::{self, Bus};
use crate::conn::hub::Hub;
use crate::conn::outages::Outages;
use crate::conn::presence;
use crate::conn::socket::{self, Sockets};
use crate::fleet::results::Results;
use crate::fleet::rollout::engine::Rollouts;
use crate::identity::oauth;
use crate::identity::sessions::Sessions;
use crate::identity::tokens::Tokens;
use crate::metrics::{self, Metrics};
use crate::operator;
use crate::store::{self, StoreConfig};
use crate::{api, releases};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Every route of the main listener, each group with its own state.
pub fn router(app: AppState, sockets: Sockets) -> Router {
    let metrics = app.metrics.clone();
    let releases = app.config.releases.clone();
    let tokens = app.tokens.clone();
    let surfaces = api::routes()
        .merge(operator::page::routes())
        .route("/metrics", get(operator::metrics::with_token))
        .route(
            "/healthcheck",
            get(|State(app): State<AppState>| async move {
                let agents = app.hub.local_agents();
                axum::Json(serde_json::json!({"ok": true, "version": VERSION, "node": app.node, "agents": agents}))
            }),
        )
        .with_state(app);
    let router = Router::new()
        .route("/oauth2/token", post(oauth::token))
        .with_state(tokens)
        .merge(socket::routes(sockets))
        .merge(surfaces)
        .fallback(|| async { api::outcome::not_found().into_response() })
        .layer(axum::middleware::map_response(api::outcome::plain_errors_as_outcomes))
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track));
    match releases {
        Some(dir) => router.nest("/releases", releases::router(dir)),
        None => router,
    }
}

/// Opens the store, binds the listener and serves until `shutdown`.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    serve(listener, config, shutdown).await
}

pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let store = store::open(&config.store).await?;
    let node = edge_agent_base::id::random_hex(8);
    let (bus, inbound, reconnected): (Arc<dyn Bus>, _, _) = match &config.redis {
        Some(url) => {
            let (bus, inbound) = bus::redis::RedisBus::connect(url, &node, config.presence_ttl).await?;
            let reconnected = bus.reconnected.clone();
            (Arc::new(bus), Some(inbound), Some(reconnected))
        }
        None => (Arc::new(bus::local::LocalBus), None, None),
    };
    let hub = Arc::new(Hub::new(store.clone(), bus, Arc::new(Outages::default())));
    let rollouts = Rollouts::new(store.clone(), hub.clone(), &node);
    hub.set_orphan_replies(rollouts.clone());
    tokio::spawn(rollouts.clone().run(shutdown.clone()));
    if let Some(mut inbound) = inbound {
        let to = hub.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                let hub = to.clone();
                tokio::spawn(async move { hub.inbound(msg).await });
            }
        });
    }
    tokio::spawn(presence::redeliver(hub.clone(), shutdown.clone()));
    tokio::spawn(presence::keep(hub.clone(), config.presence_ttl / 3, reconnected, shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    let tokens = Arc::new(Tokens::new(config.token_ttl, store.clone()));
    let sockets = Sockets {
        tokens: tokens.clone(),
        store: store.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        heartbeat_interval: config.heartbeat_interval,
        max_message_bytes: config.max_message_bytes,
        shutdown: shutdown.clone(),
    };
    let app = AppState {
        results: Arc::new(Results::new(store.clone(), hub.clone(), metrics.clone())),
        hub,
        rollouts,
        tokens,
        sessions: Arc::new(Sessions::new(config.session_ttl, store.clone())),
        metrics,
        node: node.clone(),
        config: Arc::new(config),
        store,
        shutdown: shutdown.clone(),
    };
    let addr = listener.local_addr()?;
    let where_ = match &app.config.store {
        StoreConfig::Sqlite(dir) => dir.display().to_string(),
        StoreConfig::Postgres(url) => edge_agent_base::secret::redact_url(url),
    };
    let redis = app.config.redis.as_deref().map(edge_agent_base::secret::redact_url).unwrap_or_else(|| "none".into());
    tracing::info!(version = VERSION, %addr, data = where_, redis, node, "agent-server listening");
    // Printed on stdout so that scripts and tests can find a port chosen by the kernel.
    println!("listening on {addr}");
    if let Some(listen) = app.config.metrics_listen {
        serve_metrics(listen, app.clone()).await?;
    }
    let service = router(app, sockets).into_make_service();
    axum::serve(listener, service).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}

/// Serves `/metrics` without a token on its own address, until shutdown.
async fn serve_metrics(listen: SocketAddr, app: AppState) -> Result<(), ServerError> {
    let listener = TcpListener::bind(listen).await.map_err(|source| ServerError::Listen { addr: listen, source })?;
    let addr = listener.local_addr()?;
    // On stderr only: stdout's one line, `listening on ADDR`, is what scripts read.
    tracing::info!(%addr, "metrics listening");
    let shutdown = app.shutdown.clone();
    let router = Router::new().route("/metrics", get(operator::metrics::open)).with_state(app);
    tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = served.await {
            tracing::error!("metrics listener failed: {e}");
        }
    });
    Ok(())
}
