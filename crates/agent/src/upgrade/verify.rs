//! Verification of the downloaded bytes before anything runs them: the sha256 published with the
//! release (always), and a minisign signature by a locally trusted key, checked by
//! [`edge_agent_release::signature`] (unless the configuration says `allow_unsigned = true`).

use std::path::Path;

use edge_agent_release::manifest::{Asset, Release};
use edge_agent_release::signature::{self, SignatureError};

use super::error::UpgradeError;
use super::resolve::get_small;
use crate::config::ReleaseTrust;

pub fn checksum(asset: &str, expected: &str, actual: &str) -> Result<(), UpgradeError> {
    if !expected.eq_ignore_ascii_case(actual) {
        return Err(UpgradeError::Checksum { asset: asset.into(), expected: expected.into(), actual: actual.into() });
    }
    Ok(())
}

/// Refuses, before anything is downloaded, a release that publishes no signature when this agent
/// requires one.
pub fn signature_published(
    trust: &ReleaseTrust,
    release: &Release,
    sidecar: Option<&Asset>,
) -> Result<(), UpgradeError> {
    match (trust, sidecar) {
        (ReleaseTrust::Signed(_), None) => {
            Err(UpgradeError::Signature { asset: release.asset.name.clone(), detail: NO_SIGNATURE.into() })
        }
        _ => Ok(()),
    }
}

const NO_SIGNATURE: &str = "no .minisig signature published, and this agent requires one";

/// Where the `<asset>.minisig` signature comes from: the release source, or a bundle.
pub enum Signature<'a> {
    /// The sidecar the manifest lists, fetched with this client.
    Published { http: &'a reqwest::Client, sidecar: Option<&'a Asset> },
    /// The text a bundle holds, if it holds one.
    Bundled(Option<String>),
}

/// The `<asset>.minisig` signature must be a valid signature of the file by a trusted key, naming
/// this asset and version, wherever the file came from. Fails closed: only `allow_unsigned = true`
/// skips it.
pub async fn signature(
    trust: &ReleaseTrust,
    release: &Release,
    file: &Path,
    source: Signature<'_>,
) -> Result<(), UpgradeError> {
    let keys = match trust {
        ReleaseTrust::Signed(keys) => keys,
        ReleaseTrust::NotConfigured => return Err(UpgradeError::NotTrusted),
        ReleaseTrust::Unsigned => {
            tracing::warn!(asset = %release.asset.name, "installing without a signature check: allow_unsigned = true");
            return Ok(());
        }
    };
    let asset = release.asset.name.clone();
    let fail = |detail: String| UpgradeError::Signature { asset: asset.clone(), detail };
    let text = match source {
        Signature::Published { http, sidecar } => {
            let sidecar = sidecar.ok_or_else(|| fail(NO_SIGNATURE.into()))?;
            let url = release.manifest_url.join(&sidecar.browser_download_url).map_err(|e| fail(e.to_string()))?;
            let (status, text) = get_small(http, &url).await?;
            if !status.is_success() {
                return Err(fail(format!("cannot fetch {url}: HTTP {status}")));
            }
            text
        }
        Signature::Bundled(text) => {
            text.ok_or_else(|| fail("no .minisig signature in the bundle, and this agent requires one".into()))?
        }
    };
    let (keys, version, file_owned) = (keys.to_vec(), release.version.clone(), file.to_path_buf());
    let name = asset.clone();
    let checked =
        tokio::task::spawn_blocking(move || signature::verify_file(&keys, &text, &name, &version, &file_owned))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    match checked {
        Ok(()) => {
            tracing::info!(asset, "signature verified");
            Ok(())
        }
        Err(SignatureError::Refused(detail)) => Err(fail(detail)),
        Err(SignatureError::Read(e)) => Err(UpgradeError::io("the downloaded file", file, e)),
    }
}
