//! The control server: OAuth client credentials ([`auth`]), the agents' WebSocket ([`ws`]), their
//! live connections and replies ([`hub`]), FHIR REST for `Agent` ([`fhir`] routes, [`search`],
//! [`ops`] for status and upgrade, [`relay`] for the requests relayed to agents), rollouts
//! ([`rollout`]), what outlives a connection in the [`store`] (SQLite, or PostgreSQL shared by
//! several nodes), and what nodes tell each other on the [`bus`] (in-process, or Redis); a
//! [`lease`] lets one node at a time drive shared work. The operator's web page ([`web`]) signs in
//! through [`session`] and reads the upgrade history kept by [`results`]; [`metrics`] serves
//! `/metrics`; [`releases`] serves a release directory. [`serve`] runs it on a bound listener until shutdown.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod fhir;
pub mod hub;
pub mod lease;
pub mod metrics;
pub mod ops;
pub mod outcome;
pub mod params;
pub mod relay;
pub mod releases;
pub mod results;
pub mod rollout;
pub mod search;
pub mod session;
pub mod store;
pub mod web;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use bus::Bus;
use hub::Hub;
use store::{Store, StoreConfig};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the data lives: SQLite in a directory (the default), or PostgreSQL.
    pub store: StoreConfig,
    /// Redis, joining this node to the others that share it and the store.
    pub redis: Option<String>,
    /// How long an agent stays "connected" when the node holding its socket stops renewing it.
    pub presence_ttl: Duration,
    pub token_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub max_message_bytes: usize,
    /// A release directory served at `/releases/`, if any.
    pub releases: Option<PathBuf>,
    /// A second address that serves `/metrics` without a token, for a scraper on a private network.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a web page session lasts after sign-in.
    pub session_ttl: Duration,
    /// The public base URL (ending in `/`) for absolute links; else from each request's headers.
    pub base_url: Option<String>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub tokens: Arc<auth::Tokens>,
    pub sessions: Arc<session::Sessions>,
    pub results: Arc<results::Results>,
    pub metrics: Arc<metrics::Metrics>,
    pub rollouts: Arc<rollout::Rollouts>,
    /// This node's id on the bus (random at each start), shown by `/healthcheck`.
    pub node: String,
    pub shutdown: CancellationToken,
}

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

pub fn router(app: AppState) -> Router {
    let releases = app.config.releases.clone();
    let router = Router::new()
        .route("/oauth2/token", post(auth::token))
        .route("/ws/agent", get(ws::upgrade))
        .route(
            "/healthcheck",
            get(|State(app): State<AppState>| async move {
                let agents = app.hub.local_agents();
                axum::Json(serde_json::json!({"ok": true, "version": edge_agent_base::build_info::VERSION, "node": app.node, "agents": agents}))
            }),
        )
        .route("/fhir/R4/Agent", get(fhir::search).post(fhir::create))
        .route("/fhir/R4/Agent/{id}", get(fhir::read).post(fhir::post_type_op))
        .route("/fhir/R4/Agent/{id}/{op}", get(fhir::instance_op).post(fhir::post_instance_op))
        .route("/fhir/R4/Rollout", get(rollout::api::list))
        .route("/fhir/R4/Rollout/{id}", get(rollout::api::show))
        .route("/fhir/R4/Rollout/{id}/{op}", post(rollout::api::act))
        .route("/metrics", get(metrics::with_token))
        .merge(web::routes())
        .fallback(|| async { outcome::not_found().into_response() })
        .layer(axum::middleware::map_response(outcome::plain_errors_as_outcomes))
        .layer(axum::middleware::from_fn_with_state(app.clone(), metrics::track))
        .with_state(app);
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
    let hub = Arc::new(Hub::new(store.clone(), bus));
    let rollouts = rollout::Rollouts::new(store.clone(), hub.clone(), &node);
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
        // Only with other nodes: a request that lost its socket here may find the agent there.
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(hub::REDELIVERY_PERIOD);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while tokio::select! { _ = every.tick() => true, _ = shutdown.cancelled() => false } {
                hub.redeliver().await;
            }
        });
    }
    tokio::spawn(refresh_loop(hub.clone(), config.presence_ttl / 3, reconnected, shutdown.clone()));
    let app = AppState {
        hub,
        rollouts,
        tokens: Arc::new(auth::Tokens::new(config.token_ttl, store.clone())),
        sessions: Arc::new(session::Sessions::new(config.session_ttl, store.clone())),
        results: Arc::new(results::Results::new(store.clone())),
        metrics: Arc::new(metrics::Metrics::new()),
        node: node.clone(),
        config: Arc::new(config),
        store,
        shutdown: shutdown.clone(),
    };
    let addr = listener.local_addr()?;
    let where_ = match &app.config.store {
        StoreConfig::Sqlite(dir) => dir.display().to_string(),
        StoreConfig::Postgres(url) => store::postgres::redact(url),
    };
    let redis = app.config.redis.as_deref().map(bus::redis::redact).unwrap_or_else(|| "none".into());
    tracing::info!(version = edge_agent_base::build_info::VERSION, %addr, data = where_, redis, node, "agent-server listening");
    // Printed on stdout so that scripts and tests can find a port chosen by the kernel.
    println!("listening on {addr}");
    if let Some(listen) = app.config.metrics_listen {
        serve_metrics(listen, app.clone()).await?;
    }
    let service = router(app).into_make_service();
    axum::serve(listener, service).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}

/// Renews this node's records on the bus every `period`, and at once after Redis came back.
async fn refresh_loop(
    hub: Arc<Hub>,
    period: Duration,
    reconnected: Option<Arc<tokio::sync::Notify>>,
    shutdown: CancellationToken,
) {
    let reconnected = reconnected.unwrap_or_default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = reconnected.notified() => {
                // Give the connection a moment to come back before renewing.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        hub.refresh().await;
    }
}

/// Serves `/metrics` without a token on its own address, until shutdown.
async fn serve_metrics(listen: SocketAddr, app: AppState) -> Result<(), ServerError> {
    let listener = TcpListener::bind(listen).await.map_err(|source| ServerError::Listen { addr: listen, source })?;
    let addr = listener.local_addr()?;
    // On stderr only: stdout's one line, `listening on ADDR`, is what scripts read.
    tracing::info!(%addr, "metrics listening");
    let shutdown = app.shutdown.clone();
    let router = Router::new().route("/metrics", get(metrics::open)).with_state(app);
    tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = served.await {
            tracing::error!("metrics listener failed: {e}");
        }
    });
    Ok(())
}
