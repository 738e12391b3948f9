//! The smaller files `agent release publish` writes beside an asset: a zstd-compressed copy, and
//! zstd patches from the binaries of the previous versions, made the way `zstd --patch-from`
//! makes them (the old binary as a prefix, a window that covers it, long-distance matching), so
//! that `zstd -d --patch-from=OLD PATCH -o NEW` rebuilds the asset. Agents pick the smallest one
//! they can use ([`crate::source`]); none needs a signature of its own, since what it decodes to
//! is verified as the asset.

use semver::Version;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{get_error_name, CCtx, CParameter};

use edge_agent_base::id::hex;

use crate::source::{ZSTD, ZSTD_PATCH};

/// Defaults for `agent release publish`: zstd's highest level without `--ultra`, and patches
/// from the three versions before.
pub const DEFAULT_LEVEL: i32 = 19;
pub const DEFAULT_PATCHES: usize = 3;

/// A copy or patch that does not save at least this share of the asset is not published.
const WORTH_IT: f64 = 0.95;

/// How to make the variants of an asset.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// zstd level, 1–22.
    pub level: i32,
    /// Patches from this many previous versions (0: none).
    pub patches: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { level: DEFAULT_LEVEL, patches: DEFAULT_PATCHES }
    }
}

/// The window (log2) a patch from `old` to `new` needs, as `zstd --patch-from` sizes it: the
/// larger file's highest bit plus one (the CLI raises its memory limit to match when it decodes
/// with `--patch-from`).
pub fn window_log(old: usize, new: usize) -> u32 {
    let max = old.max(new).max(1) as u64;
    (63 - max.leading_zeros() + 1).clamp(10, if cfg!(target_pointer_width = "64") { 31 } else { 30 })
}

/// What zstd said when it could not encode.
#[derive(Debug, thiserror::Error)]
#[error("zstd: {0}")]
pub struct CompressError(String);

fn zstd_err(code: usize) -> CompressError {
    CompressError(get_error_name(code).to_string())
}

/// `new` compressed, or with `old`, a patch from `old` to `new`.
pub fn encode(new: &[u8], old: Option<&[u8]>, level: i32) -> Result<Vec<u8>, CompressError> {
    let mut cctx = CCtx::try_create().ok_or_else(|| CompressError("cannot allocate an encoder".into()))?;
    cctx.set_parameter(CParameter::CompressionLevel(level)).map_err(zstd_err)?;
    cctx.set_parameter(CParameter::ChecksumFlag(true)).map_err(zstd_err)?;
    if let Some(old) = old {
        cctx.set_parameter(CParameter::WindowLog(window_log(old.len(), new.len()))).map_err(zstd_err)?;
        cctx.set_parameter(CParameter::EnableLongDistanceMatching(true)).map_err(zstd_err)?;
        cctx.ref_prefix(old).map_err(zstd_err)?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(new.len()));
    cctx.compress2(&mut out, new).map_err(zstd_err)?;
    Ok(out)
}

/// A file to publish beside the asset: its path in the release directory, and its bytes.
pub struct File {
    pub rel: String,
    pub bytes: Vec<u8>,
}

/// Keeps `bytes` (to publish at `rel`) when it is worth it next to an asset of `of` bytes; its
/// manifest entry (`extra` added).
fn keep(files: &mut Vec<File>, rel: String, bytes: Vec<u8>, of: usize, extra: Value) -> Option<Value> {
    if bytes.len() as f64 > of as f64 * WORTH_IT {
        return None;
    }
    let mut entry = json!({"browser_download_url": rel, "size": bytes.len(), "sha256": hex(&Sha256::digest(&bytes))});
    for (k, v) in extra.as_object().into_iter().flatten() {
        entry[k] = v.clone();
    }
    files.push(File { rel, bytes });
    Some(entry)
}

/// An earlier release of the same asset: its version, and its binary.
pub struct Base {
    pub version: Version,
    pub bytes: Vec<u8>,
}

/// The compressed copy of `bytes` (the asset published at `rel`) and its patches from `bases`,
/// each kept when it is worth it and added to the asset's manifest entry: the files to write,
/// and a line per file for the operator.
pub fn make(
    rel: &str,
    bytes: &[u8],
    bases: &[Base],
    opts: Options,
    entry: &mut Value,
) -> Result<(Vec<File>, Vec<String>), CompressError> {
    let (mut files, mut lines) = (vec![], vec![]);
    let share = |n: usize| format!("{:.1}%", n as f64 * 100.0 / bytes.len().max(1) as f64);
    let compressed = encode(bytes, None, opts.level)?;
    let size = compressed.len();
    if let Some(c) = keep(&mut files, format!("{rel}.zst"), compressed, bytes.len(), json!({"format": ZSTD})) {
        lines.push(format!("compressed: {size} bytes ({} of the binary)", share(size)));
        entry["compressed"] = c;
    }
    let mut patches = vec![];
    for base in bases {
        let patch = encode(bytes, Some(&base.bytes), opts.level)?;
        let extra = json!({
            "format": ZSTD_PATCH,
            "from_version": base.version.to_string(),
            "from_sha256": hex(&Sha256::digest(&base.bytes)),
        });
        let size = patch.len();
        let rel = format!("{rel}.patch-from-{}.zst", base.version);
        if let Some(p) = keep(&mut files, rel, patch, bytes.len(), extra) {
            lines.push(format!("patch from {}: {size} bytes ({} of the binary)", base.version, share(size)));
            patches.push(p);
        }
    }
    if !patches.is_empty() {
        entry["patches"] = Value::Array(patches);
    }
    Ok((files, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_covers_the_larger_file_as_the_zstd_cli_sizes_it() {
        assert_eq!(window_log(5_000_000, 4_900_000), 23);
        assert_eq!(window_log(37_000_000, 37_100_000), 26);
        assert_eq!(window_log(100 << 20, 100 << 20), 27);
        assert_eq!(window_log(200 << 20, 1), 28);
        assert_eq!(window_log(0, 0), 10);
    }

    #[test]
    fn a_patch_is_small_and_decodes_with_its_base() {
        let old: Vec<u8> = (0..2_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut new = old.clone();
        new[700_000..700_004].copy_from_slice(b"v2.0");
        let patch = encode(&new, Some(&old), 3).unwrap();
        assert!(patch.len() < new.len() / 100, "a patch of {} bytes", patch.len());
        let mut dctx = zstd::zstd_safe::DCtx::create();
        dctx.ref_prefix(&old).unwrap();
        let mut out = Vec::with_capacity(new.len());
        dctx.decompress(&mut out, &patch).unwrap();
        assert!(out == new);
    }
}
