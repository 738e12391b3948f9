//! Offline bundles: one version of a release directory in one file, for hosts with no path to any
//! release source. A bundle is a plain tar file (`tar tf` lists it) laid out as the directory
//! is: the manifest `v<V>.json` first, then each asset it lists with its `.sha256` and `.minisig`
//! sidecars (compressed copies and patches are left out: the asset itself is what is verified).
//! [`write`] makes one from a release directory; [`Bundle`] reads one entry at a time with a
//! limit on each, so a bundle from outside never decides how much is read or kept in memory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use semver::Version;

use crate::manifest::{self, Manifest};

/// The most entries a bundle may hold (a version's assets and sidecars for every platform).
pub const MAX_ENTRIES: usize = 512;
/// The largest manifest or sidecar read from a bundle.
pub const SMALL_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid release manifest: {detail}")]
    BadManifest { path: PathBuf, detail: String },
    #[error("the manifest lists {name} at {url}, outside the release directory: a bundle holds local files only")]
    NotLocal { name: String, url: String },
    #[error("{path} is not a release bundle: {detail}")]
    NotABundle { path: PathBuf, detail: String },
    #[error("the bundle's {name} is larger than {limit} bytes")]
    TooLarge { name: String, limit: u64 },
    #[error("the bundle has no {name}")]
    Missing { name: String },
}

/// What [`write`] put in the bundle.
#[derive(Debug, Default, PartialEq)]
pub struct Written {
    /// The assets (binaries) bundled, each with whether its signature came along.
    pub assets: Vec<(String, bool)>,
    pub bytes: u64,
}

/// The path inside a release directory (and a bundle) of a manifest entry's URL, which must be
/// relative and stay inside it.
fn local_path(name: &str, url: &str) -> Result<String, BundleError> {
    let not_local = || BundleError::NotLocal { name: name.into(), url: url.into() };
    let base = url::Url::parse("bundle:/").expect("a valid base");
    let joined = base.join(url).map_err(|_| not_local())?;
    if joined.scheme() != "bundle" || url.starts_with('/') || url.split('/').any(|s| s == "..") {
        return Err(not_local());
    }
    Ok(joined.path().trim_start_matches('/').to_string())
}

/// Writes version `version` of the release directory `dir` into the bundle `out` (atomically: a
/// temporary file beside it, then a rename).
pub fn write(dir: &Path, version: &Version, out: &Path) -> Result<Written, BundleError> {
    let manifest_name = format!("v{version}.json");
    let manifest_path = dir.join(&manifest_name);
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|source| BundleError::Read { path: manifest_path.clone(), source })?;
    let bad = |detail: String| BundleError::BadManifest { path: manifest_path.clone(), detail };
    let (parsed, _) = manifest::parse(&text, Some(version)).map_err(|e| bad(e.to_string()))?;
    let tmp = out.with_file_name(format!(".{}.{}.tmp", file_name(out), edge_agent_base::id::random_hex(4)));
    let result = write_tar(dir, &parsed, &manifest_name, text.as_bytes(), &tmp).and_then(|written| {
        std::fs::rename(&tmp, out).map_err(|source| BundleError::Write { path: out.into(), source })?;
        Ok(written)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into())
}

fn write_tar(dir: &Path, m: &Manifest, manifest_name: &str, text: &[u8], to: &Path) -> Result<Written, BundleError> {
    let werr = |source| BundleError::Write { path: to.into(), source };
    let mut tar = tar::Builder::new(File::create(to).map_err(werr)?);
    append(&mut tar, manifest_name, text).map_err(werr)?;
    let mut written = Written::default();
    for asset in &m.assets {
        let rel = local_path(&asset.name, &asset.browser_download_url)?;
        let path = dir.join(&rel);
        let bytes = std::fs::read(&path).map_err(|source| BundleError::Read { path: path.clone(), source })?;
        append(&mut tar, &rel, &bytes).map_err(werr)?;
        if !asset.name.ends_with(".sha256") && !asset.name.ends_with(".minisig") {
            let signed = m.assets.iter().any(|a| a.name == format!("{}.minisig", asset.name));
            written.assets.push((asset.name.clone(), signed));
        }
    }
    let file = tar.into_inner().map_err(werr)?;
    file.sync_all().map_err(werr)?;
    written.bytes = file.metadata().map_err(werr)?.len();
    Ok(written)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)
}

