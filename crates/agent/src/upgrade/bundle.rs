//! An upgrade from an offline bundle (`agent upgrade --from-file`), with the bundle in place of
//! the network and nothing else weaker: its manifest is checked as a fetched one and bound to the
//! version asked for; the same decision; this platform's asset copied into the same staging
//! file, never beyond its published size; its sha256 and signature from the bundle; then the same
//! verification, self-check and swap ([`super::pipeline::verify_and_swap`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use reqwest::Url;
use sha2::{Digest, Sha256};

use super::context::Context;
use super::decide::{self, Ask, Decision};
use super::download::{self, Staging};
use super::error::UpgradeError;
use super::journal::Event;
use super::pipeline::{self, Done, Staged};
use super::store::failed_before;
use super::verify;
use crate::config::ReleaseTrust;
use edge_agent_base::build_info::{platform, version};
use edge_agent_base::id::hex;
use edge_agent_release::bundle::{Bundle, BundleError};
use edge_agent_release::manifest::{self, Asset, ManifestError, Release};

/// The largest binary read from a bundle whose manifest gives no size.
const MAX_BINARY: u64 = 1 << 30;

/// The text of a bundle's manifest and the version it describes: what `agent upgrade
/// --from-file` asks for.
pub fn version_of(path: &Path) -> Result<semver::Version, UpgradeError> {
    let bundle = Bundle::open(path).map_err(|source| UpgradeError::Bundle { path: path.into(), source })?;
    manifest::parse(&bundle.manifest, None).map(|(_, v)| v).map_err(|e| bad_manifest(&bundle, e))
}

fn bad_manifest(bundle: &Bundle, e: ManifestError) -> UpgradeError {
    let url = format!("{} ({})", bundle.path.display(), bundle.manifest_name);
    UpgradeError::BadManifest { url, detail: e.to_string() }
}

/// Runs upgrade `id` for `ask` from the bundle at `path`.
pub async fn run(ctx: &Context, id: &str, ask: &Ask, path: &Path) -> Result<Done, UpgradeError> {
    if ctx.trust == ReleaseTrust::NotConfigured {
        return Err(UpgradeError::NotTrusted);
    }
    let bundle = blocking(path, |p| Bundle::open(&p)).await?;
    let (manifest, target) =
        manifest::parse(&bundle.manifest, ask.target.version()).map_err(|e| bad_manifest(&bundle, e))?;
    let history = ctx.store.history();
    let decision = decide::decide(ask, version(), &target, &ctx.policy, |v| failed_before(&history, v))?;
    if decision == Decision::UpToDate {
        tracing::info!(bundled = %target, "already up to date: nothing to install");
        return Ok(Done::UpToDate);
    }
    ctx.store.apply_if(Some(id), Event::Resolve(target.clone()))?;
    let sidecars = manifest.assets.clone();
    let url = Url::parse(&format!("bundle:/{}", bundle.manifest_name)).expect("a valid URL");
    let release = manifest::select(manifest, target.clone(), url, &platform()).map_err(|e| match e {
        ManifestError::NoAsset { platform, .. } => {
            let binaries = sidecars
                .iter()
                .map(|a| a.name.as_str())
                .filter(|n| !n.ends_with(".sha256") && !n.ends_with(".minisig"));
            UpgradeError::BundlePlatform { path: path.into(), platform, has: binaries.collect::<Vec<_>>().join(", ") }
        }
        e => bad_manifest(&bundle, e),
    })?;
    let sidecar = |ext: &str| sidecars.iter().find(|a| a.name == format!("{}.{ext}", release.asset.name)).cloned();
    let text = |a: Option<Asset>| small(&bundle, a);
    let expected = match &release.asset.sha256 {
        Some(inline) => manifest::digest_of(inline).map_err(|e| bad_manifest(&bundle, e))?,
        None => match text(sidecar("sha256")).await? {
            Some(t) => manifest::digest_of(&t).map_err(|e| bad_manifest(&bundle, e))?,
            None => return Err(UpgradeError::NoChecksum(release.asset.name.clone())),
        },
    };
    let bundled = verify::Signature::Bundled(text(sidecar("minisig")).await?);
    let signed = verify::expected_signature(&ctx.trust, &release, bundled).await?;

    let dir = ctx.install_dir();
    download::clean_staging(dir, Some(&target));
    let staged = Staging::Raw.path(dir, &target);
    let installed = async {
        let actual = copy_asset(&bundle, &release, &staged).await?;
        let staged = Staged { path: &staged, expected: &expected, actual, hashed: None };
        pipeline::verify_and_swap(ctx, id, &release, staged, &signed).await
    };
    if let Err(e) = installed.await {
        download::discard_all(dir, &target);
        return Err(e);
    }
    tracing::info!(installed = %ctx.installed.display(), bundle = %path.display(), "new version installed from a bundle");
    Ok(Done::Installed(target))
}

/// Runs a bundle read on a blocking thread.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce(PathBuf) -> Result<T, BundleError> + Send + 'static,
) -> Result<T, UpgradeError> {
    let owned = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || f(owned))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    result.map_err(|source| UpgradeError::Bundle { path: path.into(), source })
}

/// A sidecar's text, if the manifest lists one and the bundle holds it.
async fn small(bundle: &Bundle, asset: Option<Asset>) -> Result<Option<String>, UpgradeError> {
    let Some(asset) = asset else { return Ok(None) };
    let b = bundle.clone();
    blocking(&bundle.path, move |_| b.small_file(&asset.name, &asset.browser_download_url)).await
}

/// Copies the release's asset from the bundle into its staging file, hashing it on the way, no
/// larger than its published size (and exactly that size); its sha256.
async fn copy_asset(bundle: &Bundle, release: &Release, staged: &Path) -> Result<String, UpgradeError> {
    let limit = release.asset.size.unwrap_or(MAX_BINARY);
    pipeline::check_space(staged.parent().unwrap_or(Path::new(".")), staged, Some(limit), None)?;
    let (b, asset, to) = (bundle.clone(), release.asset.clone(), staged.to_path_buf());
    let write_error = |e: std::io::Error| UpgradeError::io("the staging file", staged, e);
    let file = std::fs::File::create(staged).map_err(write_error)?;
    let copied = blocking(&bundle.path, move |_| {
        let mut out = Hashing { file, hasher: Sha256::new() };
        let n = b.copy(&asset.name, &asset.browser_download_url, limit, &mut out)?;
        out.file.sync_all().map_err(|source| BundleError::Write { path: to, source })?;
        Ok((n, hex(&out.hasher.finalize())))
    })
    .await?;
    if release.asset.size.is_some_and(|size| size != copied.0) {
        let detail = format!("{} is {} bytes in the bundle, the manifest says {limit}", release.asset.name, copied.0);
        return Err(UpgradeError::BadManifest { url: bundle.path.display().to_string(), detail });
    }
    Ok(copied.1)
}

/// A file that hashes what is written to it.
struct Hashing {
    file: std::fs::File,
    hasher: Sha256,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
