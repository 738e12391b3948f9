//! The deadlines of one connection, and the socket wrapper that feeds them. A connection is
//! waiting for a request head (from its start, or from the first byte after an idle spell: at
//! most `--header-timeout`), busy with requests (no deadline here: the body has its own, and an
//! agent's socket its heartbeats), or idle between requests (at most `--idle-timeout`).
//! [`Clock::expired`] resolves with the limit that ran out, and the accept loop drops the
//! connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::conns::Slot;
use crate::metrics::Limit;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for a request head to complete.
    Head,
    /// At least one request is being answered.
    Busy(usize),
    /// Kept alive between requests, nothing received yet.
    Idle,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    deadline: Option<Instant>,
}

/// One connection's deadlines.
pub struct Clock {
    header: Duration,
    idle: Duration,
    state: Mutex<State>,
    changed: Notify,
}

impl Clock {
    /// A new connection: its first request head is due within the header timeout.
    pub fn new(header: Duration, idle: Duration) -> Clock {
        let state = State { phase: Phase::Head, deadline: Some(Instant::now() + header) };
        Clock { header, idle, state: Mutex::new(state), changed: Notify::new() }
    }

    /// Bytes arrived: after an idle spell, they start a request head.
    fn on_read(&self) {
        let mut s = self.state.lock().unwrap();
        if s.phase == Phase::Idle {
            s.phase = Phase::Head;
            let due = Instant::now() + self.header;
            s.deadline = Some(s.deadline.map_or(due, |d| d.min(due)));
            self.changed.notify_one();
        }
    }

    /// A request head is in; the connection is busy until [`RequestDone`] drops.
    pub fn request_started(self: &Arc<Self>) -> RequestDone {
        let mut s = self.state.lock().unwrap();
        s.phase = match s.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        s.deadline = None;
        RequestDone(self.clone())
    }

    fn request_done(&self) {
        let mut s = self.state.lock().unwrap();
        s.phase = match s.phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => {
                s.deadline = Some(Instant::now() + self.idle);
                self.changed.notify_one();
                Phase::Idle
            }
        };
    }

    /// Resolves when a deadline passes: with the limit that ran out.
    pub async fn expired(&self) -> Limit {
        loop {
            let (deadline, phase) = {
                let s = self.state.lock().unwrap();
                (s.deadline, s.phase)
            };
            match deadline {
                Some(d) if d <= Instant::now() => {
                    return if phase == Phase::Idle { Limit::IdleTimeout } else { Limit::HeaderTimeout };
                }
                Some(d) => tokio::select! {
                    _ = tokio::time::sleep_until(d) => {}
                    _ = self.changed.notified() => {}
                },
                None => self.changed.notified().await,
            }
        }
    }
}

/// A request being answered; dropped with its response body (or with the unfinished handler).
pub struct RequestDone(Arc<Clock>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A connection's socket, counted: every read moves its clock and, while the connection is
/// anonymous and has a budget, spends it. It lives as long as the socket, inside an agent's
/// upgraded WebSocket too, and gives the connection's slot back when dropped. Bytes read ahead
/// (the first request head, `super::head`) are given back by [`Counted::replay`] first.
pub struct Counted<T> {
    io: T,
    slot: Arc<Slot>,
    clock: Arc<Clock>,
    replay: Bytes,
}

impl<T> Counted<T> {
    pub fn new(io: T, slot: Arc<Slot>, clock: Arc<Clock>) -> Counted<T> {
        Counted { io, slot, clock, replay: Bytes::new() }
    }

    /// The next reads give back `read` (already counted) before reading on.
    pub fn replay(mut self, read: Bytes) -> Counted<T> {
        self.replay = read;
        self
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            if self.replay.is_empty() {
                // The head's buffer goes once given back, not with the socket (512 bytes for each
                // idle agent).
                self.replay = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            self.clock.on_read();
            if !self.slot.spend(n) {
                let e = io::Error::new(io::ErrorKind::InvalidData, "too many bytes before authenticating");
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn head_busy_idle_and_head_again() {
        let clock = Arc::new(Clock::new(Duration::from_secs(10), Duration::from_secs(60)));
        let start = Instant::now();
        assert_eq!(clock.expired().await, Limit::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(10), "a connection that sends nothing: the header timeout");

        let done = clock.request_started();
        let waited = tokio::time::timeout(Duration::from_secs(3600), clock.expired()).await;
        assert!(waited.is_err(), "no deadline while a request is answered");
        drop(done);
        let idle = Instant::now();
        assert_eq!(clock.expired().await, Limit::IdleTimeout);
        assert_eq!(idle.elapsed(), Duration::from_secs(60));

        let done = clock.request_started();
        drop(done);
        tokio::time::sleep(Duration::from_secs(55)).await;
        clock.on_read();
        let first_byte = Instant::now();
        assert_eq!(clock.expired().await, Limit::HeaderTimeout, "a head started late keeps the idle deadline");
        assert_eq!(first_byte.elapsed(), Duration::from_secs(5));

        let done = clock.request_started();
        drop(done);
        clock.on_read();
        let first_byte = Instant::now();
        assert_eq!(clock.expired().await, Limit::HeaderTimeout);
        assert_eq!(first_byte.elapsed(), Duration::from_secs(10), "a head started early: the header timeout");
    }

    #[tokio::test]
    async fn bytes_read_ahead_are_given_back_first() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let conns = Arc::new(super::super::conns::Conns::new(4, 4, 4, 64, crate::metrics::EdgeMetrics::default()));
        let slot = conns.admit("192.0.2.1:1".parse().unwrap(), false).unwrap();
        let (mut client, server) = tokio::io::duplex(64);
        let clock = Arc::new(Clock::new(Duration::from_secs(10), Duration::from_secs(60)));
        let mut io = Counted::new(server, slot, clock).replay(Bytes::from_static(b"GET / "));
        client.write_all(b"HTTP/1.1\r\n").await.unwrap();
        let mut got = vec![0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n");
    }
}
