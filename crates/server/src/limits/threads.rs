//! The threads that serve connections. The accept loop hands each admitted connection to one of
//! them, the one holding the fewest: a single-threaded runtime per core, which keeps the
//! connection from its first request to its close (an agent's WebSocket included). The rest of
//! the server (the store's pool, the bus, the rollout and policy loops) stays on the main
//! runtime.
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

    /// Serves `stream` with `serve` on the thread holding the fewest connections. A stream that
    /// cannot move (it is closed) is dropped.
    pub fn hand<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(thread) = self.threads.iter().min_by_key(|t| t.load.load(Ordering::Relaxed)) else { return };
        // Registered with this runtime's reactor until here; with the thread's from there on.
        let Ok(stream) = stream.into_std() else { return };
        let held = Held::new(thread.load.clone());
        let job: Job = Box::new(move || match TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(async move {
                    let _held = held;
                    serve(stream).await
                });
            }
            Err(e) => tracing::warn!("cannot serve a connection on its thread: {e}"),
        });
        let _ = thread.jobs.send(job);
    }
}

/// A connection counted on its thread until dropped.
struct Held(Arc<AtomicUsize>);

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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn each_connection_is_served_on_the_least_loaded_thread() {
        let threads = ConnThreads::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server_side, _) = listener.accept().await.unwrap();
            // Each connection answers with the name of the thread it is served on, then holds.
            threads.hand(server_side, |mut s| async move {
                let name = std::thread::current().name().unwrap_or_default().to_string();
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.read_u8().await;
            });
            clients.push(client);
        }
        let mut names = Vec::new();
        for c in &mut clients {
            let mut name = [0u8; 6];
            c.read_exact(&mut name).await.unwrap();
            names.push(String::from_utf8_lossy(&name).into_owned());
        }
        assert_eq!(names, ["conn-0", "conn-1", "conn-0", "conn-1"]);
        let loads: Vec<usize> = threads.threads.iter().map(|t| t.load.load(Ordering::Relaxed)).collect();
        assert_eq!(loads, [2, 2]);
        // A closed connection is no longer counted: the next goes where it left.
        drop(clients.remove(0));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads.threads[0].load.load(Ordering::Relaxed) != 1 {
            assert!(std::time::Instant::now() < deadline, "the closed connection is still counted");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        threads.hand(server_side, |mut s| async move {
            let name = std::thread::current().name().unwrap_or_default().to_string();
            let _ = s.write_all(name.as_bytes()).await;
        });
        let mut name = String::new();
        client.read_to_string(&mut name).await.unwrap();
        assert_eq!(name, "conn-0");
    }
}
