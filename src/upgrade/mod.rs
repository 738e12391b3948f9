//! Self-upgrade, as a pipeline of small steps (protocol.md §3):
//!
//! 1. [`request`]: the checks that need no network (in progress, valid version), then a task, so
//!    the connection keeps serving while the upgrade runs;
//! 2. [`release::resolve`] and [`release::select`]: the manifest of the wanted (or latest)
//!    version and this platform's asset, from the locally configured release source;
//! 3. [`decide::decide`]: same version, downgrade, rolled back before: a pure decision;
//! 4. [`download::fetch`]: streamed beside the installed binary, hashed on the way, resumed;
//! 5. [`verify`]: sha256 against the published checksum (and a signature when keys are set);
//! 6. [`install::self_check`] and [`install::swap`]: the new binary runs and reports the target
//!    version, the old one is kept, the journal is written, the new one is renamed into place;
//! 7. restart: the daemon exits with [`crate::agent::Exit::Restart`] and the supervisor starts the
//!    new binary ([`crate::supervisor`]);
//! 8. [`report`]: the new process, once connected, reports the result with the request's
//!    callback; the supervisor rolls a new version back when it crashes or never confirms.

pub mod decide;
pub mod download;
pub mod install;
pub mod journal;
pub mod release;
pub mod report;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use semver::Version;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::{Shared, VERSION};
use crate::protocol::{Envelope, Message};
use decide::{Ask, Decision, Policy, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("'{0}' is not a valid version")]
    InvalidVersion(String),
    #[error("'{0}' is not a valid version")]
    NoSuchVersion(String),
    #[error("No download URL found for release 'v{version}' for {platform}")]
    NoAsset { version: String, platform: String },
    #[error("no release source configured: set releases_url in the agent's configuration")]
    NoReleaseSource,
    #[error("cannot fetch {url}: {detail}")]
    Fetch { url: String, detail: String },
    #[error("invalid release manifest {url}: {detail}")]
    BadManifest { url: String, detail: String },
    #[error("no sha256 published for {0}: refusing to install an unverified binary")]
    NoChecksum(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("download of {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("the download of {url} is larger than its published size of {size} bytes")]
    TooLarge { url: String, size: u64 },
    #[error("checksum mismatch for {asset}: expected sha256 {expected}, got {actual}")]
    Checksum { asset: String, expected: String, actual: String },
    #[error("signature check failed for {asset}: {detail}")]
    Signature { asset: String, detail: String },
    #[error("not enough disk space in {dir}: {needed} bytes needed, {available} available")]
    NoSpace { dir: PathBuf, needed: u64, available: u64 },
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf },
    #[error("{what} {path} is not writable: {source}")]
    NotWritable { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot write {what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("self-check failed: {0}")]
    SelfCheck(String),
    #[error("no previous binary at {0} to roll back to")]
    NoPrevious(PathBuf),
    #[error("cancelled by a forced upgrade request")]
    Cancelled,
}

impl UpgradeError {
    /// An I/O failure on `path`, named for what the file is; a full disk and a read-only or
    /// forbidden directory get their own words.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> UpgradeError {
        use std::io::ErrorKind::*;
        let path = path.to_path_buf();
        match source.kind() {
            StorageFull => UpgradeError::DiskFull { path },
            PermissionDenied | ReadOnlyFilesystem => UpgradeError::NotWritable { what, path, source },
            _ => UpgradeError::Io { what, path, source },
        }
    }

    /// The `agent:error` body for this failure, upgrading to `label` (a version, or `latest`).
    pub fn wire(&self, label: &str) -> String {
        match self {
            UpgradeError::InvalidVersion(v) | UpgradeError::NoSuchVersion(v) => {
                format!("Error during upgrading to version 'v{v}'. '{v}' is not a valid version")
            }
            _ if label == "latest" => format!("Error during upgrading to the latest version: {self}"),
            _ => format!("Error during upgrading to version 'v{label}': {self}"),
        }
    }
}

/// The upgrade in flight, if any, and its download progress.
pub struct Upgrader {
    running: Mutex<Option<(u64, CancellationToken)>>,
    next: AtomicU64,
    pub progress: watch::Sender<Progress>,
}

