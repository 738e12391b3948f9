//! Verification of the downloaded bytes before anything runs them: the sha256 published with the
//! release (always), and a minisign signature by a locally trusted key (when keys are configured),
//! checked by [`edge_agent_release::signature`].

use std::path::Path;

use edge_agent_release::manifest::{Asset, Release};
use edge_agent_release::signature::{self, SignatureError};

use super::error::UpgradeError;
use super::resolve::get_small;

pub fn checksum(asset: &str, expected: &str, actual: &str) -> Result<(), UpgradeError> {
    if !expected.eq_ignore_ascii_case(actual) {
        return Err(UpgradeError::Checksum { asset: asset.into(), expected: expected.into(), actual: actual.into() });
    }
    Ok(())
}

/// With trusted keys configured: the `<asset>.minisig` sidecar must be a valid signature of the
/// file by one of them, naming this asset and version. Fails closed.
pub async fn signature(
    http: &reqwest::Client,
    keys: &[String],
    release: &Release,
    file: &Path,
    sidecar: Option<&Asset>,
) -> Result<(), UpgradeError> {
    if keys.is_empty() {
        return Ok(());
    }
    let asset = release.asset.name.clone();
    let fail = |detail: String| UpgradeError::Signature { asset: asset.clone(), detail };
    let sidecar = sidecar.ok_or_else(|| fail("no .minisig signature published, and this agent requires one".into()))?;
    let url = release.manifest_url.join(&sidecar.browser_download_url).map_err(|e| fail(e.to_string()))?;
    let (status, text) = get_small(http, &url).await?;
    if !status.is_success() {
        return Err(fail(format!("cannot fetch {url}: HTTP {status}")));
    }
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
