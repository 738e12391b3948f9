//! The accept loops of the main address, one on each connection thread with a listener of its
//! own ([`listen`], [`super::threads`]). A loop never stops on an accept error: out of file
//! descriptors (or memory), it backs off and goes on. Each connection is admitted under the caps
//! ([`Conns::admit`]), its first request head read in a small buffer ([`head`](super::head)),
//! and then served by hyper's HTTP/1 with upgrades, timed by its [`Clock`] throughout; one
//! refused gets `503` with `Retry-After` (and `/healthcheck`, if that is what it asks, the real
//! answer), within [`OVERFLOW_WINDOW`], from at most [`OVERFLOW_SLOTS`] at a time; beyond those
//! it is closed at once. The caps count over all the loops. At shutdown each loop stops
//! accepting, every connection is asked to finish its request, and the loops wait at most
//! [`DRAIN`] for them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, Response};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::clock::{Clock, Counted, RequestDone};
use super::conns::{self, Conns, Refused, Slot};
use super::head::{first_head, MAX_HEAD};
use super::{busy, Limits};
use crate::metrics::{EdgeMetrics, Limit};
use crate::proxy::Proxies;

/// Refused connections answered at once; more are closed without an answer.
pub const OVERFLOW_SLOTS: usize = 64;
/// How long a refused connection has to send its request and read the answer.
pub const OVERFLOW_WINDOW: Duration = Duration::from_secs(2);
/// How long shutdown waits for open connections.
pub const DRAIN: Duration = Duration::from_secs(10);
/// File descriptors kept for the store, files and refused connections, beyond the cap: a quarter
/// of the open-file limit, at most this many.
pub const RESERVED_FDS: u64 = 1_000;

/// What the accept loop works with.
#[derive(Clone)]
pub struct Edge {
    pub limits: Limits,
    pub conns: Arc<Conns>,
    pub proxies: Arc<Proxies>,
    pub metrics: EdgeMetrics,
    /// Places for refused connections' answers ([`OVERFLOW_SLOTS`]), shared by every listener.
    pub overflow: Arc<Semaphore>,
}

/// Connections the kernel may hold for the accept loop (it caps this at `somaxconn`): room for a
/// fleet reconnecting at once after a restart.
pub const BACKLOG: u32 = 4_096;

/// `n` listeners (at least one) on `addr`, each with a backlog of [`BACKLOG`], sharing its port
/// (`SO_REUSEPORT`, the kernel spreading new connections over them): one for each connection
/// thread. Port 0 is the same port chosen by the kernel for all. An address that another
/// process listens on is refused (`AddrInUse`) rather than shared with it, although it could
/// be had: the check binds the address alone first.
pub fn listen(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let socket = || if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
    if addr.port() != 0 {
        // Without SO_REUSEPORT this bind fails on a port that is listened on, by anyone.
        let alone = socket()?;
        alone.set_reuseaddr(true)?;
        alone.bind(addr)?;
    }
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(n.max(1));
    let mut at = addr;
    for _ in 0..n.max(1) {
        let s = socket()?;
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        s.bind(at)?;
        let listener = s.listen(BACKLOG)?;
        at = listener.local_addr()?;
        // Registered with this runtime's reactor until here; with its thread's from there on.
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Raises this process's open-file limit to its hard limit; the cap on connections that fits in
/// it (`wanted`, or less with a warning).
pub fn connection_cap(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let fits = files.saturating_sub(RESERVED_FDS.min(files / 4)).max(1);
    if (wanted as u64) <= fits {
        return wanted;
    }
    tracing::warn!(
        max_connections = wanted,
        open_file_limit = files,
        lowered_to = fits,
        "--max-connections is above what the open-file limit allows; raise the limit (LimitNOFILE=) to allow it"
    );
    fits as usize
}

/// Serves `router` on `listener` until `shutdown`, each admitted connection on this thread.
pub async fn serve(listener: TcpListener, router: Router, edge: Edge, shutdown: CancellationToken) {
    let mut backoff = Duration::ZERO;
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) => {
                edge.metrics.accept_failed();
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        open = edge.conns.open(),
                        "cannot accept a connection ({e}); backing off {backoff:?}"
                    );
                    last_warned = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let exempt = edge.proxies.trusts(peer.ip());
        match edge.conns.admit(peer, exempt) {
            Ok(slot) => {
                // A response's head and body, and back-to-back frames, go out at once: with
                // Nagle's algorithm a second small write waits for the peer's delayed
                // acknowledgement (40 ms on Linux).
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, slot, router.clone(), edge.clone(), shutdown.clone()));
            }
            Err(why) => refuse(stream, peer, why, router.clone(), &edge.overflow),
        }
    }
    // Closed before the drain: a connection arriving now is refused at once, not queued and reset.
    drop(listener);
    drain(&edge.conns).await;
}

