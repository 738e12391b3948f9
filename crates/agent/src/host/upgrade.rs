//! `agent upgrade` on the host, from the release source or (`--from-file`) an offline bundle.
//! With a daemon running, the command asks it over its control socket
//! ([`crate::daemon::control`]), sending the bundle along, and follows its progress, then waits
//! for the restarted daemon to confirm; with none, it runs the same pipeline itself and leaves
//! the new version on trial for the next `agent run`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent_base::build_info::version_str;
use edge_agent_wire::Target;
use semver::Version;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{daemon_pid, HostError};
use crate::config::{Config, ConfigSource};
use crate::control::{Said, UpgradeAsk};
use crate::platform::{control_connect, ControlStream};
use crate::state_dir::StateDir;
use crate::upgrade::context::Context;
use crate::upgrade::journal::State;
use crate::upgrade::pipeline::Origin;
use crate::upgrade::runner::{Outcome, Runner};
use crate::upgrade::store::{Outcome as Recorded, Store};

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

/// `agent upgrade [--version V] [--force] [--from-file FILE]`; the text to print on success.
pub async fn upgrade_command(
    source: &ConfigSource,
    version: Option<Version>,
    force: bool,
    from_file: Option<PathBuf>,
) -> Result<String, HostError> {
    let cfg = source.load()?;
    let state = StateDir::new(&cfg.state_dir);
    let (version, origin) = match from_file {
        None => (version, Origin::ReleaseSource),
        Some(file) => {
            let bundled = crate::upgrade::bundle::version_of(&file)?;
            if let Some(v) = version.filter(|v| v != &bundled) {
                let file = file.display();
                return Err(HostError::Refused(format!("the bundle {file} holds version {bundled}, not {v}")));
            }
            (Some(bundled), Origin::Bundle(file))
        }
    };
    let daemon_running = daemon_pid(&state).is_some();
    match control_connect(&state.control_socket()).await {
        Ok(stream) if daemon_running => through_daemon(&cfg, stream, version, force, &origin).await,
        _ => alone(cfg, version, force, origin).await,
    }
}

async fn through_daemon(
    cfg: &Config,
    stream: ControlStream,
    version: Option<Version>,
    force: bool,
    origin: &Origin,
) -> Result<String, HostError> {
    let (read, mut write) = tokio::io::split(stream);
    let daemon_error = |e: std::io::Error| HostError::Daemon(e.to_string());
    let bundle = match origin {
        Origin::Bundle(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|e| bundle_error(path, e))?;
            let size = file.metadata().await.map_err(|e| bundle_error(path, e))?.len();
            Some((file, size))
        }
        Origin::ReleaseSource => None,
    };
    let ask = UpgradeAsk { version, force, bundle: bundle.as_ref().map(|b| b.1) };
    let ask = serde_json::to_string(&ask).expect("the request serializes") + "\n";
    write.write_all(ask.as_bytes()).await.map_err(daemon_error)?;
    if let Some((mut file, _)) = bundle {
        tokio::io::copy(&mut file, &mut write).await.map_err(daemon_error)?;
    }
    let mut lines = BufReader::new(read).lines();
    let mut meter = Meter::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(said) = serde_json::from_str::<Said>(&line) else { continue };
        if let Said::Progress { bytes, total } = said {
            meter.show(bytes, total);
            continue;
        }
        meter.done();
        match said {
            Said::Error(text) => return Err(HostError::Refused(text)),
            Said::UpToDate(running) => return Ok(format!("already up to date: running {running}\n")),
            Said::Installed(target) => {
                eprintln!("installed {target}; the daemon restarts into it and confirms");
                return confirmation(cfg, &target).await;
            }
            Said::Progress { .. } => {}
        }
    }
    Err(HostError::Daemon("the daemon closed the connection without an answer".into()))
}

fn bundle_error(path: &std::path::Path, e: std::io::Error) -> HostError {
    HostError::Refused(format!("cannot read the bundle {}: {e}", path.display()))
}

/// Waits for the restarted daemon to confirm the new version, or for its rollback.
async fn confirmation(cfg: &Config, target: &Version) -> Result<String, HostError> {
    let limit = cfg.health_window + Duration::from_secs(30);
    let start = Instant::now();
    let store = Store::new(StateDir::new(&cfg.state_dir));
    while start.elapsed() < limit {
        let (journal, history) = store.snapshot()?;
        if journal.state == State::Done {
            let last = history.into_iter().rev().find(|r| r.to.version() == Some(target));
            return match last {
                Some(r) if r.outcome == Recorded::Ok => {
                    let from = r.from.map_or_else(|| "unknown".to_string(), |v| v.to_string());
                    Ok(format!("upgraded {from} -> {target}: confirmed by the new daemon\n"))
                }
                Some(r) => Err(HostError::Refused(format!(
                    "upgrade to {target} {}: {}",
                    if r.outcome == Recorded::RolledBack { "rolled back" } else { "failed" },
                    r.reason.unwrap_or_default()
                ))),
                None => Err(HostError::Refused(format!("upgrade to {target}: no result recorded"))),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(HostError::Daemon(format!("no confirmation within {} s: see `agent status`", limit.as_secs())))
}

/// No daemon: this process runs the pipeline; the next `agent run` starts the new version on trial.
async fn alone(cfg: Config, version: Option<Version>, force: bool, origin: Origin) -> Result<String, HostError> {
    let (http, _) = crate::http::client(&cfg)?;
    let ctx = Arc::new(Context::new(http, &cfg)?);
    let runner = Arc::new(Runner::default());
    // An upgrade that an earlier run left unfinished (it was interrupted): closed, not resumed.
    let journal = ctx.store.load();
    if journal.state.before_swap() {
        crate::upgrade::runner::interrupt(&ctx, &journal);
    }
    let mut done = runner.start_from(ctx, Target::from(version), force, None, origin).map_err(HostError::Refused)?;
    let mut progress = runner.progress.subscribe();
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
        Ok(Outcome::UpToDate) => Ok(format!("already up to date: {}\n", version_str())),
        Ok(Outcome::Installed(v)) => Ok(format!(
            "installed {v} (no daemon is running): the next `agent run` starts it on trial, with rollback\n"
        )),
        Ok(Outcome::Failed(text)) => Err(HostError::Refused(text)),
        Err(_) => Err(HostError::Refused("the upgrade task stopped".into())),
    }
}
