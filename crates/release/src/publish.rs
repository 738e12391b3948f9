//! `agent release publish`: lays out a release directory that any static web server can host
//! (protocol.md §3.2): `download/v<V>/<asset>` with `.sha256` and, with a key, `.minisig`
//! sidecars; `v<V>.json`; `all.json`; `latest.json`, moved only to the highest release that
//! is not a pre-release; and `keys/<id>.pub`, the public key of each key that signed a release. Every file is written atomically; publishing the same bytes again is a
//! no-op, different bytes under an existing version are refused.

use std::path::{Path, PathBuf};

use edge_agent_base::fs::write_atomic;
use edge_agent_base::id::hex;
use edge_agent_base::time::now_iso;
use semver::Version;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::manifest::asset_name;
use crate::{header, keys, signature, variants};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("'{0}' is not a valid version (expected X.Y.Z, optionally with a pre-release)")]
    Version(String),
    #[error("cannot read artifact {path}: {source}")]
    Artifact { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot tell the platform of {path}: it is no ELF, Mach-O or PE executable; give it as {path}:<os>-<arch>"
    )]
    UnknownPlatform { path: PathBuf },
    #[error("{path} is a {actual} executable, not {claimed}")]
    WrongPlatform { path: PathBuf, actual: String, claimed: String },
    #[error("'{0}' is not a platform: expected <os>-<arch>, e.g. linux-x86_64")]
    BadPlatform(String),
    #[error("two artifacts for {0}")]
    Duplicate(String),
    #[error("version {version} already has {asset} with different bytes: publish a new version instead")]
    Conflict { version: String, asset: String },
    #[error("{path} is not a valid release manifest: {detail}")]
    BadManifest { path: PathBuf, detail: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Compress(#[from] variants::CompressError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}

/// One artifact on the command line: `PATH` or `PATH:os-arch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub path: PathBuf,
    pub platform: Option<String>,
}

impl std::str::FromStr for Artifact {
    type Err = PublishError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((path, platform)) if !path.is_empty() => {
                let valid = platform.split_once('-').is_some_and(|(os, arch)| !os.is_empty() && !arch.is_empty());
                if !valid {
                    return Err(PublishError::BadPlatform(platform.into()));
                }
                Ok(Artifact { path: path.into(), platform: Some(platform.into()) })
            }
            _ => Ok(Artifact { path: s.into(), platform: None }),
        }
    }
}

/// What `publish` did, for the operator.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub added: Vec<String>,
    /// The compressed copies and patches written, a line each.
    pub variants: Vec<String>,
    pub unchanged: Vec<String>,
    pub latest_moved: bool,
}

pub struct Publish<'a> {
    pub dir: &'a Path,
    pub version: &'a str,
    pub name: &'a str,
    pub artifacts: &'a [Artifact],
    pub key: Option<&'a minisign::SecretKey>,
    pub variants: variants::Options,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PublishError::Write { path: dir.into(), source })?;
    }
    write_atomic(path, bytes).map_err(|source| PublishError::Write { path: path.into(), source })
}

fn read_manifest(path: &Path) -> Result<Option<Value>, PublishError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PublishError::Artifact { path: path.into(), source }),
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| PublishError::BadManifest { path: path.into(), detail: e.to_string() }),
    }
}

/// The platform of an artifact: its header, checked against what the command line claims.
fn platform(a: &Artifact, bytes: &[u8]) -> Result<String, PublishError> {
    match (header::platform_of(bytes), &a.platform) {
        (Some(actual), Some(claimed)) if &actual != claimed => {
            Err(PublishError::WrongPlatform { path: a.path.clone(), actual, claimed: claimed.clone() })
        }
        (Some(actual), _) => Ok(actual),
        (None, Some(claimed)) => Ok(claimed.clone()),
        (None, None) => Err(PublishError::UnknownPlatform { path: a.path.clone() }),
    }
}

pub fn publish(p: Publish<'_>) -> Result<Report, PublishError> {
    let version = Version::parse(p.version).map_err(|_| PublishError::Version(p.version.into()))?;
    let tag = format!("v{version}");
    let manifest_path = p.dir.join(format!("{tag}.json"));
    let mut manifest = read_manifest(&manifest_path)?.unwrap_or_else(
        || json!({"tag_name": tag, "version": version.to_string(), "published_at": now_iso(), "assets": []}),
    );
    let assets = match manifest["assets"].as_array_mut() {
        Some(assets) => assets,
        None => return Err(PublishError::BadManifest { path: manifest_path, detail: "no assets array".into() }),
    };
    let mut report = Report::default();
    let mut seen = Vec::new();
    for a in p.artifacts {
        let bytes = std::fs::read(&a.path).map_err(|source| PublishError::Artifact { path: a.path.clone(), source })?;
        let platform = platform(a, &bytes)?;
        let name = asset_name(p.name, &version, &platform);
        if seen.contains(&name) {
            return Err(PublishError::Duplicate(platform));
        }
        seen.push(name.clone());
        let digest = hex(&Sha256::digest(&bytes));
        let existing = assets.iter().find(|x| x["name"] == name.as_str()).map(|x| x["sha256"] != digest.as_str());
        let has_sig = assets.iter().any(|x| x["name"] == format!("{name}.minisig").as_str());
        match existing {
            Some(true) => return Err(PublishError::Conflict { version: version.to_string(), asset: name }),
            Some(false) if has_sig || p.key.is_none() => {
                report.unchanged.push(name);
                continue;
            }
            _ => {}
        }
        let rel = format!("download/{tag}/{name}");
        if existing.is_none() {
            write(&p.dir.join(&rel), &bytes)?;
            write(&p.dir.join(format!("{rel}.sha256")), format!("{digest}  {name}\n").as_bytes())?;
            let mut entry = json!({"name": name, "browser_download_url": rel, "size": bytes.len(), "sha256": digest});
            let bases = bases(p.dir, p.name, &platform, &version, p.variants.patches);
            let (files, lines) = variants::make(&rel, &bytes, &bases, p.variants, &mut entry)?;
            for f in files {
                write(&p.dir.join(&f.rel), &f.bytes)?;
            }
            report.variants.extend(lines.into_iter().map(|l| format!("{name}: {l}")));
            assets.push(entry);
            assets.push(json!({"name": format!("{name}.sha256"), "browser_download_url": format!("{rel}.sha256")}));
        }
        if let Some(sk) = p.key {
            sign(p.dir, &rel, &name, &version, &bytes, sk)?;
            assets.push(json!({"name": format!("{name}.minisig"), "browser_download_url": format!("{rel}.minisig")}));
        }
        report.added.push(name);
    }
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    if !report.added.is_empty() {
        write(&manifest_path, &manifest_bytes)?;
    }
    report.latest_moved = update_indexes(p.dir, &version, &manifest_bytes, !report.added.is_empty())?;
    Ok(report)
}

