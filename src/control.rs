//! `agent upgrade` on the host. With a daemon running, the command asks it over a Unix socket in
//! the state directory (`control.sock`, mode 0600) and follows its progress, then waits for the
//! restarted daemon to confirm; with none, it runs the same pipeline itself and leaves the new
//! version on trial for the next `agent run`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::{Shared, VERSION};
use crate::config::{Config, ConfigSource};
use crate::local::LocalError;
use crate::upgrade::journal::{self, Journal, State};
use crate::upgrade::{self, Outcome, Progress};

pub const SOCKET: &str = "control.sock";

fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// In the daemon: accepts `agent upgrade` requests for as long as the daemon runs.
pub async fn serve(shared: Arc<Shared>) {
    let path = socket_path(&shared.config().state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            return tracing::warn!(path = %path.display(), "no control socket, `agent upgrade` will work alone: {e}")
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(handle(shared.clone(), stream));
    }
}

/// One request: a JSON line `{"version": …, "force": …}`; answers are JSON lines: `progress`,
/// then one of `upToDate`, `installed` (the daemon restarts right after), `error`.
async fn handle(shared: Arc<Shared>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let req: Value = serde_json::from_str(&line).unwrap_or_default();
    let version = req["version"].as_str().map(str::to_owned);
    let force = req["force"].as_bool().unwrap_or(false);
    tracing::info!(version = version.as_deref().unwrap_or("latest"), force, "upgrade requested on the host");
    let mut send = async |v: Value| write.write_all(format!("{v}\n").as_bytes()).await.is_ok();
    let mut done = match upgrade::start(&shared, version, force, None) {
        Ok(done) => done,
        Err(text) => {
            send(json!({"error": text})).await;
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last = Progress::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let p = shared.upgrader.progress.borrow().clone();
                if p != last && !send(json!({"progress": {"bytes": p.bytes, "total": p.total}})).await {
                    return;
                }
                last = p;
            }
            outcome = &mut done => {
                let p = shared.upgrader.progress.borrow().clone();
                if p != last {
                    send(json!({"progress": {"bytes": p.bytes, "total": p.total}})).await;
                }
                match outcome {
                    Ok(Outcome::UpToDate) => send(json!({"upToDate": VERSION})).await,
                    Ok(Outcome::Installed(v)) => {
                        send(json!({"installed": v})).await;
                        shared.restart.cancel();
                        true
                    }
                    Ok(Outcome::Failed(text)) => send(json!({"error": text})).await,
                    Err(_) => send(json!({"error": "the upgrade task stopped"})).await,
                };
                return;
            }
        }
    }
}

/// Progress on a terminal as one updating line; elsewhere a plain line every few seconds.
struct Meter {
    tty: bool,
    started: Instant,
    last_line: Instant,
}

impl Meter {
    fn new() -> Meter {
        Meter { tty: std::io::stderr().is_terminal(), started: Instant::now(), last_line: Instant::now() }
    }

