//! The swap (protocol.md §3.3): self-check the staged binary, keep the running one as the
//! previous version, journal the swap, and rename the new one over the installed path. At every
//! instant the installed path holds the whole old binary or the whole new one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use tokio::process::Command;

use super::error::UpgradeError;
use super::journal::{Event, Swapped};
use super::store::Store;
use crate::platform;

const SELF_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The installed binary: this process's executable, as a real path.
pub fn installed_path() -> std::io::Result<PathBuf> {
    platform::current_exe()
}

/// Runs `<staged> version --json`: it must run here and report exactly `target`.
pub async fn self_check(staged: &Path, target: &Version) -> Result<(), UpgradeError> {
    platform::make_executable(staged, None).map_err(|e| UpgradeError::io("the downloaded file", staged, e))?;
    let out = tokio::time::timeout(SELF_CHECK_TIMEOUT, run_version(staged))
        .await
        .map_err(|_| {
            UpgradeError::SelfCheck(format!(
                "the new binary did not answer `version --json` within {SELF_CHECK_TIMEOUT:?}"
            ))
        })?
        .map_err(UpgradeError::SelfCheckRun)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let said = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
        return Err(UpgradeError::SelfCheck(format!("`version --json` exited with {}{said}", out.status)));
    }
    let reported = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .ok_or_else(|| UpgradeError::SelfCheck("`version --json` printed no version".into()))?;
    if Version::parse(&reported).ok().as_ref() != Some(target) {
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
        edge_agent_base::id::random_hex(4)
    ));
    let result = fs::copy(from, &tmp).and_then(|_| platform::replace_file(&tmp, to));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(UpgradeError::io(what, to, e));
    }
    Ok(())
}

/// Keeps the running binary for rollback, journals the swap, renames the new binary into place.
/// Synchronous on purpose: nothing can cancel it half-way. `id` is the upgrade's journal id.
pub fn swap(store: &Store, id: &str, installed: &Path, staged: &Path) -> Result<(), UpgradeError> {
    let previous = store.dir().previous_binary();
    keep_previous(installed, &previous)?;
    // Journal first: a crash before the rename leaves the old binary and a journal whose target it
    // is not, which the restarted agent reports as a failed upgrade.
    let swapped = Swapped { installed_binary: installed.into(), previous_binary: previous };
    store.apply_if(Some(id), Event::Swap(swapped))?;
    let renamed =
        platform::make_executable(staged, Some(installed)).and_then(|_| platform::replace_file(staged, installed));
    if let Err(e) = renamed {
        return Err(UpgradeError::io("the installed binary", installed, e));
    }
    super::failpoint("after-swap");
    Ok(())
}

/// Keeps the running binary under the rollback copy's name: on Unix a hard link to it, renamed into
/// place (nothing is copied: the swap then renames the new binary over the installed path, and the
/// old file lives on under the rollback name), else, or when the file system has no hard links
/// across these directories, a copy.
fn keep_previous(installed: &Path, previous: &Path) -> Result<(), UpgradeError> {
    #[cfg(unix)]
    match link_atomic(installed, previous) {
        Ok(()) => return Ok(()),
        Err(e) => tracing::debug!(previous = %previous.display(), "no hard link for the rollback copy ({e}): copying"),
    }
    copy_atomic(installed, previous, "the rollback copy")
}

/// A hard link to `from` at a temporary name beside `to`, renamed over `to` durably.
#[cfg(unix)]
fn link_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.link",
        to.file_name().unwrap_or_default().to_string_lossy(),
        edge_agent_base::id::random_hex(4)
    ));
    fs::hard_link(from, &tmp)?;
    platform::replace_file(&tmp, to).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Puts the previous binary back over the installed path (rollback).
pub fn restore(previous: &Path, installed: &Path) -> Result<(), UpgradeError> {
    if !previous.is_file() {
        return Err(UpgradeError::NoPrevious(previous.to_path_buf()));
    }
    copy_atomic(previous, installed, "the installed binary")
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_rollback_copy_is_the_running_file_itself_and_outlives_the_swap() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (installed, previous) = (dir.path().join("bin/agent"), dir.path().join("state/previous/agent"));
        std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
        std::fs::write(&installed, b"old build").unwrap();
        std::fs::create_dir_all(previous.parent().unwrap()).unwrap();
        std::fs::write(&previous, b"the build before").unwrap();

        keep_previous(&installed, &previous).unwrap();
        let (a, b) = (std::fs::metadata(&installed).unwrap(), std::fs::metadata(&previous).unwrap());
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "a hard link: nothing copied");
        // The swap renames the new binary over the installed path: the old file stays the rollback copy.
        let staged = dir.path().join("bin/.staged");
        std::fs::write(&staged, b"new build").unwrap();
        platform::replace_file(&staged, &installed).unwrap();
        assert_eq!(std::fs::read(&previous).unwrap(), b"old build");
        assert_eq!(std::fs::read(&installed).unwrap(), b"new build");
        let left: Vec<_> =
            std::fs::read_dir(previous.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("agent")], "no temporary link left");
    }

    #[tokio::test]
    async fn a_self_check_killed_by_a_signal_says_so_without_a_dangling_colon() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent");
        std::fs::write(&script, "#!/bin/sh\nkill -9 $$\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        match self_check(&script, &Version::new(9, 9, 9)).await {
            Err(UpgradeError::SelfCheck(text)) => {
                assert!(text.contains("signal: 9"), "{text}");
                assert!(!text.trim_end().ends_with(':'), "{text}");
            }
            other => panic!("expected a self-check failure, got {other:?}"),
        }
    }
}
