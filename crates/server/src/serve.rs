//! The server put together: the store, the bus, the hub, the identities, the fleet and the HTTP
//! surfaces (each group brings its own routes and state), the limits around them, the background
//! loops, and the listeners, until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edge_agent_base::build_info::version_str;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::app::AppState;
use crate::config::ServerConfig;
use crate::conn::bus::{self, Bus};
use crate::conn::hub::Hub;
use crate::conn::outages::Outages;
use crate::conn::revocations::Revocations;
use crate::conn::socket::{self, Sockets};
use crate::conn::{presence, sweep};
use crate::fleet::policy::engine::{Policies, Selectors};
use crate::fleet::results::Results;
use crate::fleet::rollout::engine::Rollouts;
use crate::identity::oauth;
use crate::identity::sessions::Sessions;
use crate::identity::tokens::Tokens;
use crate::limits::accept::{self, Edge};
use crate::limits::body::BodyLimits;
use crate::limits::conns::Conns;
use crate::limits::threads::ConnThreads;
use crate::limits::throttle::Throttle;
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
    #[error("cannot listen on {addr}: {source}: free the address (another server on that port?) or give another with --listen")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start {threads} connection threads ({source}): give fewer with --connection-threads")]
    Threads { threads: usize, source: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// `/healthcheck`: this node is up, its version, its id on the bus and its live agents.
async fn healthcheck(State(app): State<AppState>) -> Response {
    let agents = app.hub.local_agents();
    axum::Json(serde_json::json!({"ok": true, "version": version_str(), "node": app.node, "agents": agents}))
        .into_response()
}

/// Every answer is `nosniff`; one that says nothing about caching (the API's) is `no-store`.
async fn no_sniff_no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A request carries one `Host`, naming a host (RFC 9112 §3.2: else a 400); HTTP/1.0 may carry
/// none. Two were taken (the first won), and none or a malformed one made the links answered
/// name the address the server was told to listen on (`127.0.0.1:0`) or echo the malformed one.
async fn one_host(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut hosts = req.headers().get_all(axum::http::header::HOST).iter();
    let named = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().is_ok_and(names_a_host),
        (None, _) => req.version() < axum::http::Version::HTTP_11,
        _ => false,
    };
    if !named {
        return api::outcome::bad_request("A request must carry one Host header naming the server (RFC 9112 §3.2)")
            .into_response();
    }
    next.run(req).await
}

/// `host[:port]`, as a `Host` header gives it: no user part, nothing else.
fn names_a_host(host: &str) -> bool {
    !host.contains('@') && host.parse::<axum::http::uri::Authority>().is_ok_and(|a| a.as_str() == host)
}

/// A query string that is not UTF-8 once decoded (`%ff`) is refused: read as text it would be
/// searched as U+FFFD, a value the caller never sent.
async fn utf8_query(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match req.uri().query() {
        Some(q) if !decodes_to_utf8(q) => api::outcome::bad_request(
            "The query string is not UTF-8 once its %-escapes are decoded: escape each character's UTF-8 bytes",
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Whether `query`'s `%XX` escapes decode to UTF-8 (an escape that is not one stays as written).
fn decodes_to_utf8(query: &str) -> bool {
    // A URI is ASCII: without an escape there is nothing to decode (most queries, no allocation).
    if !query.contains('%') {
        return true;
    }
    let b = query.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Every route of the main listener, each group with its own state.
pub fn router(app: AppState, sockets: Sockets) -> Router {
    let metrics = app.metrics.clone();
    let releases = app.config.releases.clone();
    let token_endpoint = oauth::TokenEndpoint {
        tokens: app.tokens.clone(),
        throttle: app.throttle.clone(),
        proxies: Arc::new(app.config.proxies.clone()),
    };
    let body_limits = BodyLimits { timeout: app.config.limits.body_timeout, metrics: metrics.edge.clone() };
    let surfaces = api::routes()
        .merge(operator::page::routes())
        .route("/metrics", get(operator::metrics::with_token))
        .route("/healthcheck", get(healthcheck))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), api::rules::guard))
        .with_state(app);
    let router = Router::new()
        .route("/oauth2/token", post(oauth::token))
        .with_state(token_endpoint)
        .merge(socket::routes(sockets))
        .merge(surfaces)
        .fallback(|| async { api::outcome::not_found().into_response() })
        .layer(axum::middleware::from_fn_with_state(body_limits, crate::limits::body::deadline))
        .layer(axum::middleware::from_fn(utf8_query))
        .layer(axum::middleware::from_fn(one_host))
        .layer(axum::middleware::map_response(api::outcome::plain_errors_as_outcomes))
        .layer(axum::middleware::map_response(no_sniff_no_store))
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track));
    match releases {
        Some(dir) => router.nest("/releases", releases::router(dir)),
        None => router,
    }
}