/// Writes `<rel>.minisig`: a signature of `bytes` whose trusted comment names the file and the
/// version, so that it cannot be replayed as another; and records the public key in `keys/`.
fn sign(
    dir: &Path,
    rel: &str,
    name: &str,
    version: &Version,
    bytes: &[u8],
    sk: &minisign::SecretKey,
) -> Result<(), PublishError> {
    let pk = keys::public_of(sk)?;
    keys::record_public(dir, &pk)?;
    let comment = signature::trusted_comment(name, version, unix_now());
    let sig = minisign::sign(Some(&pk), sk, bytes, Some(&comment), Some("signature from edge-agent release key"))
        .map_err(|e| keys::KeyError::Minisign(e.to_string()))?;
    write(&dir.join(format!("{rel}.minisig")), sig.into_string().as_bytes())
}

/// The binaries of the (at most) `k` versions published before `version` for `platform`, each
/// checked against the sha256 its manifest published; one that is missing or does not match is
/// skipped with a warning (a patch is only as good as its base).
fn bases(dir: &Path, name: &str, platform: &str, version: &Version, k: usize) -> Vec<variants::Base> {
    let mut earlier: Vec<Version> = published_versions(dir).into_iter().filter(|v| v < version).collect();
    earlier.sort_by(|a, b| b.cmp(a));
    let base = |v: &Version| -> Option<variants::Base> {
        let manifest = read_manifest(&dir.join(format!("v{v}.json"))).ok()??;
        let asset_name = asset_name(name, v, platform);
        let asset = manifest["assets"].as_array()?.iter().find(|a| a["name"] == asset_name.as_str())?.clone();
        let path = dir.join(asset["browser_download_url"].as_str()?);
        let bytes = std::fs::read(&path).ok()?;
        if asset["sha256"].as_str() != Some(hex(&Sha256::digest(&bytes)).as_str()) {
            eprintln!("warning: {} does not match the sha256 published for it: no patch from {v}", path.display());
            return None;
        }
        Some(variants::Base { version: v.clone(), bytes })
    };
    earlier.iter().filter_map(base).take(k).collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The versions with a manifest in `dir`.
fn published_versions(dir: &Path) -> Vec<Version> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix('v')?.strip_suffix(".json").and_then(|v| Version::parse(v).ok())
        })
        .collect()
}

/// Rewrites `all.json` from the manifests present, and points `latest.json` at `version` when it
/// is the highest release that is not a pre-release. Returns whether `latest.json` was written.
fn update_indexes(dir: &Path, version: &Version, manifest: &[u8], changed: bool) -> Result<bool, PublishError> {
    std::fs::read_dir(dir).map_err(|source| PublishError::Write { path: dir.into(), source })?;
    let mut versions = published_versions(dir);
    versions.sort_by(|a, b| b.cmp(a));
    let list: Vec<String> = versions.iter().map(Version::to_string).collect();
    write(&dir.join("all.json"), serde_json::to_string_pretty(&json!({"versions": list})).unwrap().as_bytes())?;
    let highest_stable = versions.iter().find(|v| v.pre.is_empty());
    let current = read_manifest(&dir.join("latest.json"))?.and_then(|m| m["version"].as_str().map(str::to_owned));
    if highest_stable == Some(version) && (changed || current.as_deref() != Some(&version.to_string())) {
        write(&dir.join("latest.json"), manifest)?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_parse_with_and_without_a_platform() {
        assert_eq!("a/b".parse::<Artifact>().unwrap(), Artifact { path: "a/b".into(), platform: None });
        let a: Artifact = "dist/agent:linux-aarch64".parse().unwrap();
        assert_eq!(a.platform.as_deref(), Some("linux-aarch64"));
        assert!("dist/agent:linux".parse::<Artifact>().is_err());
    }

    #[test]
    fn signing_records_the_public_key_beside_the_releases() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("agent");
        std::fs::write(&bin, b"#!/bin/sh\necho hi\n").unwrap();
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let rel = dir.path().join("releases");
        let artifacts = [Artifact { path: bin, platform: Some("linux-x86_64".into()) }];
        let variants = variants::Options { level: 1, patches: 0 };
        let p = |key| Publish { dir: &rel, version: "1.0.0", name: "agent", artifacts: &artifacts, key, variants };
        publish(p(None)).unwrap();
        assert_eq!(keys::recorded_public(&rel).unwrap(), Vec::<String>::new(), "no key: nothing recorded");
        publish(p(Some(&kp.sk))).unwrap();
        assert_eq!(keys::recorded_public(&rel).unwrap(), vec![kp.pk.to_base64()]);
    }
}
