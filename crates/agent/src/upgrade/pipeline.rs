//! Resolve → decide → download (a patch, the compressed copy or the asset, falling back in that
//! order) → verify → self-check → swap, each step journaled.

use std::path::{Path, PathBuf};

use semver::Version;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::context::Context;
use super::decide::{self, Ask, Decision};
use super::download::{self, Decode, Staging};
use super::error::UpgradeError;
use super::journal::Event;
use super::store::failed_before;
use super::{failpoint, install, resolve, verify};
use crate::config::ReleaseTrust;
use edge_agent_base::build_info::{platform, version};
use edge_agent_base::id::hex;
use edge_agent_release::manifest::Release;
use edge_agent_release::signature::SignatureError;
use edge_agent_release::source::{self, Kind, Source};

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

/// Where an upgrade's release comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The configured release source (`releases_url`).
    ReleaseSource,
    /// An offline bundle, read from this file.
    Bundle(PathBuf),
}

/// Runs upgrade `id` (its journal id) for `ask`, from the release source.
pub async fn run(ctx: &Context, id: &str, ask: &Ask, progress: &watch::Sender<Progress>) -> Result<Done, UpgradeError> {
    if ctx.trust == ReleaseTrust::NotConfigured {
        return Err(UpgradeError::NotTrusted);
    }
    let releases = ctx.releases.as_ref().ok_or(UpgradeError::NoReleaseSource)?;
    let (manifest, target, manifest_url) = resolve::resolve(&ctx.http, releases, ask.target.version()).await?;
    let history = ctx.store.history();
    let decision = decide::decide(ask, version(), &target, &ctx.policy, |v| failed_before(&history, v))?;
    if decision == Decision::UpToDate {
        tracing::info!(resolved = %target, "already up to date: nothing to download");
        return Ok(Done::UpToDate);
    }
    ctx.store.apply_if(Some(id), Event::Resolve(target.clone()))?;
    let sidecars = manifest.assets.clone();
    let release = resolve::select(manifest, target.clone(), manifest_url, &platform())?;
    let find_sidecar = |ext: &str| sidecars.iter().find(|a| a.name == format!("{}.{ext}", release.asset.name));
    let published = verify::Signature::Published { http: &ctx.http, sidecar: find_sidecar("minisig") };
    let signed = verify::expected_signature(&ctx.trust, &release, published).await?;
    let expected = resolve::checksum(&ctx.http, &release, find_sidecar("sha256")).await?;

    let dir = ctx.install_dir();
    download::clean_staging(dir, Some(&target));
    let installed = install_staged(ctx, id, &release, &expected, &signed, progress).await;
    if installed.is_err() {
        download::discard_all(dir, &target);
    }
    installed?;
    tracing::info!(installed = %ctx.installed.display(), "new version installed");
    Ok(Done::Installed(target))
}

/// Download → verify → self-check → swap.
async fn install_staged(
    ctx: &Context,
    id: &str,
    release: &Release,
    expected: &str,
    signed: &verify::Expected,
    progress: &watch::Sender<Progress>,
) -> Result<(), UpgradeError> {
    let obtained = obtain_any(ctx, release, expected, signed, progress).await?;
    let staged = Staged { path: &obtained.path, expected, actual: obtained.sha256, hashed: obtained.signature };
    verify_and_swap(ctx, id, release, staged, signed).await
}

/// A complete file in its staging path, its published sha256 and its own, and whether it matched
/// the signature when that was checked as it arrived.
pub struct Staged<'a> {
    pub path: &'a Path,
    pub expected: &'a str,
    pub actual: String,
    pub hashed: Option<Result<(), SignatureError>>,
}

/// Verify → self-check → swap: the same for every way a new binary arrives.
pub async fn verify_and_swap(
    ctx: &Context,
    id: &str,
    release: &Release,
    staged: Staged<'_>,
    signed: &verify::Expected,
) -> Result<(), UpgradeError> {
    ctx.store.apply_if(Some(id), Event::Downloaded(staged.actual.clone()))?;
    failpoint("verifying");
    verify::checksum(&release.asset.name, staged.expected, &staged.actual)?;
    verify::signature(release, staged.path, signed, staged.hashed).await?;
    failpoint("self-check");
    install::self_check(staged.path, &release.version).await?;
    failpoint("before-swap");
    install::swap(&ctx.store, id, &ctx.installed, staged.path)?;
    Ok(())
}

