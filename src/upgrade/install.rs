//! The swap (protocol.md §3.3): self-check the staged binary, keep the running one as the
//! previous version, write the journal, and rename the new one over the installed path. At every
//! instant the installed path holds the whole old binary or the whole new one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::journal::{Journal, State};
use super::UpgradeError;
use crate::util::{now_iso, sync_dir};

const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Where rollback copies live in the state directory.
pub fn previous_binary(state_dir: &Path) -> PathBuf {
    state_dir.join("previous").join("agent")
}

/// The installed binary: this process's executable, as a real path (a symlink is followed, so
/// the rename replaces the file rather than the link).
pub fn installed_path() -> std::io::Result<PathBuf> {
    fs::canonicalize(std::env::current_exe()?)
}

/// Runs `<staged> version --json`: it must run here and report exactly `target`.
pub async fn self_check(staged: &Path, target: &str) -> Result<(), UpgradeError> {
    fs::set_permissions(staged, fs::Permissions::from_mode(0o755))
        .map_err(|e| UpgradeError::io("the downloaded file", staged, e))?;
    let out = tokio::time::timeout(SELF_CHECK_TIMEOUT, run_version(staged))
        .await
        .map_err(|_| {
            UpgradeError::SelfCheck(format!(
                "the new binary did not answer `version --json` within {SELF_CHECK_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| UpgradeError::SelfCheck(format!("the new binary does not run on this machine: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(UpgradeError::SelfCheck(format!("`version --json` exited with {}: {}", out.status, stderr.trim())));
    }
    let reported = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .ok_or_else(|| UpgradeError::SelfCheck("`version --json` printed no version".into()))?;
    if reported != target {
        return Err(UpgradeError::SelfCheck(format!("the new binary reports version {reported}, expected {target}")));
    }
    Ok(())
}

/// `<binary> version --json`. A file that was just written can be briefly "busy" (ETXTBSY) while
/// a process forked at that instant still holds the descriptor it inherited: try again shortly.
async fn run_version(binary: &Path) -> std::io::Result<std::process::Output> {
    let mut tries = 0;
    loop {
        match Command::new(binary).args(["version", "--json"]).kill_on_drop(true).output().await {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

/// Copies `from` to `to` durably and atomically (temporary file beside `to`, fsync, rename).
pub fn copy_atomic(from: &Path, to: &Path, what: &'static str) -> Result<(), UpgradeError> {
    let dir = to.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| UpgradeError::io(what, dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        to.file_name().unwrap_or_default().to_string_lossy(),
        crate::util::random_hex(4)
    ));
    let result = (|| {
        fs::copy(from, &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, to)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(UpgradeError::io(what, to, e));
    }
    Ok(())
}

/// What the swap needs to know.
pub struct Swap<'a> {
    pub state_dir: &'a Path,
    pub installed: &'a Path,
    pub staged: &'a Path,
    pub running_version: &'a str,
    pub target_version: &'a str,
    pub sha256: &'a str,
    pub callback: Option<String>,
}

/// Keeps the running binary for rollback, writes the journal, renames the new binary into place.
/// Synchronous on purpose: nothing can cancel it half-way.
pub fn swap(s: Swap<'_>) -> Result<(), UpgradeError> {
    let previous = previous_binary(s.state_dir);
    copy_atomic(s.installed, &previous, "the rollback copy")?;
    let journal = Journal {
        previous_version: s.running_version.into(),
        target_version: s.target_version.into(),
        callback: s.callback,
        state: State::Trial,
        started_at: now_iso(),
        sha256: s.sha256.into(),
        starts: 0,
        installed_binary: s.installed.into(),
        previous_binary: previous,
        reason: None,
    };
    // Journal first: a crash before the rename leaves the old binary and a journal whose target it
    // is not, which the restarted agent reports as a failed upgrade.
    journal.save(s.state_dir).map_err(|e| UpgradeError::io("the upgrade journal", s.state_dir, e))?;
    let dir = s.installed.parent().unwrap_or(Path::new("/"));
    let mode = fs::metadata(s.installed).map(|m| m.permissions().mode()).unwrap_or(0o755);
    let renamed = fs::set_permissions(s.staged, fs::Permissions::from_mode(mode))
        .and_then(|_| fs::File::open(s.staged)?.sync_all())
        .and_then(|_| fs::rename(s.staged, s.installed))
        .and_then(|_| sync_dir(dir));
    if let Err(e) = renamed {
        let _ = fs::remove_file(Journal::path(s.state_dir));
        return Err(UpgradeError::io("the installed binary", s.installed, e));
    }
    crate::upgrade::failpoint("after-swap");
    Ok(())
}

/// Puts the previous binary back over the installed path (rollback).
pub fn restore(journal: &Journal) -> Result<(), UpgradeError> {
    if !journal.previous_binary.is_file() {
        return Err(UpgradeError::NoPrevious(journal.previous_binary.clone()));
    }
    copy_atomic(&journal.previous_binary, &journal.installed_binary, "the installed binary")
}
