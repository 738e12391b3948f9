//! Verification of the downloaded bytes before anything runs them: the sha256 published with the
//! release (always), and a minisign signature by a locally trusted key, checked by
//! [`edge_agent_release::signature`] (unless the configuration says `allow_unsigned = true`).
//! The signature is fetched and checked (well formed, this file and version, a trusted key)
//! before the download starts, so a release this agent would refuse is refused without
//! downloading it; the bytes are then checked as they arrive, or once whole.

use std::path::Path;

use edge_agent_release::manifest::{Asset, Release};
use edge_agent_release::signature::{SignatureError, Signed};

use super::error::UpgradeError;
use super::resolve::get_small;
use crate::config::ReleaseTrust;

pub fn checksum(asset: &str, expected: &str, actual: &str) -> Result<(), UpgradeError> {
    if !expected.eq_ignore_ascii_case(actual) {
        return Err(UpgradeError::Checksum { asset: asset.into(), expected: expected.into(), actual: actual.into() });
    }
    Ok(())
}

const NO_SIGNATURE: &str = "no .minisig signature published, and this agent requires one";

/// Where the `<asset>.minisig` signature comes from: the release source, or a bundle.
pub enum Signature<'a> {
    /// The sidecar the manifest lists, fetched with this client.
    Published { http: &'a reqwest::Client, sidecar: Option<&'a Asset> },
    /// The text a bundle holds, if it holds one.
    Bundled(Option<String>),
}

/// The `<asset>.minisig` signature, fetched and checked before the download starts: it must name
/// this asset and version and be made by a trusted key. What remains is the bytes
/// ([`signature`]). Fails closed: only `allow_unsigned = true` gives [`Expected::Unsigned`].
pub async fn expected_signature(
    trust: &ReleaseTrust,
    release: &Release,
    source: Signature<'_>,
) -> Result<Expected, UpgradeError> {
    let keys = match trust {
        ReleaseTrust::Signed(keys) => keys,
        ReleaseTrust::NotConfigured => return Err(UpgradeError::NotTrusted),
        ReleaseTrust::Unsigned => return Ok(Expected::Unsigned),
    };
    let asset = &release.asset.name;
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
    match Signed::new(keys, &text, asset, &release.version) {
        Ok(signed) => Ok(Expected::Signed(Box::new(signed))),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// What the new binary's bytes must match besides their sha256.
pub enum Expected {
    /// This signature.
    Signed(Box<Signed>),
    /// Nothing: `allow_unsigned = true`.
    Unsigned,
}

impl Expected {
    /// The signature, to check the bytes as they arrive.
    pub fn signed(&self) -> Option<&Signed> {
        match self {
            Expected::Signed(s) => Some(s),
            Expected::Unsigned => None,
        }
    }
}

/// The staged binary's bytes must match the expected signature: `hashed` is what the download
/// found when it checked them as they arrived; without it, the file is read now.
pub async fn signature(
    release: &Release,
    file: &Path,
    expected: &Expected,
    hashed: Option<Result<(), SignatureError>>,
) -> Result<(), UpgradeError> {
    let asset = release.asset.name.clone();
    let Expected::Signed(signed) = expected else {
        tracing::warn!(asset, "installing without a signature check: allow_unsigned = true");
        return Ok(());
    };
    let checked = match hashed {
        Some(checked) => checked,
        None => {
            let (signed, file_owned) = (Signed::clone(signed), file.to_path_buf());
            tokio::task::spawn_blocking(move || signed.verify_file(&file_owned))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        }
    };
    match checked {
        Ok(()) => {
            tracing::info!(asset, "signature verified");
            Ok(())
        }
        Err(SignatureError::Refused(detail)) => Err(UpgradeError::Signature { asset, detail }),
        Err(SignatureError::Read(e)) => Err(UpgradeError::io("the downloaded file", file, e)),
    }
}