/// The new binary in its staging file: from the first source of the plan that yields bytes
/// matching `expected`. The failure of each source but the last is logged, its files removed,
/// and the next one tried; the last one's failure is the upgrade's.
async fn obtain_any(
    ctx: &Context,
    release: &Release,
    expected: &str,
    signed: &verify::Expected,
    progress: &watch::Sender<Progress>,
) -> Result<Obtained, UpgradeError> {
    let running = match source::has_patches(&release.asset) {
        true => running_sha256(&ctx.installed).await,
        false => None,
    };
    let plan = source::plan(&release.asset, running.as_deref());
    let labels: Vec<String> = plan.iter().map(|s| format!("{} ({} bytes)", s.label(), s.size.unwrap_or(0))).collect();
    tracing::info!(plan = %labels.join(", "), "download plan");
    for (i, source) in plan.iter().enumerate() {
        let result = obtain(ctx, release, expected, signed, source, progress).await;
        match (result, plan.get(i + 1)) {
            (Ok(done), _) => {
                // What an earlier process left of another source is not needed any more.
                for s in [Staging::Raw, Staging::Compressed, Staging::Patch, Staging::Decoded] {
                    let other = s.path(ctx.install_dir(), &release.version);
                    if other != done.path {
                        download::discard(&other);
                    }
                }
                return Ok(done);
            }
            (Err(e @ UpgradeError::Journal(_)), _) | (Err(e), None) => return Err(e),
            (Err(e), Some(next)) => {
                let why = edge_agent_base::error::error_chain(&e);
                tracing::warn!(source = %source.label(), next = %next.label(), "cannot use the {}: {why}; downloading the {} instead", source.label(), next.label());
                let dir = ctx.install_dir();
                for s in [Staging::Compressed, Staging::Patch, Staging::Decoded] {
                    download::discard(&s.path(dir, &release.version));
                }
            }
        }
    }
    unreachable!("a plan always ends with the asset itself")
}

/// The new binary in its staging file, its sha256, and what the signature check found if the
/// bytes were checked as they arrived.
struct Obtained {
    path: PathBuf,
    sha256: String,
    signature: Option<Result<(), SignatureError>>,
}

/// Downloads one source; a compressed copy or a patch is decoded into the binary as it arrives,
/// and both the file and the binary are checked against their published sha256. The asset
/// itself is checked against the signature as it arrives; a decoded binary once it is whole.
async fn obtain(
    ctx: &Context,
    release: &Release,
    expected: &str,
    signed: &verify::Expected,
    source: &Source,
    progress: &watch::Sender<Progress>,
) -> Result<Obtained, UpgradeError> {
    let (dir, v) = (ctx.install_dir(), &release.version);
    let decode = |what, reference| Decode {
        what,
        output: Staging::Decoded.path(dir, v),
        len: release.asset.size.unwrap_or_default(),
        reference,
    };
    let (path, decode) = match &source.kind {
        Kind::Raw => (Staging::Raw.path(dir, v), None),
        Kind::Compressed => (Staging::Compressed.path(dir, v), Some(decode("the compressed file", None))),
        Kind::Patch { .. } => (Staging::Patch.path(dir, v), Some(decode("the patch", Some(ctx.installed.clone())))),
    };
    let url = match source.kind {
        Kind::Raw => release.url.clone(),
        _ => release.manifest_url.join(&source.url).map_err(|e| UpgradeError::BadManifest {
            url: release.manifest_url.to_string(),
            detail: format!("URL {:?}: {e}", source.url),
        })?,
    };
    check_space(dir, &path, source.size, decode.as_ref().map(|d| d.len))?;
    let have = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    tracing::info!(%url, source = %source.label(), size = source.size, resume_from = have, "downloading");
    let report = |bytes, total| {
        progress.send_replace(Progress { bytes, total });
    };
    let signed = match source.kind {
        Kind::Raw => signed.signed().cloned(),
        _ => None,
    };
    let fetched = download::fetch(&ctx.http, &url, &path, source.size, decode.clone(), signed, &report).await?;
    let (Some(decode), Some(decoded)) = (decode, fetched.decoded_sha256) else {
        return Ok(Obtained { path, sha256: fetched.sha256, signature: fetched.signature });
    };
    let file_name = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default().to_string();
    verify::checksum(&file_name, source.sha256.as_deref().unwrap_or_default(), &fetched.sha256)?;
    verify::checksum(&release.asset.name, expected, &decoded)?;
    download::discard(&path);
    tracing::info!(source = %source.label(), bytes = source.size, "rebuilt the new binary from the {}", source.label());
    Ok(Obtained { path: decode.output, sha256: decoded, signature: None })
}

/// Refuses a download that the install directory has no room for: what is left of the file,
/// and the binary it decodes to.
pub fn check_space(dir: &Path, path: &Path, size: Option<u64>, decoded: Option<u64>) -> Result<(), UpgradeError> {
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let needed = size.unwrap_or(0).saturating_sub(have) + decoded.unwrap_or(0);
    match crate::platform::available_space(dir) {
        Some(free) if needed > free => Err(UpgradeError::NoSpace { dir: dir.to_path_buf(), needed, available: free }),
        _ => Ok(()),
    }
}

/// The sha256 of the running binary, which a patch must have been made against; None when it
/// cannot be read (then no patch is used).
async fn running_sha256(installed: &Path) -> Option<String> {
    let path = installed.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let (mut file, mut hasher, mut buf) = (std::fs::File::open(&path)?, Sha256::new(), vec![0u8; 1 << 20]);
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(hex(&hasher.finalize())),
                n => hasher.update(&buf[..n]),
            }
        }
    })
    .await;
    match hashed {
        Ok(Ok(sha)) => Some(sha),
        Ok(Err(e)) => {
            tracing::warn!(path = %installed.display(), "cannot hash the running binary, so no patch can be used: {e}");
            None
        }
        Err(_) => None,
    }
}
