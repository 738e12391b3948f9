//! The release source (protocol.md §3.2): `latest.json` or `v<version>.json` under the locally
//! configured `releases_url`, the asset built for this platform, and its published checksum.

use reqwest::{StatusCode, Url};
use semver::Version;
use serde::Deserialize;

use super::UpgradeError;
use crate::build_info::VERSION;

pub const APP_NAME: &str = "edge-agent";
const SMALL_FILE_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub tag_name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub published_at: Option<String>,
    pub assets: Vec<Asset>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Asset {
    pub name: String,
    pub browser_download_url: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// A zstd-compressed copy of this file, when the release has one.
    #[serde(default)]
    pub compressed: Option<Variant>,
    /// zstd patches that rebuild this file from earlier versions' binaries.
    #[serde(default)]
    pub patches: Vec<Variant>,
}

/// Another way to get an asset's bytes: a compressed copy, or a patch from an earlier binary.
/// Its own `size` and `sha256` cover the file as downloaded; what it decodes to is checked
/// against the asset's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Variant {
    /// `zstd` (a compressed copy) or `zstd-patch` (decoded with the `from` binary as reference).
    pub format: String,
    pub browser_download_url: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// For a patch: the version it applies to, and the sha256 of that version's binary.
    #[serde(default)]
    pub from_version: Option<String>,
    #[serde(default)]
    pub from_sha256: Option<String>,
}

/// A release resolved for this machine: what to download and what it must hash to.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub version: Version,
    pub asset: Asset,
    pub url: Url,
    /// The manifest's URL; sidecars resolve against it.
    pub manifest_url: Url,
}

/// Accepts `1.4.2` and `v1.4.2`: the one place a version text becomes a [`Version`].
pub fn parse_version(s: &str) -> Result<Version, UpgradeError> {
    let t = s.trim();
    Version::parse(t.strip_prefix('v').unwrap_or(t))
        .map_err(|source| UpgradeError::InvalidVersion { text: t.to_string(), source })
}

fn with_fleet_query(mut url: Url) -> Url {
    url.query_pairs_mut().append_pair("a", APP_NAME).append_pair("c", VERSION);
    url
}

/// GETs a small text file (manifest, checksum), bounded in size.
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

/// Fetches the manifest of `wanted` (or of the latest release) and checks its shape.
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
    let bad = |detail: String| UpgradeError::BadManifest { url: manifest_url.to_string(), detail };
    let manifest: Manifest = serde_json::from_str(&body).map_err(|e| bad(e.to_string()))?;
    let tag = manifest
        .tag_name
        .strip_prefix('v')
        .ok_or_else(|| bad(format!("tag_name {:?} does not start with 'v'", manifest.tag_name)))?;
    let version =
        parse_version(manifest.version.as_deref().unwrap_or(tag)).map_err(|e| bad(format!("version: {e}")))?;
    if parse_version(tag).ok().as_ref() != Some(&version) {
        return Err(bad(format!("tag_name {:?} and version {version} disagree", manifest.tag_name)));
    }
    if let Some(w) = wanted {
        if *w != version {
            return Err(bad(format!("it describes version {version}, not {w}")));
        }
    }
    if manifest.assets.is_empty() {
        return Err(bad("no assets".into()));
    }
    if let Some(a) = manifest.assets.iter().find(|a| a.name.is_empty() || a.browser_download_url.is_empty()) {
        return Err(bad(format!("asset {:?} lacks a name or browser_download_url", a.name)));
    }
    Ok((manifest, version, manifest_url))
}

/// The asset named `<anything>-<os>-<arch>` (plus `.exe` on Windows) for this platform.
pub fn select(
    manifest: Manifest,
    version: Version,
    manifest_url: Url,
    platform: &str,
) -> Result<Release, UpgradeError> {
    let exe = if platform.starts_with("windows-") { ".exe" } else { "" };
    let suffix = format!("-{platform}{exe}");
    let asset = manifest
        .assets
        .into_iter()
        .find(|a| a.name.ends_with(&suffix))
        .ok_or_else(|| UpgradeError::NoAsset { version: version.clone(), platform: platform.to_string() })?;
    let url = manifest_url.join(&asset.browser_download_url).map_err(|e| UpgradeError::BadManifest {
        url: manifest_url.to_string(),
        detail: format!("asset URL {:?}: {e}", asset.browser_download_url),
    })?;
    Ok(Release { version, asset, url, manifest_url })
}