/// Opens the store, binds the listeners (one a connection thread) and serves until `shutdown`.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    let listeners = accept::listen(config.listen, config.connection_threads)
        .map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    serve(listeners, config, shutdown).await
}

pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
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
    if config.audit_off {
        tracing::warn!("audit events are not recorded (--no-audit-for-benchmark)");
        store::audit::turn_off_for_benchmark();
    }
    let keep = config.audit_retention;
    tokio::spawn(crate::fleet::retention::prune(store.clone(), node.clone(), keep, shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    let l = &config.limits;
    let tokens = Arc::new(Tokens::new(config.token_ttl, l.max_tokens_per_client, store.clone(), metrics.edge.clone()));
    let revocations = Arc::new(Revocations::new(store.clone(), tokens.clone(), hub.clone()));
    tokio::spawn(revocations.clone().follow(shutdown.clone()));
    let selectors = Selectors { new: api::policy::parse_selector, stored: api::policy::read_stored_selector };
    let clock = (config.policy_clock, config.policy_every);
    let policy = Policies::new(store.clone(), hub.clone(), rollouts.clone(), clock, selectors, metrics.clone());
    tokio::spawn(policy.clone().run(shutdown.clone()));
    if let Some(mut inbound) = inbound {
        let (to, revoker) = (hub.clone(), revocations.clone());
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                if let bus::Inbound::Revoke { revocation } = &msg {
                    revoker.apply(revocation);
                    continue;
                }
                let hub = to.clone();
                tokio::spawn(async move { hub.inbound(msg).await });
            }
        });
    }
    tokio::spawn(presence::redeliver(hub.clone(), shutdown.clone()));
    tokio::spawn(presence::keep(hub.clone(), config.presence_ttl / 3, reconnected, shutdown.clone()));
    tokio::spawn(sweep::run(
        hub.clone(),
        store.clone(),
        node.clone(),
        config.presence_ttl,
        metrics.clone(),
        shutdown.clone(),
    ));
    let max_open = accept::connection_cap(l.max_connections);
    let conns = Arc::new(Conns::new(
        max_open,
        l.max_anonymous_per_ip,
        l.max_anonymous_sockets,
        l.max_connections_per_client,
        metrics.edge.clone(),
    ));
    let throttle = Arc::new(Throttle::new(l.auth_rate_per_ip, l.issue_rate_per_client, metrics.edge.clone()));
    let admin_audits = Arc::new(socket::AuditBatch::default());
    let audit_writer = tokio::spawn(admin_audits.clone().run(store.clone(), shutdown.clone()));
    let (last_audits, audit_store) = (admin_audits.clone(), store.clone());
    let sockets = Sockets {
        admin_audits,
        tokens: tokens.clone(),
        store: store.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        conns: conns.clone(),
        proxies: Arc::new(config.proxies.clone()),
        heartbeat_interval: config.heartbeat_interval,
        handshake_timeout: l.handshake_timeout,
        max_anonymous_frame: l.max_anonymous_frame,
        max_message_bytes: config.max_message_bytes,
        message_rate: l.agent_message_rate,
        quiet: Arc::new(crate::quiet::Quiet::new(std::time::Duration::from_secs(1))),
        // As many admin and agent pairs as a node holds sockets: past them, each is audited.
        admin_sockets: Arc::new(crate::quiet::Quiet::remembering(
            std::time::Duration::from_secs(3600),
            config.limits.max_connections,
        )),
        noise: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let edge = Edge {
        limits: config.limits.clone(),
        conns,
        proxies: Arc::new(config.proxies.clone()),
        metrics: metrics.edge.clone(),
        overflow: Arc::new(tokio::sync::Semaphore::new(accept::OVERFLOW_SLOTS)),
    };
    let app = AppState {
        results: Arc::new(Results::new(store.clone(), hub.clone(), metrics.clone())),
        hub,
        rollouts,
        policy,
        tokens,
        revocations,
        throttle,
        sessions: Arc::new(Sessions::new(config.session_ttl, store.clone())),
        metrics,
        node: node.clone(),
        config: Arc::new(config),
        store,
        shutdown: shutdown.clone(),
    };
    // Before the port is announced: a node that cannot start them says so instead.
    let n = app.config.connection_threads;
    let threads = ConnThreads::start(n).map_err(|source| ServerError::Threads { threads: n, source })?;
    let addr = listeners.first().map_or(Ok(app.config.listen), |l| l.local_addr())?;
    let where_ = match &app.config.store {
        StoreConfig::Sqlite(dir) => dir.display().to_string(),
        StoreConfig::Postgres(url) => edge_agent_base::secret::redact_url(url),
    };
    let redis = app.config.redis.as_deref().map(edge_agent_base::secret::redact_url).unwrap_or_else(|| "none".into());
    tracing::info!(
        version = version_str(),
        %addr,
        data = where_,
        redis,
        node,
        max_connections = edge.conns.max_open(),
        connection_threads = app.config.connection_threads,
        "agent-server listening"
    );
    // Printed on stdout so that scripts and tests can find a port chosen by the kernel.
    println!("listening on {addr}");
    if let Some(listen) = app.config.metrics_listen {
        serve_metrics(listen, app.clone()).await?;
    }
    let statuses = app.hub.clone();
    let router = router(app, sockets);
    let stop = shutdown.clone();
    threads
        .serve_each(listeners, move |listener| accept::serve(listener, router.clone(), edge.clone(), shutdown.clone()))
        .await;
    // The accept loops end when asked to; without that, every one of them failed (a thread gone):
    // the node stops and says so rather than exiting as if asked.
    let unasked = !stop.is_cancelled();
    if unasked {
        stop.cancel();
    }
    // The statuses of the agents that left as the node stopped, written before it exits. The
    // connection threads run until then: tasks the connections started run there (the status
    // writer, if a socket started it; the drivers of store connections opened by requests).
    if let Err(e) = statuses.flush_statuses(std::time::Duration::from_secs(2)).await {
        tracing::warn!("cannot save the agents' last statuses at shutdown: {e}");
    }
    // The audit events of admins' sockets: the batch being written, then any pushed as the
    // sockets closed.
    let audits = async {
        let _ = audit_writer.await;
        last_audits.flush(&*audit_store).await;
    };
    if tokio::time::timeout(std::time::Duration::from_secs(2), audits).await.is_err() {
        tracing::warn!(
            "the audit events of admins' agent sockets were not written within 2 s of the shutdown: the last of them may be lost"
        );
    }
    drop(threads);
    if unasked {
        return Err(ServerError::Io(std::io::Error::other(
            "every connection thread stopped accepting connections: the log above says why; start the server again",
        )));
    }
    Ok(())
}