    fn show(&mut self, bytes: u64, total: Option<u64>) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = bytes as f64 / secs;
        let mib = |b: f64| b / 1048576.0;
        let (of, eta) = match total {
            Some(t) if t > 0 => {
                let eta = if rate > 0.0 { (t.saturating_sub(bytes)) as f64 / rate } else { 0.0 };
                (
                    format!(" of {:.1} MiB ({:.0}%)", mib(t as f64), 100.0 * bytes as f64 / t as f64),
                    format!(", ETA {eta:.0} s"),
                )
            }
            _ => (String::new(), String::new()),
        };
        let text = format!("downloading {:.1} MiB{of} at {:.1} MiB/s{eta}", mib(bytes as f64), mib(rate));
        if self.tty {
            let width = 30;
            let filled = total.filter(|t| *t > 0).map(|t| (width as u64 * bytes / t) as usize).unwrap_or(0).min(width);
            eprint!("\r[{}{}] {text}   ", "#".repeat(filled), "-".repeat(width - filled));
            let _ = std::io::stderr().flush();
        } else if self.last_line.elapsed() >= Duration::from_secs(2) || total == Some(bytes) {
            self.last_line = Instant::now();
            eprintln!("{text}");
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// `agent upgrade [--version V] [--force]`; the text to print on success.
pub async fn upgrade_command(
    source: &ConfigSource,
    version: Option<String>,
    force: bool,
) -> Result<String, LocalError> {
    let cfg = source.load()?;
    let daemon_running = crate::local::daemon_pid(&cfg.state_dir).is_some();
    match UnixStream::connect(socket_path(&cfg.state_dir)).await {
        Ok(stream) if daemon_running => through_daemon(&cfg, stream, version, force).await,
        _ => alone(source, cfg, version, force).await,
    }
}

async fn through_daemon(
    cfg: &Config,
    stream: UnixStream,
    version: Option<String>,
    force: bool,
) -> Result<String, LocalError> {
    let (read, mut write) = stream.into_split();
    let req = json!({"version": version, "force": force});
    write.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| LocalError::Daemon(e.to_string()))?;
    let mut lines = BufReader::new(read).lines();
    let mut meter = Meter::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(p) = v.get("progress") {
            meter.show(p["bytes"].as_u64().unwrap_or(0), p["total"].as_u64());
            continue;
        }
        meter.done();
        if let Some(text) = v["error"].as_str() {
            return Err(LocalError::Refused(text.to_string()));
        }
        if let Some(running) = v["upToDate"].as_str() {
            return Ok(format!("already up to date: running {running}\n"));
        }
        if let Some(target) = v["installed"].as_str() {
            eprintln!("installed {target}; the daemon restarts into it and confirms");
            return confirmation(cfg, target).await;
        }
    }
    Err(LocalError::Daemon("the daemon closed the connection without an answer".into()))
}

/// Waits for the restarted daemon to confirm the new version, or for its rollback.
async fn confirmation(cfg: &Config, target: &str) -> Result<String, LocalError> {
    let limit = cfg.health_window + Duration::from_secs(30);
    let start = Instant::now();
    while start.elapsed() < limit {
        if Journal::load(&cfg.state_dir).is_some_and(|j| j.state == State::Done) {
            let last = journal::history(&cfg.state_dir).into_iter().rev().find(|r| r.to == target);
            return match last {
                Some(r) if r.outcome == "ok" => {
                    Ok(format!("upgraded {} -> {target}: confirmed by the new daemon\n", r.from))
                }
                Some(r) => Err(LocalError::Refused(format!(
                    "upgrade to {target} {}: {}",
                    r.outcome.replace('_', " "),
                    r.reason.unwrap_or_default()
                ))),
                None => Err(LocalError::Refused(format!("upgrade to {target}: no result recorded"))),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LocalError::Daemon(format!("no confirmation within {} s: see `agent status`", limit.as_secs())))
}

/// No daemon: this process runs the pipeline; the next `agent run` starts the new version on trial.
async fn alone(source: &ConfigSource, cfg: Config, version: Option<String>, force: bool) -> Result<String, LocalError> {
    let (shared, _outbox) = crate::agent::prepare(source.clone(), cfg, crate::logbuf::LogBuffer::new(1))
        .map_err(|e| LocalError::Daemon(e.to_string()))?;
    let mut done = upgrade::start(&shared, version, force, None).map_err(LocalError::Refused)?;
    let mut progress = shared.upgrader.progress.subscribe();
    let mut meter = Meter::new();
    let outcome = loop {
        tokio::select! {
            Ok(()) = progress.changed() => {
                let p = progress.borrow_and_update().clone();
                meter.show(p.bytes, p.total);
            }
            outcome = &mut done => break outcome,
        }
    };
    meter.done();
    match outcome {
        Ok(Outcome::UpToDate) => Ok(format!("already up to date: {VERSION}\n")),
        Ok(Outcome::Installed(v)) => Ok(format!(
            "installed {v} (no daemon is running): the next `agent run` starts it on trial, with rollback\n"
        )),
        Ok(Outcome::Failed(text)) => Err(LocalError::Refused(text)),
        Err(_) => Err(LocalError::Refused("the upgrade task stopped".into())),
    }
}
