//! Streams the release asset into its staging file beside the installed binary, hashing as it
//! goes: memory stays flat whatever the size. There is one staging file per target version,
//! found again by name, so a download that a dead process left half done is resumed with HTTP
//! `Range` by the next one; staging files of other versions are removed when an upgrade starts,
//! so the install directory never holds more than one. Transient failures (connection reset, 5xx,
//! 408, 429, stalls) are retried with backoff and resumed the same way.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use semver::Version;
use sha2::{Digest, Sha256};

use super::UpgradeError;
use crate::backoff::Backoff;

const ATTEMPTS: u32 = 6;
const STALL: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The name prefix of staging files.
pub const STAGING_PREFIX: &str = ".edge-agent-download-";

/// The staging file of `version` in `dir`: always the same name, so it can be found again.
pub fn staging_path(dir: &Path, version: &Version) -> PathBuf {
    dir.join(format!("{STAGING_PREFIX}{version}{}", std::env::consts::EXE_SUFFIX))
}

/// Removes the staging files in `dir`, except the one of `keep`.
pub fn clean_staging(dir: &Path, keep: Option<&Version>) {
    let keep = keep.map(|v| staging_path(dir, v));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX);
        if stale && Some(entry.path()) != keep {
            tracing::info!(path = %entry.path().display(), "removing a partial download of another upgrade");
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// An open staging file. It is not removed when dropped: a killed process, a shutdown or a
/// cancelled upgrade leaves it for the next upgrade to resume (same version) or remove (another
/// version); a failed upgrade removes it ([`discard`]).
pub struct Staged {
    pub path: PathBuf,
    /// Open while downloading; closed before anything runs the file (else: "text file busy").
    file: Option<File>,
    /// Bytes already there, and their hash so far.
    pub have: u64,
    pub hasher: Sha256,
}

impl Staged {
    /// Closes the file: the download is complete.
    pub fn close(&mut self) {
        self.file = None;
    }
}

/// Removes a staging file whose upgrade failed: what it holds is not worth resuming.
pub fn discard(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Opens the staging file of `version` in `dir` to append to it, hashing what is already there;
/// creates it when there is none. A file longer than `size` is started over.
pub fn open_staging(dir: &Path, version: &Version, size: Option<u64>) -> Result<Staged, UpgradeError> {
    let path = staging_path(dir, version);
    let fail = |e| UpgradeError::io("the install directory", dir, e);
    let mut file =
        fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(fail)?;
    let mut hasher = Sha256::new();
    let mut have = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| UpgradeError::io("the partial download", &path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        have += n as u64;
    }
    if size.is_some_and(|s| have > s) {
        file.set_len(0).and_then(|_| file.rewind()).map_err(|e| UpgradeError::io("the partial download", &path, e))?;
        (have, hasher) = (0, Sha256::new());
    }
    if have > 0 {
        tracing::info!(path = %path.display(), bytes = have, "found a partial download: resuming it");
    }
    Ok(Staged { path, file: Some(file), have, hasher })
}

/// Downloads `url` into `file`; returns the sha256 (lowercase hex) of what was written.
pub async fn fetch(
    http: &reqwest::Client,
    url: &Url,
    staged: &mut Staged,
    size: Option<u64>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<String, UpgradeError> {
    let Staged { path, file, have, hasher, .. } = staged;
    let (path, have) = (path.as_path(), have);
    let file = file.as_mut().expect("a staging file is open until its download completes");
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        if size.is_some_and(|s| *have == s) {
            break; // complete already: a process died after the download
        }
        let result = fetch_once(http, url, file, path, size, hasher, have, &mut last_log, started, progress).await;
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
    let have = *have;
    tracing::info!(
        bytes = have,
        mib_per_sec = format!("{:.1}", have as f64 / secs / 1048576.0),
        fsync_ms = synced.elapsed().as_millis() as u64,
        "download complete"
    );
    Ok(hex(&hasher.clone().finalize()))
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
        // Nothing after what we have: the file is whole (its checksum will tell).
        StatusCode::RANGE_NOT_SATISFIABLE if *have > 0 => return Ok(()),
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
