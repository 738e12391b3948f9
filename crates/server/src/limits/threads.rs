//! The threads that serve connections: a single-threaded runtime per core, each with a listener
//! of its own on the node's address (`SO_REUSEPORT`: the kernel spreads new connections over
//! them), on which it accepts, admits and serves its connections from their first request to
//! their close (an agent's WebSocket included), with what they start (a connection to
//! PostgreSQL a request opened is driven there). The background loops (rollouts, the policy,
//! presence, the bus's subscription) run on the main runtime. The threads live as long as the
//! node serves: they are ended after its last statuses are written.
//!
//! Why: an idle fleet's work is one wake per heartbeat. On a runtime shared by every core a wake
//! often woke another worker too, to look for work to steal; on a runtime of its own a wake is
//! served where it arrives. And a connection accepted where it is served is not handed from
//! one thread to another (README, "A reconnect storm": "Connection threads" and "Accepting on
//! each connection thread", has the figures).

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// What a thread is handed: run on it, inside its runtime.
type Job = Box<dyn FnOnce() + Send>;

/// The connection threads; dropping them ends their runtimes (and what still runs on them).
pub struct ConnThreads {
    threads: Vec<mpsc::UnboundedSender<Job>>,
}

impl ConnThreads {
    /// `n` threads (at least one), named `conn-0`, `conn-1`...
    pub fn start(n: usize) -> std::io::Result<ConnThreads> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (jobs, mut inbox) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new().name(format!("conn-{i}")).spawn(move || {
                rt.block_on(async move {
                    while let Some(job) = inbox.recv().await {
                        job();
                    }
                });
            })?;
            threads.push(jobs);
        }
        Ok(ConnThreads { threads })
    }

    /// Serves each of `listeners` with `serve` on a thread of its own (one listener a thread);
    /// resolves when every one of them has returned. A listener that cannot move to its thread
    /// is said so in the log and left out.
    pub async fn serve_each<F, Fut>(&self, listeners: Vec<std::net::TcpListener>, serve: F)
    where
        F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut done = Vec::with_capacity(listeners.len());
        for (thread, listener) in self.threads.iter().zip(listeners) {
            let (tx, rx) = oneshot::channel::<()>();
            let serve = serve.clone();
            let job: Job = Box::new(move || match TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(async move {
                        serve(listener).await;
                        let _ = tx.send(());
                    });
                }
                Err(e) => tracing::error!("cannot listen on a connection thread: {e}"),
            });
            // A thread that is gone (it cannot be, short of a panic in its loop): its listener
            // goes with it, and the others serve.
            match thread.send(job) {
                Ok(()) => done.push(rx),
                Err(_) => tracing::error!("a connection thread is gone: its listener is closed"),
            }
        }
        for rx in done {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::accept::listen;
    use std::collections::BTreeSet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    /// The thread's name, written to the connection.
    async fn says_where(mut s: TcpStream) {
        let name = std::thread::current().name().unwrap_or_default().to_string();
        let _ = s.write_all(name.as_bytes()).await;
    }

    async fn read_name(client: &mut TcpStream) -> String {
        let mut name = [0u8; 6];
        client.read_exact(&mut name).await.unwrap();
        String::from_utf8_lossy(&name).into_owned()
    }

    #[tokio::test]
    async fn each_thread_accepts_on_a_listener_of_its_own_and_new_connections_spread_over_them() {
        let threads = ConnThreads::start(2).unwrap();
        let listeners = listen("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert_eq!(listeners.len(), 2);
        assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr), "one port for all");
        let stop = CancellationToken::new();
        let clients = async {
            let mut names = BTreeSet::new();
            // The kernel picks a listener by each connection's addresses and ports: 32 all on
            // one of two would be a chance of one in two billion.
            for _ in 0..32 {
                let mut client = TcpStream::connect(addr).await.unwrap();
                names.insert(read_name(&mut client).await);
            }
            stop.cancel();
            names
        };
        let accepting = threads.serve_each(listeners, {
            let stop = stop.clone();
            move |listener| {
                let stop = stop.clone();
                async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            Ok((s, _)) = listener.accept() => {
                                tokio::spawn(says_where(s));
                            }
                        }
                    }
                }
            }
        });
        // Both loops must end for serve_each to: it resolves once every listener's loop has.
        let (names, ()) = tokio::join!(clients, accepting);
        assert_eq!(names, BTreeSet::from(["conn-0".to_string(), "conn-1".to_string()]));
    }

    #[test]
    fn an_address_listened_on_by_another_is_refused_not_shared() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = listen(taken.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        // Nor does a second node join the first's listeners (both would set SO_REUSEPORT).
        let first = listen("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let e = listen(first[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    }
}
