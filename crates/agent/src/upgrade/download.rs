//! Streams a release file into its staging file beside the installed binary: the asset itself,
//! or a compressed copy or patch that [`super::sink`] decodes into the binary as it arrives.
//! The network is read here; the disk, the hash and the decoder run on a thread of their own,
//! so memory stays flat whatever the size. There is one set of staging files per target
//! version, found again by name, so a download that a dead process left half done is resumed
//! with HTTP `Range` by the next one; staging files of other versions are removed when an
//! upgrade starts, so the install directory never holds more than one set. Transient failures
//! (connection reset, 5xx, 408, 429, stalls) are retried with backoff and resumed the same way.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use semver::Version;
use tokio::sync::mpsc;

use super::error::UpgradeError;
use super::sink::{self, Msg};
pub use super::sink::{Decode, Fetched};
use edge_agent_base::backoff::Backoff;
use edge_agent_release::signature::Signed;

const ATTEMPTS: u32 = 6;
const STALL: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Chunks in flight between the network and the writer thread.
const IN_FLIGHT: usize = 4;

/// Held by the writer thread of the download in progress, which outlives a cancelled upgrade
/// by the few chunks still in flight.
static WRITING: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

/// The name prefix of staging files.
pub const STAGING_PREFIX: &str = ".edge-agent-download-";

/// The staging files of a version: what each holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Staging {
    /// The asset as downloaded (the binary itself).
    Raw,
    /// A compressed copy, as downloaded.
    Compressed,
    /// A patch, as downloaded.
    Patch,
    /// The binary a compressed copy or a patch decodes to.
    Decoded,
}

impl Staging {
    const ALL: [Staging; 4] = [Staging::Raw, Staging::Compressed, Staging::Patch, Staging::Decoded];

    /// The staging file of this kind for `version` in `dir`: always the same name, so it can be
    /// found again.
    pub fn path(self, dir: &Path, version: &Version) -> PathBuf {
        // The binaries end as executables do on this system (`.exe` on Windows), so they can be run.
        let exe = std::env::consts::EXE_SUFFIX;
        let ext = match self {
            Staging::Raw => exe.to_string(),
            Staging::Compressed => ".zst".to_string(),
            Staging::Patch => ".patch".to_string(),
            Staging::Decoded => format!(".new{exe}"),
        };
        dir.join(format!("{STAGING_PREFIX}{version}{ext}"))
    }
}

/// The staging file of `version`'s asset in `dir`.
pub fn staging_path(dir: &Path, version: &Version) -> PathBuf {
    Staging::Raw.path(dir, version)
}

/// Removes the staging files in `dir`, except those of `keep`.
pub fn clean_staging(dir: &Path, keep: Option<&Version>) {
    let keep: Vec<PathBuf> = keep.map(|v| Staging::ALL.map(|s| s.path(dir, v)).to_vec()).unwrap_or_default();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX);
        if stale && !keep.contains(&entry.path()) {
            tracing::info!(path = %entry.path().display(), "removing a partial download of another upgrade");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes a staging file whose upgrade failed: what it holds is not worth resuming.
pub fn discard(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Removes every staging file of `version` in `dir`.
pub fn discard_all(dir: &Path, version: &Version) {
    for s in Staging::ALL {
        discard(&s.path(dir, version));
    }
}

/// Opens `path` to append to it: the bytes already there (none when it is new, or when it is
/// longer than `size` and so started over).
fn open_staging(path: &Path, size: Option<u64>) -> Result<(fs::File, u64), UpgradeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| UpgradeError::io("the install directory", dir, e))?;
    let fail = |e| UpgradeError::io("the partial download", path, e);
    let mut have = file.metadata().map_err(fail)?.len();
    if size.is_some_and(|s| have > s) {
        file.set_len(0).map_err(fail)?;
        have = 0;
    }
    Ok((file, have))
}

/// Downloads `url` into the staging file `path` (resuming what it holds), decoding it as
/// `decode` says and checking it against `signed` when given; the sha256 of the file and of what
/// it decoded to, and what the signature check found.
pub async fn fetch(
    http: &reqwest::Client,
    url: &Url,
    path: &Path,
    size: Option<u64>,
    decode: Option<Decode>,
    signed: Option<Signed>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Fetched, UpgradeError> {
    // A cancelled upgrade's writer may still be finishing its last chunks: wait for it.
    let writing = WRITING.clone().lock_owned().await;
    let (file, have) = open_staging(path, size)?;
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let owned = path.to_path_buf();
    let started = Instant::now();
    let writer = tokio::task::spawn_blocking(move || {
        let _writing = writing;
        sink::run(file, owned, have, decode, signed, rx)
    });
    let mut t = Transfer { http, url, tx, size, have, log: Log { last: Instant::now(), started, chunks: 0 }, progress };
    let received = t.receive().await;
    if received.is_ok() {
        let _ = t.tx.send(Msg::Done).await; // a writer that stopped already says why below
    }
    let Transfer { tx, have, log, .. } = t;
    drop(tx);
    let written = writer.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    // The writer's failure (a full disk, say) is what stopped the network side.
    let fetched = match (received, written) {
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(Some(fetched))) => fetched,
        (Ok(()), Ok(None)) => {
            return Err(UpgradeError::Download { url: url.to_string(), detail: "the download ended unfinished".into() })
        }
    };
    let secs = fetched.written.duration_since(started).as_secs_f64().max(1e-3);
    tracing::info!(
        bytes = have,
        mib_per_sec = format!("{:.1}", have as f64 / secs / 1048576.0),
        fsync_ms = fetched.fsync.as_millis() as u64,
        signature_ms = fetched.signature.as_ref().map(|_| fetched.signature_lag.as_millis() as u64),
        chunks = log.chunks,
        "download complete"
    );
    Ok(fetched)
}

