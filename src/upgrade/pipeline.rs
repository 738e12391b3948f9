//! Resolve → decide → download → verify → self-check → swap, each step journaled.

use semver::Version;
use tokio::sync::watch;

use super::decide::{self, Ask, Decision};
use super::journal::Event;
use super::store::failed_before;
use super::{download, failpoint, install, release, verify, Context, UpgradeError};
use crate::build_info::{platform, version};

/// Download progress of the upgrade in flight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub bytes: u64,
    pub total: Option<u64>,
}

/// How a pipeline that did not fail ended.
pub enum Done {
    /// Nothing to do: the running version is the one asked for (or newer than latest).
    UpToDate,
    /// The new version is in place; the process must restart into it.
    Installed(Version),
}

/// Runs upgrade `id` (its journal id) for `ask`.
pub async fn run(ctx: &Context, id: &str, ask: &Ask, progress: &watch::Sender<Progress>) -> Result<Done, UpgradeError> {
    let releases = ctx.releases.as_ref().ok_or(UpgradeError::NoReleaseSource)?;
    let (manifest, target, manifest_url) = release::resolve(&ctx.http, releases, ask.version.as_ref()).await?;
    let history = ctx.store.history();
    let decision = decide::decide(ask, version(), &target, &ctx.policy, |v| failed_before(&history, v))?;
    if decision == Decision::UpToDate {
        tracing::info!(resolved = %target, "already up to date: nothing to download");
        return Ok(Done::UpToDate);
    }
    ctx.store.apply_if(Some(id), Event::Resolve(target.clone()))?;
    let sidecars = manifest.assets.clone();
    let release = release::select(manifest, target.clone(), manifest_url, &platform())?;
    let find_sidecar = |ext: &str| sidecars.iter().find(|a| a.name == format!("{}.{ext}", release.asset.name));
    let expected = release::checksum(&ctx.http, &release, find_sidecar("sha256")).await?;

    let dir = ctx.install_dir();
    download::clean_staging(dir, Some(&target));
    let size = release.asset.size;
    let have = std::fs::metadata(download::staging_path(dir, &target)).map(|m| m.len()).unwrap_or(0);
    if let (Some(size), Some(free)) = (size, crate::platform::available_space(dir)) {
        let needed = size.saturating_sub(have);
        if needed > free {
            return Err(UpgradeError::NoSpace { dir: dir.to_path_buf(), needed, available: free });
        }
    }
    let mut staged = download::open_staging(dir, &target, size)?;
    let installed = install_staged(ctx, id, &release, &expected, &mut staged, find_sidecar("minisig"), progress).await;
    if installed.is_err() {
        download::discard(&staged.path);
    }
    installed?;
    tracing::info!(installed = %ctx.installed.display(), "new version installed");
    Ok(Done::Installed(target))
}

/// Download → verify → self-check → swap of an open staging file.
async fn install_staged(
    ctx: &Context,
    id: &str,
    release: &release::Release,
    expected: &str,
    staged: &mut download::Staged,
    minisig: Option<&release::Asset>,
    progress: &watch::Sender<Progress>,
) -> Result<(), UpgradeError> {
    tracing::info!(url = %release.url, size = release.asset.size, resume_from = staged.have, "downloading");
    let report = |bytes, total| {
        progress.send_replace(Progress { bytes, total });
    };
    let actual = download::fetch(&ctx.http, &release.url, staged, release.asset.size, &report).await?;
    staged.close();
    ctx.store.apply_if(Some(id), Event::Downloaded(actual.clone()))?;
    failpoint("verifying");
    verify::checksum(&release.asset.name, expected, &actual)?;
    verify::signature(&ctx.http, &ctx.trusted_keys, release, &staged.path, minisig).await?;
    failpoint("self-check");
    install::self_check(&staged.path, &release.version).await?;
    failpoint("before-swap");
    install::swap(&ctx.store, id, &ctx.installed, &staged.path)?;
    Ok(())
}
