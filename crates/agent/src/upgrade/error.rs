//! What can go wrong in an upgrade: one variant per failed action, carrying its context and its
//! cause. `Display` is for logs and the host commands; the texts sent to the server are written
//! by [`super::wire`].

use std::path::{Path, PathBuf};

use semver::Version;

use super::decide::Refusal;
use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no release {version} is published ({url} answered 404)")]
    NoSuchVersion { version: Version, url: String },
    #[error("No download URL found for release 'v{version}' for {platform}")]
    NoAsset { version: Version, platform: String },
    #[error("no release source configured: set releases_url in the agent's configuration")]
    NoReleaseSource,
    #[error(
        "no trusted_keys configured, and this agent installs only signed releases: {}",
        crate::config::WHAT_TO_ADD
    )]
    NotTrusted,
    #[error("cannot fetch {url}")]
    Fetch { url: String, source: reqwest::Error },
    #[error("cannot fetch {url}: {detail}")]
    FetchStatus { url: String, detail: String },
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
    #[error("cannot decode {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("checksum mismatch for {asset}: expected sha256 {expected}, got {actual}")]
    Checksum { asset: String, expected: String, actual: String },
    #[error("signature check failed for {asset}: {detail}")]
    Signature { asset: String, detail: String },
    #[error("not enough disk space in {dir}: {needed} bytes needed, {available} available")]
    NoSpace { dir: PathBuf, needed: u64, available: u64 },
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is not writable")]
    NotWritable { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot write {what} {path}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("self-check failed: {0}")]
    SelfCheck(String),
    #[error("self-check failed: the new binary does not run on this machine")]
    SelfCheckRun(#[source] std::io::Error),
    #[error("cannot locate the installed binary")]
    Installed(#[source] std::io::Error),
    #[error("no previous binary at {0} to roll back to")]
    NoPrevious(PathBuf),
    #[error("cancelled by a forced upgrade request")]
    Cancelled,
    #[error("interrupted: the agent restarted during the {phase} (taken over {resumes} times); ask again to retry")]
    Interrupted { phase: &'static str, resumes: u32 },
    #[error("Pending upgrade is already in progress")]
    InProgress,
    #[error("cannot update the upgrade journal")]
    Journal(#[from] StoreError),
    #[error("cannot use the bundle {path}")]
    Bundle { path: PathBuf, source: edge_agent_release::bundle::BundleError },
    #[error("the bundle {path} holds no build for {platform}: it has {has}")]
    BundlePlatform { path: PathBuf, platform: String, has: String },
}

impl UpgradeError {
    /// An I/O failure on `path`, named for what the file is; a full disk and a read-only or
    /// forbidden directory get their own words.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> UpgradeError {
        use std::io::ErrorKind::*;
        let path = path.to_path_buf();
        match source.kind() {
            StorageFull => UpgradeError::DiskFull { path, source },
            PermissionDenied | ReadOnlyFilesystem => UpgradeError::NotWritable { what, path, source },
            _ => UpgradeError::Io { what, path, source },
        }
    }

    /// The outcome recorded in the history for this failure.
    pub fn outcome(&self) -> super::journal::Outcome {
        match self {
            UpgradeError::SelfCheck(_) | UpgradeError::SelfCheckRun(_) => super::journal::Outcome::Broken,
            _ => super::journal::Outcome::Failed,
        }
    }
}
