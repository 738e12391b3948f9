//! What the tests of the server's limits attack with and watch: raw TCP connections from loopback
//! addresses of their own (127.0.0.2 and up: a server caps what one address may hold), a
//! WebSocket opened by hand, and a [`Watch`] that, for the length of an attack, asks
//! `/healthcheck` on a fresh connection every 50 ms and samples the server's resident memory from
//! `/proc/<pid>/status`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Resident memory of a process, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `i`-th loopback source address (127.0.0.2 to 127.0.0.201).
pub fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8)
}

/// A TCP connection to `addr` from the source address `from`, with a small send buffer (64 KiB,
/// so that what it could write tells what the server read).
pub async fn connect_from(addr: SocketAddr, from: impl Into<IpAddr>) -> std::io::Result<TcpStream> {
    let from = from.into();
    let socket = if from.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_send_buffer_size(64 * 1024)?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// IPv6 addresses on the loopback interface (`ip -6 addr add … dev lo nodad`: needs root) while
/// it lives, as sources of one network's many /64s; removed when dropped.
pub struct LoopbackV6(Vec<Ipv6Addr>);

impl LoopbackV6 {
    pub fn add(addrs: &[Ipv6Addr]) -> LoopbackV6 {
        for a in addrs {
            let out = std::process::Command::new("ip")
                .args(["-6", "addr", "replace", &format!("{a}/128"), "dev", "lo", "nodad"])
                .output()
                .expect("ip");
            assert!(out.status.success(), "ip -6 addr add {a}: {}", String::from_utf8_lossy(&out.stderr));
        }
        LoopbackV6(addrs.to_vec())
    }
}

impl Drop for LoopbackV6 {
    fn drop(&mut self) {
        for a in &self.0 {
            let _ =
                std::process::Command::new("ip").args(["-6", "addr", "del", &format!("{a}/128"), "dev", "lo"]).output();
        }
    }
}

/// Reads until the end of a response head (or EOF, or `limit`): the head's text, None if nothing
/// came.
pub async fn read_head(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    (!buf.is_empty()).then(|| String::from_utf8_lossy(&buf).into_owned())
}

/// Whether the server closed the connection (EOF or reset) within `limit`, reading whatever it
/// sends before.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A WebSocket to `/ws/agent` opened by hand from `from`: the connection once the server
/// answered 101, or the head of its other answer.
pub async fn open_agent_socket(addr: SocketAddr, from: impl Into<IpAddr>) -> Result<TcpStream, String> {
    let mut s = connect_from(addr, from).await.map_err(|e| e.to_string())?;
    let hello = format!(
        "GET /ws/agent HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(hello.as_bytes()).await.map_err(|e| e.to_string())?;
    match read_head(&mut s, Duration::from_secs(10)).await {
        Some(head) if head.starts_with("HTTP/1.1 101") => Ok(s),
        other => Err(other.unwrap_or_else(|| "no answer".into())),
    }
}

/// The head of a masked client text frame of `len` bytes (its payload follows).
pub fn frame_head(len: u64) -> Vec<u8> {
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    head
}

/// What a [`Watch`] saw.
#[derive(Debug)]
pub struct Report {
    pub checks: usize,
    pub failures: Vec<String>,
    pub slowest: Duration,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
}

impl Report {
    /// `/healthcheck` answered every time, each within a second, and resident memory grew by
    /// less than `max_growth_mib`.
    pub fn assert_healthy(&self, max_growth_mib: u64) {
        assert!(self.checks >= 3, "too few health checks to tell: {self:?}");
        assert!(self.failures.is_empty(), "/healthcheck failed during the attack: {self:?}");
        assert!(self.slowest < Duration::from_secs(1), "/healthcheck was slow during the attack: {self:?}");
        let growth = self.rss_peak_kib.saturating_sub(self.rss_start_kib) / 1024;
        assert!(growth < max_growth_mib, "resident memory grew by {growth} MiB (limit {max_growth_mib}): {self:?}");
    }
}

/// `/healthcheck` asked and resident memory sampled, until [`Watch::finish`].
pub struct Watch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Report>,
}

impl Watch {
    /// Watches the server at `addr` (process `pid`); its checks come from `from`, an address the
    /// attack does not use.
    pub fn start(addr: SocketAddr, pid: i32, from: Ipv4Addr) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let until = stop.clone();
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(from))
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let task = tokio::spawn(async move {
            let start = rss_kib(pid);
            let mut r = Report {
                checks: 0,
                failures: vec![],
                slowest: Duration::ZERO,
                rss_start_kib: start,
                rss_peak_kib: start,
            };
            // At least three checks, however short the attack.
            while !until.load(Ordering::Relaxed) || r.checks < 3 {
                let asked = Instant::now();
                match http.get(format!("http://{addr}/healthcheck")).send().await {
                    Ok(resp) if resp.status() == 200 => {}
                    Ok(resp) => r.failures.push(format!("status {}", resp.status())),
                    Err(e) => r.failures.push(e.to_string()),
                }
                r.checks += 1;
                r.slowest = r.slowest.max(asked.elapsed());
                r.rss_peak_kib = r.rss_peak_kib.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r
        });
        Watch { stop, task }
    }

    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the watch does not panic")
    }
}

/// The value of the sample `series` (`name{labels}`, exactly as exposed) in a Prometheus text
/// exposition; 0 when absent.
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == series).and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

/// A limit's hits as `/metrics` counts them.
pub fn hits(exposition: &str, limit: &str) -> f64 {
    sample(exposition, &format!("agent_server_limit_hits_total{{limit=\"{limit}\"}}"))
}
