//! The threads that serve connections. The accept loop hands each admitted connection to one of
//! them, the one holding the fewest: a single-threaded runtime per core, which keeps the
//! connection from its first request to its close (an agent's WebSocket included), with what
//! it starts (a connection to PostgreSQL a request opened is driven there). The background loops
//! (rollouts, the policy, presence, the bus's subscription) run on the main runtime. The threads
//! live as long as the node serves: they are ended after its last statuses are written.
//!
//! Why: an idle fleet's work is one wake per heartbeat. On a runtime shared by every core a wake
//! often woke another worker too, to look for work to steal; on a runtime of its own a wake is
//! served where it arrives (README, "A reconnect storm": "Connection threads", has the figures).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a thread is handed: run on it, inside its runtime.
type Job = Box<dyn FnOnce() + Send>;

/// The connection threads; dropping them ends their runtimes (and what still runs on them).
pub struct ConnThreads {
    threads: Vec<Thread>,
}

struct Thread {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections it holds.
    load: Arc<AtomicUsize>,
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
            threads.push(Thread { jobs, load: Arc::default() });
        }
        Ok(ConnThreads { threads })
    }

    /// Serves `stream` with `serve` on the thread holding the fewest connections. `serve` is given
    /// the connection's place on that thread ([`Held`]): the connection counts there until it is
    /// dropped, so it is kept for the connection's whole life, its upgraded socket's included.
    /// A stream that cannot move (it is closed) is dropped.
    pub fn hand<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream, Held) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self.threads.iter().min_by_key(|t| t.load.load(Ordering::Relaxed)) else { return };
        // Registered with this runtime's reactor until here; with the thread's from there on.
        let Ok(stream) = stream.into_std() else { return };
        let held = Held::new(thread.load.clone());
        let job: Job = Box::new(move || match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(serve(stream, held));
            }
            Err(e) => tracing::warn!("cannot serve a connection on its thread: {e}"),
        });
        // A thread that is gone (it cannot be, short of a panic in its loop) leaves the connection
        // to this runtime rather than losing it.
        if let Err(mpsc::error::SendError(job)) = thread.jobs.send(job) {
            job();
        }
    }
}

/// A connection's place on its thread: counted there until dropped.
pub struct Held(Arc<AtomicUsize>);

impl Held {
    fn new(load: Arc<AtomicUsize>) -> Held {
        load.fetch_add(1, Ordering::Relaxed);
        Held(load)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection to `listener`, handed to `threads` with `serve`; the client's end.
    async fn handed<F, Fut>(threads: &ConnThreads, listener: &tokio::net::TcpListener, serve: F) -> TcpStream
    where
        F: FnOnce(TcpStream, Held) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        threads.hand(server_side, serve);
        client
    }

    /// The thread's name, written to the connection.
    async fn says_where(mut s: TcpStream) -> TcpStream {
        let name = std::thread::current().name().unwrap_or_default().to_string();
        let _ = s.write_all(name.as_bytes()).await;
        s
    }

    async fn read_name(client: &mut TcpStream) -> String {
        let mut name = [0u8; 6];
        client.read_exact(&mut name).await.unwrap();
        String::from_utf8_lossy(&name).into_owned()
    }

    fn loads(threads: &ConnThreads) -> Vec<usize> {
        threads.threads.iter().map(|t| t.load.load(Ordering::Relaxed)).collect()
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn each_connection_is_served_on_the_least_loaded_thread() {
        let threads = ConnThreads::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            // Each connection says where it is served, then holds until its client closes.
            let client = handed(&threads, &listener, |s, held| async move {
                let _held = held;
                let _ = says_where(s).await.read_u8().await;
            })
            .await;
            clients.push(client);
        }
        let mut names = Vec::new();
        for c in &mut clients {
            names.push(read_name(c).await);
        }
        assert_eq!(names, ["conn-0", "conn-1", "conn-0", "conn-1"]);
        assert_eq!(loads(&threads), [2, 2]);
        // A closed connection is no longer counted: the next goes where it left.
        drop(clients.remove(0));
        until("the closed connection uncounted", || loads(&threads) == [1, 2]).await;
        let mut client = handed(&threads, &listener, |s, _held| async move {
            says_where(s).await;
        })
        .await;
        assert_eq!(read_name(&mut client).await, "conn-0");
    }

    #[tokio::test]
    async fn a_connection_counts_while_its_place_is_kept_past_the_future_that_served_it() {
        // As an upgraded socket outlives the HTTP connection that upgraded it: the place goes
        // to the task that goes on with the socket.
        let threads = ConnThreads::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut first = handed(&threads, &listener, |s, held| async move {
            tokio::spawn(async move {
                let _held = held;
                let _ = says_where(s).await.read_u8().await;
            });
        })
        .await;
        assert_eq!(read_name(&mut first).await, "conn-0");
        assert_eq!(loads(&threads), [1, 0], "the upgraded connection still counts");
        let mut second = handed(&threads, &listener, |s, _held| async move {
            says_where(s).await;
        })
        .await;
        assert_eq!(read_name(&mut second).await, "conn-1");
        drop(first);
        until("both uncounted", || loads(&threads) == [0, 0]).await;
    }
}