async fn drain(conns: &Conns) {
    let start = tokio::time::Instant::now();
    while conns.open() > 0 && start.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One admitted connection, until it closes, a deadline passes, or shutdown has drained it.
async fn connection(stream: TcpStream, slot: Arc<Slot>, router: Router, edge: Edge, shutdown: CancellationToken) {
    let clock = Arc::new(Clock::new(edge.limits.header_timeout, edge.limits.idle_timeout));
    let mut io = Counted::new(stream, slot.clone(), clock.clone());
    let head = tokio::select! {
        head = first_head(&mut io) => match head {
            Ok(Some(head)) => head,
            _ => return,
        },
        limit = clock.expired() => {
            edge.metrics.hit(limit);
            return;
        }
        _ = slot.evicted.wait() => return,
        _ = shutdown.cancelled() => return,
    };
    // Boxed: the waiting above keeps a small task; hyper's connection is large.
    Box::pin(http(io.replay(head), slot, clock, router, edge, shutdown)).await
}

/// The connection served by hyper once its first head is in.
async fn http(
    io: Counted<TcpStream>,
    slot: Arc<Slot>,
    clock: Arc<Clock>,
    router: Router,
    edge: Edge,
    shutdown: CancellationToken,
) {
    let peer = slot.peer;
    let held = slot.clone();
    let on_request = clock.clone();
    let service = hyper::service::service_fn(move |req| {
        handle(req, peer, slot.clone(), on_request.request_started(), router.clone())
    });
    let conn = http1::Builder::new().max_buf_size(MAX_HEAD).serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    let served = loop {
        tokio::select! {
            served = conn.as_mut() => break served,
            limit = clock.expired() => {
                edge.metrics.hit(limit);
                return;
            }
            // It gave its place to a newcomer from another address while anonymous (an
            // authenticated connection is never asked to).
            _ = held.evicted.wait() => return,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = served {
        if e.is_parse_too_large() {
            edge.metrics.hit(Limit::HeaderSize);
        }
    }
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    slot: Arc<Slot>,
    done: RequestDone,
    router: Router,
) -> Result<Response<Tracked>, Infallible> {
    req.extensions_mut().insert(ConnectInfo(peer));
    let resp = conns::scope(slot, router.oneshot(req.map(Body::new))).await?;
    Ok(resp.map(|body| Tracked { body, _done: done }))
}

/// A response body that keeps its request counted as busy until it is sent (or dropped).
pub struct Tracked {
    body: Body,
    _done: RequestDone,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection over a cap: answered 503 (or its `/healthcheck`) if a slot is free, else closed.
fn refuse(stream: TcpStream, peer: SocketAddr, why: Refused, router: Router, overflow: &Arc<Semaphore>) {
    let Ok(permit) = overflow.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _permit = permit;
        let service = hyper::service::service_fn(move |req| overflow_answer(req, peer, why, router.clone()));
        let conn = http1::Builder::new()
            .keep_alive(false)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service);
        let _ = tokio::time::timeout(OVERFLOW_WINDOW, conn).await;
    });
}

async fn overflow_answer(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    why: Refused,
    router: Router,
) -> Result<Response<Body>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/healthcheck" {
        req.extensions_mut().insert(ConnectInfo(peer));
        return router.oneshot(req.map(Body::new)).await;
    }
    Ok(match why {
        Refused::Busy => busy("Too many connections: the server is at its limit, try again later"),
        Refused::PerAddress => {
            busy("Too many connections from your address that have not authenticated: close some, or try again later")
        }
    })
}