impl Default for Upgrader {
    fn default() -> Self {
        Upgrader {
            running: Mutex::default(),
            next: AtomicU64::default(),
            progress: watch::channel(Progress::default()).0,
        }
    }
}

/// Pauses the process at a named point when `EDGE_AGENT_FAILPOINT` names it, so that crash tests
/// can kill it exactly there. Unset in production; costs one environment lookup per upgrade step.
pub fn failpoint(name: &str) {
    if std::env::var("EDGE_AGENT_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint reached: pausing");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// How a started upgrade ended, before any restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing to do: the running version is the one asked for (or newer than latest).
    UpToDate,
    /// The new version is in place; the daemon must restart into it.
    Installed(String),
    /// The `agent:error` text that says what went wrong.
    Failed(String),
}

/// Download progress of the upgrade in flight, for `agent upgrade` on the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub bytes: u64,
    pub total: Option<u64>,
}

/// Answers an `agent:upgrade:request`: at once for the checks that need no network, else from
/// a task that reports through the outbox.
pub fn request(
    shared: &Arc<Shared>,
    version: Option<String>,
    force: bool,
    callback: Option<String>,
) -> Option<Envelope> {
    let done = match start(shared, version, force, callback.clone()) {
        Ok(done) => done,
        Err(text) => return Some(Message::error(text).reply_to(callback)),
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let reply = match done.await {
            Ok(Outcome::UpToDate) => Message::UpgradeResponse { status_code: 200 },
            // The new binary reports the result after the restart; nothing is sent before.
            Ok(Outcome::Installed(_)) => return shared.restart.cancel(),
            Ok(Outcome::Failed(text)) => Message::error(text),
            Err(_) => return,
        };
        let _ = shared.outbox.send(reply.reply_to(callback)).await;
    });
    None
}

/// Starts an upgrade (the checks of protocol.md §3.1 that need no network first); the text of an
/// immediate refusal, or where its outcome will arrive. `callback` goes into the journal.
pub fn start(
    shared: &Arc<Shared>,
    version: Option<String>,
    force: bool,
    callback: Option<String>,
) -> Result<oneshot::Receiver<Outcome>, String> {
    let mut running = shared.upgrader.running.lock().unwrap();
    if let Some((_, cancel)) = running.as_ref() {
        if !force {
            return Err("Pending upgrade is already in progress".into());
        }
        tracing::info!("a forced upgrade request cancels the one in progress");
        cancel.cancel();
    }
    let wanted = match version.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => match release::parse_version(v) {
            Ok(parsed) => Some(parsed),
            Err(_) => return Err(UpgradeError::InvalidVersion(v.to_string()).wire(v)),
        },
    };
    let id = shared.upgrader.next.fetch_add(1, Ordering::Relaxed);
    let cancel = CancellationToken::new();
    *running = Some((id, cancel.clone()));
    drop(running);
    shared.upgrader.progress.send_replace(Progress::default());

    let (tx, rx) = oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let ask = Ask { version: wanted, force };
        let label = ask.version.as_ref().map_or("latest".to_string(), Version::to_string);
        let span = tracing::info_span!("upgrade", from = VERSION, to = %label);
        let result = tokio::select! {
            r = tracing::Instrument::instrument(pipeline(&shared, &ask, callback), span) => r,
            _ = cancel.cancelled() => Err((label.clone(), UpgradeError::Cancelled)),
        };
        {
            let mut running = shared.upgrader.running.lock().unwrap();
            if running.as_ref().is_some_and(|(r, _)| *r == id) {
                *running = None;
            }
        }
        let outcome = match result {
            Ok(Done::UpToDate) => Outcome::UpToDate,
            Ok(Done::Installed(v)) => Outcome::Installed(v),
            Err((label, e)) => {
                tracing::warn!("upgrade to {label} failed: {e}");
                let outcome = if matches!(e, UpgradeError::SelfCheck(_)) { "broken" } else { "failed" };
                let record = journal::Record::new(VERSION, &label, outcome, Some(e.to_string()));
                journal::record(&shared.config().state_dir, record);
                Outcome::Failed(e.wire(&label))
            }
        };
        let _ = tx.send(outcome);
    });
    Ok(rx)
}

