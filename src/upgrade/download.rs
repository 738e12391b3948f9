//! Streams the release asset to a temporary file beside the installed binary, hashing as it goes:
//! memory stays flat whatever the size. Transient failures (connection reset, 5xx, 408, 429,
//! stalls) are retried with backoff and resumed with HTTP `Range` when the server allows it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};

use super::UpgradeError;
use crate::backoff::Backoff;

const ATTEMPTS: u32 = 6;
const STALL: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A file that is removed when dropped unless it was kept: a cancelled or failed upgrade
/// leaves no partial file behind.
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The file stays; the caller now owns it.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The name prefix of staged downloads, so that leftovers of a killed process can be found.
pub const STAGING_PREFIX: &str = ".edge-agent-download-";

/// Removes staged downloads left in `dir` by a process that died mid-download.
pub fn clean_stale(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            tracing::info!(path = %entry.path().display(), "removing a partial download left by an earlier run");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Creates the staging file in `dir` (the installed binary's directory, so the final rename
/// stays on one filesystem).
pub fn create_staging(dir: &Path, version: &str) -> Result<(TempFile, File), UpgradeError> {
    let path = dir.join(format!("{STAGING_PREFIX}{version}-{}", crate::util::random_hex(4)));
    let file = File::create(&path).map_err(|source| UpgradeError::io("the install directory", dir, source))?;
    Ok((TempFile { path, keep: false }, file))
}

/// Bytes available to this user on the filesystem holding `dir`.
pub fn available_space(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Downloads `url` into `file`; returns the sha256 (lowercase hex) of what was written.
pub async fn fetch(
    http: &reqwest::Client,
    url: &Url,
    file: &mut File,
    path: &Path,
    size: Option<u64>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<String, UpgradeError> {
    let mut hasher = Sha256::new();
    let mut have: u64 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result =
            fetch_once(http, url, file, path, size, &mut hasher, &mut have, &mut last_log, started, progress).await;
        match result {
            Ok(()) => break,
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Transient(detail)) if attempt < ATTEMPTS => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    attempt,
                    have,
                    delay_ms = delay.as_millis() as u64,
                    "download interrupted, retrying: {detail}"
                );
                tokio::time::sleep(delay).await;
            }
            Err(Failure::Transient(detail)) => {
                return Err(UpgradeError::Download {
                    url: url.to_string(),
                    detail: format!("{detail} (gave up after {attempt} attempts)"),
                })
            }
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let synced = Instant::now();
    file.sync_all().map_err(|e| UpgradeError::io("the downloaded file", path, e))?;
    tracing::info!(
        bytes = have,
        mib_per_sec = format!("{:.1}", have as f64 / secs / 1048576.0),
        fsync_ms = synced.elapsed().as_millis() as u64,
        "download complete"
    );
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum Failure {
    Transient(String),
    Final(UpgradeError),
}

#[allow(clippy::too_many_arguments)]
async fn fetch_once(
    http: &reqwest::Client,
    url: &Url,
    file: &mut File,
    path: &Path,
    size: Option<u64>,
    hasher: &mut Sha256,
    have: &mut u64,
    last_log: &mut Instant,
    started: Instant,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<(), Failure> {
    let final_err = |detail: String| Failure::Final(UpgradeError::Download { url: url.to_string(), detail });
    let mut req = http.get(url.clone());
    if *have > 0 {
        req = req.header(RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|e| Failure::Transient(crate::util::error_chain(&e)))?;
    let status = resp.status();
    match status {
        StatusCode::PARTIAL_CONTENT if *have > 0 && content_range_start(&resp) == Some(*have) => {
            tracing::info!(from = *have, "resuming download");
        }
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
            if *have > 0 {
                tracing::info!(discarded = *have, "server ignored the range request: starting over");
            }
            // Start from zero: the server sends the whole body.
            file.set_len(0)
                .and_then(|_| std::io::Seek::rewind(file))
                .map_err(|e| Failure::Final(UpgradeError::io("the downloaded file", path, e)))?;
            *hasher = Sha256::new();
            *have = 0;
        }
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS => {
            return Err(Failure::Transient(format!("HTTP {s}")));
        }
        s => return Err(final_err(format!("HTTP {s}"))),
    }
    if let (Some(limit), Some(len)) = (size, resp.content_length()) {
        if *have + len > limit {
            return Err(Failure::Final(UpgradeError::TooLarge { url: url.to_string(), size: limit }));
        }
        if *have + len < limit {
            let detail = format!("the server has {} bytes, the release manifest says {limit}", *have + len);
            return Err(final_err(detail));
        }
    }
    loop {
        let chunk = match tokio::time::timeout(STALL, resp.chunk()).await {
            Err(_) => return Err(Failure::Transient(format!("no data for {STALL:?}"))),
            Ok(Err(e)) => return Err(Failure::Transient(crate::util::error_chain(&e))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        if size.is_some_and(|limit| *have + chunk.len() as u64 > limit) {
            return Err(Failure::Final(UpgradeError::TooLarge {
                url: url.to_string(),
                size: size.unwrap_or_default(),
            }));
        }
        // A local write of one chunk: short enough to do on the runtime thread.
        file.write_all(&chunk).map_err(|e| Failure::Final(UpgradeError::io("the downloaded file", path, e)))?;
        hasher.update(&chunk);
        *have += chunk.len() as u64;
        progress(*have, size);
        if last_log.elapsed() >= PROGRESS_EVERY {
            *last_log = Instant::now();
            let rate = *have as f64 / started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(bytes = *have, total = size, bytes_per_sec = rate as u64, "downloading");
        }
    }
    if let Some(limit) = size {
        if *have < limit {
            return Err(Failure::Transient(format!("body ended after {} of {limit} bytes", *have)));
        }
    }
    Ok(())
}

/// The first byte position of a `Content-Range: bytes a-b/n` answer.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}