/// One download in flight: where it comes from, where its bytes go, and how far it got.
struct Transfer<'a> {
    http: &'a reqwest::Client,
    url: &'a Url,
    /// To the writer thread.
    tx: mpsc::Sender<Msg>,
    /// The size the manifest publishes, when it does.
    size: Option<u64>,
    /// Bytes received (or already in the staging file).
    have: u64,
    log: Log,
    progress: &'a (dyn Fn(u64, Option<u64>) + Sync),
}

/// When progress was last logged, when the download started, and the chunks received.
struct Log {
    last: Instant,
    started: Instant,
    chunks: u64,
}

enum Failure {
    Transient(String),
    Final(UpgradeError),
}

/// The writer thread stopped: its own error is what [`fetch`] returns.
fn writer_gone() -> Failure {
    Failure::Final(UpgradeError::Download { url: String::new(), detail: "the writer stopped".into() })
}

impl Transfer<'_> {
    /// The network side of [`fetch`]: requests (and retries) until the whole file went to the
    /// writer.
    async fn receive(&mut self) -> Result<(), UpgradeError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.size.is_some_and(|s| self.have == s) {
                return Ok(()); // complete already: a process died after the download
            }
            match self.fetch_once().await {
                Ok(()) => return Ok(()),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(detail)) if attempt < ATTEMPTS => {
                    let delay = backoff.next_delay();
                    let (have, delay_ms) = (self.have, delay.as_millis() as u64);
                    tracing::warn!(attempt, have, delay_ms, "download interrupted, retrying: {detail}");
                    tokio::time::sleep(delay).await;
                }
                Err(Failure::Transient(detail)) => {
                    return Err(UpgradeError::Download {
                        url: self.url.to_string(),
                        detail: format!("{detail} (gave up after {attempt} attempts)"),
                    })
                }
            }
        }
    }

    async fn fetch_once(&mut self) -> Result<(), Failure> {
        let url = self.url;
        let final_err = |detail: String| Failure::Final(UpgradeError::Download { url: url.to_string(), detail });
        let mut req = self.http.get(url.clone());
        if self.have > 0 {
            req = req.header(RANGE, format!("bytes={}-", self.have));
        }
        let resp = req.send().await.map_err(|e| Failure::Transient(edge_agent_base::error::error_chain(&e)))?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if self.have > 0 && content_range_start(&resp) == Some(self.have) => {
                tracing::info!(from = self.have, "resuming download");
            }
            // Nothing after what we have: the file is whole (its checksum will tell).
            StatusCode::RANGE_NOT_SATISFIABLE if self.have > 0 => return Ok(()),
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                if self.have > 0 {
                    tracing::info!(discarded = self.have, "server ignored the range request: starting over");
                    // Start from zero: the server sends the whole body.
                    self.tx.send(Msg::Restart).await.map_err(|_| writer_gone())?;
                    self.have = 0;
                }
            }
            s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS => {
                return Err(Failure::Transient(format!("HTTP {s}")));
            }
            s => return Err(final_err(format!("HTTP {s}"))),
        }
        if let (Some(limit), Some(len)) = (self.size, resp.content_length()) {
            if self.have + len > limit {
                return Err(Failure::Final(UpgradeError::TooLarge { url: url.to_string(), size: limit }));
            }
            if self.have + len < limit {
                let detail = format!("the server has {} bytes, the release manifest says {limit}", self.have + len);
                return Err(final_err(detail));
            }
        }
        self.body(resp).await?;
        match self.size {
            Some(limit) if self.have < limit => {
                Err(Failure::Transient(format!("body ended after {} of {limit} bytes", self.have)))
            }
            _ => Ok(()),
        }
    }

    /// Passes the body's chunks to the writer as they arrive.
    async fn body(&mut self, mut resp: reqwest::Response) -> Result<(), Failure> {
        loop {
            let chunk = match tokio::time::timeout(STALL, resp.chunk()).await {
                Err(_) => return Err(Failure::Transient(format!("no data for {STALL:?}"))),
                Ok(Err(e)) => return Err(Failure::Transient(edge_agent_base::error::error_chain(&e))),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            let len = chunk.len() as u64;
            if let Some(limit) = self.size.filter(|limit| self.have + len > *limit) {
                return Err(Failure::Final(UpgradeError::TooLarge { url: self.url.to_string(), size: limit }));
            }
            self.tx.send(Msg::Data(chunk)).await.map_err(|_| writer_gone())?;
            self.have += len;
            self.log.chunks += 1;
            (self.progress)(self.have, self.size);
            if self.log.last.elapsed() >= PROGRESS_EVERY {
                self.log.last = Instant::now();
                let rate = self.have as f64 / self.log.started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(bytes = self.have, total = self.size, bytes_per_sec = rate as u64, "downloading");
            }
        }
    }
}

/// The first byte position of a `Content-Range: bytes a-b/n` answer.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}