/// A bundle being read: its path and its manifest's text.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    /// The manifest's file name (`v<V>.json`) and text.
    pub manifest_name: String,
    pub manifest: String,
}

impl Bundle {
    /// Opens a bundle and reads its manifest: the one `v<V>.json` at its top.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        let mut found: Option<(String, String)> = None;
        let mut bundle = Bundle { path: path.into(), manifest_name: String::new(), manifest: String::new() };
        bundle.each(|name, entry| {
            let is_manifest = name.starts_with('v') && name.ends_with(".json") && !name.contains('/');
            if !is_manifest {
                return Ok(false);
            }
            if let Some((first, _)) = &found {
                let detail = format!("it holds two manifests, {first} and {name}");
                return Err(BundleError::NotABundle { path: path.into(), detail });
            }
            let text = read_limited(name, entry, SMALL_LIMIT)?;
            found = Some((name.to_string(), String::from_utf8_lossy(&text).into_owned()));
            Ok(false)
        })?;
        let (manifest_name, manifest) = found.ok_or_else(|| BundleError::NotABundle {
            path: path.into(),
            detail: "it holds no release manifest (v<version>.json)".into(),
        })?;
        bundle.manifest_name = manifest_name;
        bundle.manifest = manifest;
        Ok(bundle)
    }

    /// The entry that a manifest URL names, when it is small (a sidecar): its text.
    pub fn small_file(&self, name: &str, url: &str) -> Result<Option<String>, BundleError> {
        let mut sink = Vec::new();
        match self.copy(name, url, SMALL_LIMIT, &mut sink) {
            Ok(_) => Ok(Some(String::from_utf8_lossy(&sink).into_owned())),
            Err(BundleError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Copies the entry that a manifest URL names into `to`, refusing one larger than `limit`;
    /// the bytes copied.
    pub fn copy(&self, name: &str, url: &str, limit: u64, to: &mut dyn Write) -> Result<u64, BundleError> {
        let wanted = local_path(name, url)?;
        let mut copied = None;
        self.each(|entry_name, entry| {
            if entry_name != wanted {
                return Ok(false);
            }
            if entry.header().size().unwrap_or(u64::MAX) > limit {
                return Err(BundleError::TooLarge { name: name.into(), limit });
            }
            let n = io::copy(&mut entry.take(limit + 1), to).map_err(|source| self.read_error(source))?;
            if n > limit {
                return Err(BundleError::TooLarge { name: name.into(), limit });
            }
            copied = Some(n);
            Ok(true)
        })?;
        copied.ok_or(BundleError::Missing { name: name.into() })
    }

    fn read_error(&self, source: io::Error) -> BundleError {
        BundleError::Read { path: self.path.clone(), source }
    }

    /// Calls `f` with each regular entry's normalized name until it returns true; at most
    /// [`MAX_ENTRIES`] entries.
    fn each(
        &self,
        mut f: impl FnMut(&str, &mut tar::Entry<'_, File>) -> Result<bool, BundleError>,
    ) -> Result<(), BundleError> {
        let file = File::open(&self.path).map_err(|source| self.read_error(source))?;
        let mut archive = tar::Archive::new(file);
        let not_tar = |e: io::Error| BundleError::NotABundle { path: self.path.clone(), detail: e.to_string() };
        for (i, entry) in archive.entries_with_seek().map_err(not_tar)?.enumerate() {
            if i >= MAX_ENTRIES {
                let detail = format!("it holds more than {MAX_ENTRIES} entries");
                return Err(BundleError::NotABundle { path: self.path.clone(), detail });
            }
            let mut entry = entry.map_err(not_tar)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(not_tar)?.to_string_lossy().trim_start_matches("./").to_string();
            if f(&name, &mut entry)? {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn read_limited(name: &str, entry: &mut impl Read, limit: u64) -> Result<Vec<u8>, BundleError> {
    let mut text = Vec::new();
    let too_large = || BundleError::TooLarge { name: name.into(), limit };
    entry.take(limit + 1).read_to_end(&mut text).map_err(|_| too_large())?;
    if text.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