enum Done {
    UpToDate,
    Installed(String),
}

/// Resolve → decide → download → verify → self-check → swap. On error, the label of the target
/// (resolved version when known) and what went wrong.
async fn pipeline(shared: &Shared, ask: &Ask, callback: Option<String>) -> Result<Done, (String, UpgradeError)> {
    let cfg = shared.config();
    let mut label = ask.version.as_ref().map_or("latest".to_string(), Version::to_string);
    let fail = |label: &str, e: UpgradeError| (label.to_string(), e);
    let releases = cfg.releases_url.as_ref().ok_or_else(|| fail(&label, UpgradeError::NoReleaseSource))?;
    let (manifest, version, manifest_url) =
        release::resolve(&shared.http, releases, ask.version.as_ref()).await.map_err(|e| fail(&label, e))?;
    label = version.to_string();
    let running = Version::parse(VERSION).expect("the build stamps a valid version");
    let history = journal::history(&cfg.state_dir);
    let policy = Policy { allow_downgrade: cfg.allow_downgrade };
    let decision =
        decide::decide(ask, &running, &version, &policy, |v| journal::failed_before(&history, &v.to_string()))
            .map_err(|e| fail(&label, e.into()))?;
    if decision == Decision::UpToDate {
        tracing::info!(resolved = %version, "already up to date: nothing to download");
        return Ok(Done::UpToDate);
    }
    let sidecars = manifest.assets.clone();
    let release =
        release::select(manifest, version, manifest_url, &release::platform()).map_err(|e| fail(&label, e))?;
    let find_sidecar = |ext: &str| sidecars.iter().find(|a| a.name == format!("{}.{ext}", release.asset.name));
    let expected =
        release::checksum(&shared.http, &release, find_sidecar("sha256")).await.map_err(|e| fail(&label, e))?;

    let installed = install::installed_path()
        .map_err(|e| fail(&label, UpgradeError::SelfCheck(format!("cannot locate the installed binary: {e}"))))?;
    let dir = installed.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    if let (Some(size), Some(free)) = (release.asset.size, download::available_space(&dir)) {
        if size > free {
            return Err(fail(&label, UpgradeError::NoSpace { dir, needed: size, available: free }));
        }
    }
    let (staged, mut file) = download::create_staging(&dir, &label).map_err(|e| fail(&label, e))?;
    tracing::info!(url = %release.url, size = release.asset.size, "downloading");
    let progress = |bytes, total| {
        shared.upgrader.progress.send_replace(Progress { bytes, total });
    };
    let actual = download::fetch(&shared.http, &release.url, &mut file, staged.path(), release.asset.size, &progress)
        .await
        .map_err(|e| fail(&label, e))?;
    drop(file);
    verify::checksum(&release.asset.name, &expected, &actual).map_err(|e| fail(&label, e))?;
    verify::signature(shared, &release, staged.path(), find_sidecar("minisig")).await.map_err(|e| fail(&label, e))?;
    install::self_check(staged.path(), &label).await.map_err(|e| fail(&label, e))?;
    failpoint("before-swap");
    install::swap(install::Swap {
        state_dir: &cfg.state_dir,
        installed: &installed,
        staged: staged.path(),
        running_version: VERSION,
        target_version: &label,
        sha256: &actual,
        callback,
    })
    .map_err(|e| fail(&label, e))?;
    staged.keep(); // renamed into place: nothing left to remove
    tracing::info!(installed = %installed.display(), "new version installed");
    Ok(Done::Installed(label))
}

/// The recent upgrade results and any upgrade in flight, for `agent:stats`.
pub fn history_json(shared: &Shared) -> Value {
    let state_dir = shared.config().state_dir.clone();
    let recent: Vec<_> = journal::history(&state_dir).into_iter().rev().take(5).collect();
    serde_json::json!({
        "inProgress": shared.upgrader.running.lock().unwrap().is_some(),
        "recent": recent,
    })
}
