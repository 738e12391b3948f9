//! A real HTTP proxy for the tests: tinyproxy (Debian's), started on an address the test gives
//! (the outside of a [`crate::netns::Netns`]), with its own configuration and log, optionally
//! with Basic authentication or allowing `CONNECT` to some ports only. The log says which
//! requests went through it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{eventually, Proc};

/// How the proxy behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Basic credentials it requires.
    pub auth: Option<(String, String)>,
    /// The only ports it tunnels to with `CONNECT` (it answers 403 to others); None: any port.
    pub connect_ports: Option<Vec<u16>>,
}

pub struct TinyProxy {
    /// Before `dir`: fields drop in order, and a failing test prints the log from it.
    proc: Option<Proc>,
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub port: u16,
}

impl TinyProxy {
    /// Starts tinyproxy on `addr:port` and waits until it accepts connections; None (the test
    /// skips) when tinyproxy is not installed, outside CI.
    pub async fn start(addr: &str, port: u16, options: Options) -> Option<TinyProxy> {
        if Command::new("tinyproxy").arg("-v").output().is_err() {
            assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "tinyproxy is missing");
            eprintln!("skipped: tinyproxy is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut conf = format!(
            "Port {port}\nListen {addr}\nTimeout 600\nMaxClients 200\nDisableViaHeader Yes\nLogLevel Info\nLogFile \"{}\"\nPidFile \"{}\"\n",
            d.join("proxy.log").display(),
            d.join("proxy.pid").display()
        );
        if let Some((user, password)) = &options.auth {
            conf += &format!("BasicAuth {user} {password}\n");
        }
        for p in options.connect_ports.iter().flatten() {
            conf += &format!("ConnectPort {p}\n");
        }
        std::fs::write(d.join("proxy.conf"), conf).unwrap();
        let mut proxy = TinyProxy { dir, addr: addr.to_string(), port, proc: None };
        proxy.start_again().await;
        Some(proxy)
    }

    /// Starts it again with the same configuration and log (after [`Self::stop`]).
    pub async fn start_again(&mut self) {
        let d = self.dir.path();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(d.join("proxy.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        self.proc = Some(Proc { child, log: d.join("proxy.log") });
        let at = format!("{}:{}", self.addr, self.port);
        eventually(Duration::from_secs(10), "tinyproxy to listen", || {
            let at = at.clone();
            async move { tokio::net::TcpStream::connect(&at).await.ok().map(|_| ()) }
        })
        .await;
    }

    /// Kills it: the connections through it drop.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.addr, self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("proxy.log")
    }

    /// The requests it received, as `METHOD target`, in order (e.g. `CONNECT 127.0.0.1:8103`,
    /// `POST http://127.0.0.1:8103/oauth2/token`).
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines()
            .filter_map(|l| l.split_once("): ").filter(|_| l.contains("Request (file descriptor")).map(|(_, r)| r))
            .map(|r| r.trim_end_matches(" HTTP/1.1").trim_end_matches(" HTTP/1.0").to_string())
            .collect()
    }

    /// How many requests whose text starts with `prefix` it received.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.starts_with(prefix)).count()
    }
}