/// Serves `/metrics` without a token, and `/healthcheck`, on their own address until shutdown: a
/// private address that answers while the main listener's caps bite.
async fn serve_metrics(listen: SocketAddr, app: AppState) -> Result<(), ServerError> {
    let listener = TcpListener::bind(listen).await.map_err(|source| ServerError::Listen { addr: listen, source })?;
    let addr = listener.local_addr()?;
    // On stderr only: stdout's one line, `listening on ADDR`, is what scripts read.
    tracing::info!(%addr, "metrics listening");
    let shutdown = app.shutdown.clone();
    let router = Router::new()
        .route("/metrics", get(operator::metrics::open))
        .route("/healthcheck", get(healthcheck))
        .with_state(app);
    tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true); // see limits::accept
        });
        let served = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = served.await {
            tracing::error!("metrics listener failed: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::decodes_to_utf8;

    #[test]
    fn a_query_decodes_to_utf8_or_is_refused() {
        for good in ["", "name=clinic", "name=%C3%A9cole", "name=%e2%82%ac", "a=100%", "a=%zz", "a=%", "a=%4"] {
            assert!(decodes_to_utf8(good), "{good}");
        }
        for bad in ["name=%ff", "name=%C3", "name=%C3%28", "a=x%80"] {
            assert!(!decodes_to_utf8(bad), "{bad}");
        }
    }
}
