//! A release manifest (protocol.md §3.2): Medplum's shape (`tag_name`, `version`, `assets` with
//! `name` and `browser_download_url`) plus our per-asset `size`, `sha256`, and the compressed
//! copy and patches of an asset; which asset is built for a platform; and what a published
//! checksum says. Pure: the agent fetches, this reads.

use semver::Version;
use serde::Deserialize;
use url::Url;

use edge_agent_wire::parse_version;

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

/// A release resolved for one platform: what to download and where its sidecars are.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub version: Version,
    pub asset: Asset,
    pub url: Url,
    /// The manifest's URL; sidecars resolve against it.
    pub manifest_url: Url,
}

/// What is wrong with a manifest, or what it lacks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest is not what protocol.md §3.2 describes.
    #[error("{0}")]
    Invalid(String),
    /// Medplum's words for a release without an asset for this platform.
    #[error("No download URL found for release 'v{version}' for {platform}")]
    NoAsset { version: Version, platform: String },
}

/// The file name suffix of an asset built for `platform` (`linux-x86_64`, `windows-x86_64`, …):
/// `-<platform>`, and `.exe` for Windows.
pub fn asset_suffix(platform: &str) -> String {
    let exe = if platform.starts_with("windows-") { ".exe" } else { "" };
    format!("-{platform}{exe}")
}

/// The name `agent release publish` gives an asset: `<prefix>-<version>-<platform>[.exe]`.
pub fn asset_name(prefix: &str, version: &Version, platform: &str) -> String {
    format!("{prefix}-{version}{}", asset_suffix(platform))
}

/// Reads a manifest and checks its shape: a `tag_name` with a `v`, a version that agrees with it
/// (and with `wanted`, when one was asked for), assets that all have a name and a URL. Its
/// version.
pub fn parse(body: &str, wanted: Option<&Version>) -> Result<(Manifest, Version), ManifestError> {
    let bad = ManifestError::Invalid;
    let manifest: Manifest = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
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
    Ok((manifest, version))
}

/// The asset named `<anything>-<os>-<arch>` (plus `.exe` on Windows) for `platform`, with its URL
/// resolved against the manifest's own (so a release directory can be copied to any host).
pub fn select(
    manifest: Manifest,
    version: Version,
    manifest_url: Url,
    platform: &str,
) -> Result<Release, ManifestError> {
    let suffix = asset_suffix(platform);
    let asset = manifest
        .assets
        .into_iter()
        .find(|a| a.name.ends_with(&suffix))
        .ok_or_else(|| ManifestError::NoAsset { version: version.clone(), platform: platform.to_string() })?;
    let url = manifest_url
        .join(&asset.browser_download_url)
        .map_err(|e| ManifestError::Invalid(format!("asset URL {:?}: {e}", asset.browser_download_url)))?;
    Ok(Release { version, asset, url, manifest_url })
}

/// The sha256 a checksum text names (an inline `sha256` field, or a `.sha256` sidecar in
/// `sha256sum` format: the hex digest, optionally followed by the file name), in lowercase.
pub fn digest_of(text: &str) -> Result<String, ManifestError> {
    let digest = text.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
    if is_sha256(&digest) {
        Ok(digest)
    } else {
        Err(ManifestError::Invalid(format!("{text:?} is not a sha256 digest")))
    }
}

/// Whether `s` is a sha256 digest in hex (either case).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
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
    fn each_platform_takes_its_own_asset_and_never_another() {
        let url = Url::parse("https://mirror.example/releases/v1.4.2.json").unwrap();
        let platforms = ["linux-x86_64", "linux-aarch64", "linux-armv7", "linux-arm", "windows-x86_64"];
        let all: Vec<String> = platforms.iter().map(|p| asset_name("agent", &Version::new(1, 4, 2), p)).collect();
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        for (i, platform) in platforms.iter().enumerate() {
            let r = select(manifest(&names), Version::new(1, 4, 2), url.clone(), platform).unwrap();
            assert_eq!(r.asset.name, all[i], "{platform}");
            // Without its own asset, a platform takes none of the others.
            let others: Vec<&str> = names.iter().copied().filter(|n| *n != all[i]).collect();
            assert!(select(manifest(&others), Version::new(1, 4, 2), url.clone(), platform).is_err(), "{platform}");
        }
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
        assert_eq!(asset_name("agent", &Version::new(1, 4, 2), "windows-x86_64"), "agent-1.4.2-windows-x86_64.exe");
    }

    #[test]
    fn a_manifest_must_agree_with_itself_and_the_request() {
        let ok = r#"{"tag_name":"v1.4.2","version":"1.4.2","assets":[{"name":"a","browser_download_url":"u"}]}"#;
        assert_eq!(parse(ok, None).unwrap().1, Version::new(1, 4, 2));
        assert!(parse(ok, Some(&Version::new(1, 4, 3))).unwrap_err().to_string().contains("not 1.4.3"));
        let cases = [
            (r#"{"tag_name":"1.4.2","assets":[{"name":"a","browser_download_url":"u"}]}"#, "does not start with 'v'"),
            (
                r#"{"tag_name":"v1.4.2","version":"1.4.3","assets":[{"name":"a","browser_download_url":"u"}]}"#,
                "disagree",
            ),
            (r#"{"tag_name":"v1.4.2","assets":[]}"#, "no assets"),
            (r#"{"tag_name":"v1.4.2","assets":[{"name":"","browser_download_url":"u"}]}"#, "lacks a name"),
            (r#"{"tag_name":"v1.x","assets":[{"name":"a","browser_download_url":"u"}]}"#, "version:"),
            ("[]", "invalid length"),
            ("{}", "missing field `tag_name`"),
        ];
        for (body, want) in cases {
            let e = parse(body, None).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn checksums_are_read_in_sha256sum_format() {
        let d = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        assert_eq!(digest_of(&format!("{d}  agent-1.4.2-linux-x86_64\n")).unwrap(), d.to_ascii_lowercase());
        assert!(digest_of("not-a-digest").is_err());
        assert!(digest_of("").is_err());
    }
}
