//! The release source (protocol.md §3.2), as the agent reads it: `latest.json` or
//! `v<version>.json` under the locally configured `releases_url` (checked by
//! [`edge_agent_release::manifest`]), the asset built for this platform, and its published
//! checksum. Every file is small and bounded in size.

use edge_agent_base::build_info::VERSION;
use edge_agent_release::manifest::{self, Asset, Manifest, ManifestError, Release};
use reqwest::{StatusCode, Url};
use semver::Version;

use super::error::UpgradeError;

pub const APP_NAME: &str = "edge-agent";
const SMALL_FILE_LIMIT: usize = 1024 * 1024;

fn with_fleet_query(mut url: Url) -> Url {
    url.query_pairs_mut().append_pair("a", APP_NAME).append_pair("c", VERSION);
    url
}

/// A manifest's problem, named with the manifest's URL.
fn manifest_error(url: &Url, e: ManifestError) -> UpgradeError {
    match e {
        ManifestError::Invalid(detail) => UpgradeError::BadManifest { url: url.to_string(), detail },
        ManifestError::NoAsset { version, platform } => UpgradeError::NoAsset { version, platform },
    }
}

/// GETs a small text file (manifest, checksum, signature), bounded in size.
pub async fn get_small(http: &reqwest::Client, url: &Url) -> Result<(StatusCode, String), UpgradeError> {
    let fail = |detail: String| UpgradeError::FetchStatus { url: url.to_string(), detail };
    let unreachable = |source| UpgradeError::Fetch { url: url.to_string(), source };
    let resp = http.get(url.clone()).timeout(std::time::Duration::from_secs(15)).send().await.map_err(unreachable)?;
    let status = resp.status();
    if resp.content_length().is_some_and(|n| n as usize > SMALL_FILE_LIMIT) {
        return Err(fail(format!("larger than {SMALL_FILE_LIMIT} bytes")));
    }
    let body = resp.bytes().await.map_err(unreachable)?;
    if body.len() > SMALL_FILE_LIMIT {
        return Err(fail(format!("larger than {SMALL_FILE_LIMIT} bytes")));
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Fetches the manifest of `wanted` (or of the latest release) and checks its shape: the
/// manifest, the version it describes, and its URL.
pub async fn resolve(
    http: &reqwest::Client,
    releases: &Url,
    wanted: Option<&Version>,
) -> Result<(Manifest, Version, Url), UpgradeError> {
    let file = match wanted {
        Some(v) => format!("v{v}.json"),
        None => "latest.json".to_string(),
    };
    let manifest_url =
        releases.join(&file).map_err(|e| UpgradeError::FetchStatus { url: file.clone(), detail: e.to_string() })?;
    let (status, body) = get_small(http, &with_fleet_query(manifest_url.clone())).await?;
    if status == StatusCode::NOT_FOUND {
        return Err(match wanted {
            Some(v) => UpgradeError::NoSuchVersion { version: v.clone(), url: manifest_url.to_string() },
            None => UpgradeError::FetchStatus {
                url: manifest_url.to_string(),
                detail: "no latest release published (404)".into(),
            },
        });
    }
    if !status.is_success() {
        return Err(UpgradeError::FetchStatus { url: manifest_url.to_string(), detail: format!("HTTP {status}") });
    }
    let (manifest, version) = manifest::parse(&body, wanted).map_err(|e| manifest_error(&manifest_url, e))?;
    Ok((manifest, version, manifest_url))
}

/// The asset of `manifest` built for `platform`.
pub fn select(
    manifest: Manifest,
    version: Version,
    manifest_url: Url,
    platform: &str,
) -> Result<Release, UpgradeError> {
    let url = manifest_url.clone();
    manifest::select(manifest, version, manifest_url, platform).map_err(|e| manifest_error(&url, e))
}

/// The expected sha256 (lowercase hex): inline, else from the `<name>.sha256` sidecar. None
/// published is a refusal: nothing unverified is ever installed.
pub async fn checksum(
    http: &reqwest::Client,
    release: &Release,
    sidecar: Option<&Asset>,
) -> Result<String, UpgradeError> {
    if let Some(inline) = &release.asset.sha256 {
        return manifest::digest_of(inline).map_err(|e| manifest_error(&release.manifest_url, e));
    }
    let Some(sidecar) = sidecar else {
        return Err(UpgradeError::NoChecksum(release.asset.name.clone()));
    };
    let url = release
        .manifest_url
        .join(&sidecar.browser_download_url)
        .map_err(|e| UpgradeError::FetchStatus { url: sidecar.browser_download_url.clone(), detail: e.to_string() })?;
    match get_small(http, &url).await? {
        (StatusCode::OK, text) => manifest::digest_of(&text).map_err(|e| manifest_error(&url, e)),
        (status, _) => Err(UpgradeError::FetchStatus { url: url.to_string(), detail: format!("HTTP {status}") }),
    }
}
