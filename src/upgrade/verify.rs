//! Verification of the downloaded bytes before anything runs them: the sha256 published with the
//! release (always), and a minisign signature by a locally trusted key (when keys are configured).

use std::io::Read;
use std::path::Path;

use minisign_verify::{PublicKey, Signature};

use super::release::{get_small, Asset, Release};
use super::UpgradeError;

pub fn checksum(asset: &str, expected: &str, actual: &str) -> Result<(), UpgradeError> {
    if !expected.eq_ignore_ascii_case(actual) {
        return Err(UpgradeError::Checksum { asset: asset.into(), expected: expected.into(), actual: actual.into() });
    }
    Ok(())
}

/// With trusted keys configured: the `<asset>.minisig` sidecar must be a valid signature of the
/// file by one of them, and its trusted comment must name this asset (and, when it says, this
/// version), so an old signed binary cannot be replayed as a new version. Fails closed.
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
    let sig = Signature::decode(&text).map_err(|e| fail(format!("the signature file is corrupt ({e})")))?;
    check_trusted_comment(sig.trusted_comment(), &asset, &release.version.to_string()).map_err(fail)?;
    let key = keys
        .iter()
        .filter_map(|k| PublicKey::from_base64(k).ok())
        .find(|k| k.verify_stream(&sig).is_ok())
        .ok_or_else(|| fail("signed by a key that is not in trusted_keys".into()))?;
    let mut verifier = key.verify_stream(&sig).map_err(|e| fail(e.to_string()))?;
    let mut f = std::fs::File::open(file).map_err(|e| UpgradeError::io("the downloaded file", file, e))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| UpgradeError::io("the downloaded file", file, e))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]);
    }
    verifier.finalize().map_err(|_| fail("the signature does not match the downloaded bytes".into()))?;
    tracing::info!(asset, "signature verified");
    Ok(())
}

/// The trusted comment (`key:value` fields separated by tabs, as minisign writes them) must
/// carry `file:<asset>`; a `version:` field, when present, must be this version.
fn check_trusted_comment(comment: &str, asset: &str, version: &str) -> Result<(), String> {
    let fields: Vec<(&str, &str)> = comment.split('\t').filter_map(|f| f.split_once(':')).collect();
    let get = |k: &str| fields.iter().find(|(key, _)| key.trim() == k).map(|(_, v)| v.trim());
    match get("file") {
        Some(f) if f == asset => {}
        Some(f) => return Err(format!("the signature is for file {f:?}, not {asset:?}")),
        None => return Err(format!("the signature's trusted comment names no file ({comment:?})")),
    }
    match get("version") {
        Some(v) if v != version => Err(format!("the signature is for version {v}, not {version}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_comment_must_name_the_file_and_version() {
        let ok = "timestamp:1700000000\tfile:agent-1.2.0-linux-x86_64\tversion:1.2.0";
        assert_eq!(check_trusted_comment(ok, "agent-1.2.0-linux-x86_64", "1.2.0"), Ok(()));
        let plain_minisign = "timestamp:1700000000\tfile:agent-1.2.0-linux-x86_64\thashed";
        assert_eq!(check_trusted_comment(plain_minisign, "agent-1.2.0-linux-x86_64", "1.2.0"), Ok(()));
        assert!(check_trusted_comment(ok, "agent-1.3.0-linux-x86_64", "1.3.0")
            .unwrap_err()
            .contains("not \"agent-1.3.0"));
        let replay = "file:agent-1.2.0-linux-x86_64\tversion:1.1.0";
        assert!(check_trusted_comment(replay, "agent-1.2.0-linux-x86_64", "1.2.0")
            .unwrap_err()
            .contains("version 1.1.0"));
        assert!(check_trusted_comment("timestamp:1", "a", "1.0.0").is_err());
    }
}