/// The expected sha256 (lowercase hex): inline, else from the `<name>.sha256` sidecar. None
/// published is a refusal: nothing unverified is ever installed.
pub async fn checksum(
    http: &reqwest::Client,
    release: &Release,
    sidecar: Option<&Asset>,
) -> Result<String, UpgradeError> {
    let from_text = |text: &str, source: &str| {
        let digest = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
        if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(digest)
        } else {
            Err(UpgradeError::BadManifest {
                url: source.to_string(),
                detail: format!("{text:?} is not a sha256 digest"),
            })
        }
    };
    if let Some(inline) = &release.asset.sha256 {
        return from_text(inline, release.manifest_url.as_str());
    }
    let Some(sidecar) = sidecar else {
        return Err(UpgradeError::NoChecksum(release.asset.name.clone()));
    };
    let url = release
        .manifest_url
        .join(&sidecar.browser_download_url)
        .map_err(|e| UpgradeError::FetchStatus { url: sidecar.browser_download_url.clone(), detail: e.to_string() })?;
    match get_small(http, &url).await? {
        (StatusCode::OK, text) => from_text(&text, url.as_str()),
        (status, _) => Err(UpgradeError::FetchStatus { url: url.to_string(), detail: format!("HTTP {status}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(names: &[&str]) -> Manifest {
        Manifest {
            tag_name: "v1.4.2".into(),
            version: Some("1.4.2".into()),
            published_at: None,
            assets: names
                .iter()
                .map(|n| Asset {
                    name: n.to_string(),
                    browser_download_url: format!("download/v1.4.2/{n}"),
                    size: None,
                    sha256: None,
                    compressed: None,
                    patches: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn picks_this_platforms_asset_and_resolves_relative_urls() {
        let url = Url::parse("https://mirror.example/releases/v1.4.2.json").unwrap();
        let names = ["agent-1.4.2-linux-x86_64.sha256", "agent-1.4.2-linux-aarch64", "agent-1.4.2-linux-x86_64"];
        let r = select(manifest(&names), Version::new(1, 4, 2), url.clone(), "linux-x86_64").unwrap();
        assert_eq!(r.asset.name, "agent-1.4.2-linux-x86_64");
        assert_eq!(r.url.as_str(), "https://mirror.example/releases/download/v1.4.2/agent-1.4.2-linux-x86_64");
        let err = select(manifest(&names), Version::new(1, 4, 2), url, "macos-aarch64").unwrap_err();
        assert_eq!(err.to_string(), "No download URL found for release 'v1.4.2' for macos-aarch64");
    }

    #[test]
    fn a_windows_agent_picks_the_exe() {
        let url = Url::parse("https://mirror.example/releases/v1.4.2.json").unwrap();
        let names =
            ["agent-1.4.2-windows-x86_64.exe.sha256", "agent-1.4.2-linux-x86_64", "agent-1.4.2-windows-x86_64.exe"];
        let r = select(manifest(&names), Version::new(1, 4, 2), url.clone(), "windows-x86_64").unwrap();
        assert_eq!(r.asset.name, "agent-1.4.2-windows-x86_64.exe");
        let without_exe = ["agent-1.4.2-windows-x86_64", "agent-1.4.2-linux-x86_64"];
        assert!(select(manifest(&without_exe), Version::new(1, 4, 2), url, "windows-x86_64").is_err());
    }

    #[test]
    fn versions_may_carry_a_v() {
        assert_eq!(parse_version("v1.2.3").unwrap(), Version::new(1, 2, 3));
        assert!(parse_version("1.2").is_err());
        assert!(parse_version("latest").is_err());
    }
}
