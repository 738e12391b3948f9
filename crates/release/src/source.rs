//! Which file to download for a release asset, a pure decision: a patch made against the running
//! binary, the compressed copy, or the asset itself, smallest first; the asset itself always
//! comes last, as the fallback of the others. A patch is used only when the sha256 of the binary
//! it was made against is the running binary's: a patch for another base is never applied.

use crate::manifest::{is_sha256, Asset, Variant};

/// The `format` of a compressed copy and of a patch in a release manifest.
pub const ZSTD: &str = "zstd";
pub const ZSTD_PATCH: &str = "zstd-patch";

/// What a download is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A zstd patch, decoded with the running binary (this version) as its reference.
    Patch { from_version: String },
    /// A zstd-compressed copy of the asset.
    Compressed,
    /// The asset's bytes.
    Raw,
}

/// One file that yields the asset's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub kind: Kind,
    /// Relative to the manifest, as published.
    pub url: String,
    /// The file's size as published (a variant's always; the asset's when the manifest says).
    pub size: Option<u64>,
    /// A variant's own sha256; None for the asset, which is checked against its checksum.
    pub sha256: Option<String>,
}

impl Source {
    /// For logs: "patch from 1.4.1", "compressed", "full".
    pub fn label(&self) -> String {
        match &self.kind {
            Kind::Patch { from_version } => format!("patch from {from_version}"),
            Kind::Compressed => "compressed".into(),
            Kind::Raw => "full".into(),
        }
    }
}

/// Whether a patch could be used, so that the running binary is worth hashing.
pub fn has_patches(asset: &Asset) -> bool {
    asset.size.is_some() && !asset.patches.is_empty()
}

/// The files to try, in order: the usable variants smallest first (at most one patch), then the
/// asset itself. A variant is usable when its format is known, its size and sha256 are published
/// and it is smaller than the asset (whose size must be published: it is the decoded length);
/// a patch, when `running_sha256` is the sha256 it was made against.
pub fn plan(asset: &Asset, running_sha256: Option<&str>) -> Vec<Source> {
    let raw = Source { kind: Kind::Raw, url: asset.browser_download_url.clone(), size: asset.size, sha256: None };
    let Some(raw_size) = asset.size.filter(|s| *s > 0) else { return vec![raw] };
    let usable = |v: &&Variant| v.size.is_some_and(|s| s < raw_size) && v.sha256.as_deref().is_some_and(is_sha256);
    let source = |v: &Variant, kind| Source {
        kind,
        url: v.browser_download_url.clone(),
        size: v.size,
        sha256: v.sha256.clone(),
    };
    let patch = asset
        .patches
        .iter()
        .filter(|p| p.format == ZSTD_PATCH)
        .filter(|p| {
            let base = p.from_sha256.as_deref().filter(|b| is_sha256(b));
            base.zip(running_sha256).is_some_and(|(b, r)| b.eq_ignore_ascii_case(r))
        })
        .filter(usable)
        .min_by_key(|p| p.size)
        .map(|p| source(p, Kind::Patch { from_version: p.from_version.clone().unwrap_or_else(|| "?".into()) }));
    let compressed =
        asset.compressed.iter().filter(|c| c.format == ZSTD).find(usable).map(|c| source(c, Kind::Compressed));
    let mut sources: Vec<Source> = patch.into_iter().chain(compressed).collect();
    sources.sort_by_key(|s| s.size);
    sources.push(raw);
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OTHER: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const SHA: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn variant(format: &str, url: &str, size: u64, from: Option<&str>) -> Variant {
        Variant {
            format: format.into(),
            browser_download_url: url.into(),
            size: Some(size),
            sha256: Some(SHA.into()),
            from_version: from.map(|_| "1.0.0".into()),
            from_sha256: from.map(Into::into),
        }
    }

    fn asset(size: Option<u64>, compressed: Option<Variant>, patches: Vec<Variant>) -> Asset {
        Asset {
            name: "agent-1.1.0-linux-x86_64".into(),
            browser_download_url: "raw".into(),
            size,
            sha256: Some(SHA.into()),
            compressed,
            patches,
        }
    }

    fn urls(a: &Asset, running: Option<&str>) -> Vec<String> {
        plan(a, running).into_iter().map(|s| s.url).collect()
    }

    #[test]
    fn the_smallest_usable_file_comes_first_and_the_asset_last() {
        let zst = || Some(variant(ZSTD, "zst", 400, None));
        let patch = |base, size| variant(ZSTD_PATCH, "patch", size, Some(base));
        let cases: Vec<(&str, Asset, Option<&str>, Vec<&str>)> = vec![
            (
                "patch, compressed, raw",
                asset(Some(1000), zst(), vec![patch(RUNNING, 50)]),
                Some(RUNNING),
                vec!["patch", "zst", "raw"],
            ),
            (
                "base hash in capitals",
                asset(Some(1000), zst(), vec![patch(&RUNNING.to_uppercase(), 50)]),
                Some(RUNNING),
                vec!["patch", "zst", "raw"],
            ),
            (
                "patch for another base",
                asset(Some(1000), zst(), vec![patch(OTHER, 50)]),
                Some(RUNNING),
                vec!["zst", "raw"],
            ),
            ("running hash unknown", asset(Some(1000), zst(), vec![patch(RUNNING, 50)]), None, vec!["zst", "raw"]),
            ("no variants", asset(Some(1000), None, vec![]), Some(RUNNING), vec!["raw"]),
            ("asset size unknown", asset(None, zst(), vec![patch(RUNNING, 50)]), Some(RUNNING), vec!["raw"]),
            (
                "a patch larger than the compressed copy",
                asset(Some(1000), zst(), vec![patch(RUNNING, 600)]),
                Some(RUNNING),
                vec!["zst", "patch", "raw"],
            ),
            ("a compressed copy larger than the asset", asset(Some(300), zst(), vec![]), Some(RUNNING), vec!["raw"]),
            ("unknown format", asset(Some(1000), Some(variant("xz", "xz", 10, None)), vec![]), None, vec!["raw"]),
        ];
        for (name, a, running, want) in cases {
            assert_eq!(urls(&a, running), want, "{name}");
        }
    }

    #[test]
    fn of_several_patches_for_this_base_the_smallest_is_tried_once() {
        let mut big = variant(ZSTD_PATCH, "big", 90, Some(RUNNING));
        big.from_version = Some("1.0.1".into());
        let small = variant(ZSTD_PATCH, "small", 30, Some(RUNNING));
        let other = variant(ZSTD_PATCH, "other", 10, Some(OTHER));
        let p = plan(&asset(Some(1000), None, vec![big, other, small]), Some(RUNNING));
        assert_eq!(p.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(), ["small", "raw"]);
        assert_eq!(p[0].label(), "patch from 1.0.0");
        assert_eq!(p[0].sha256.as_deref(), Some(SHA));
    }

    #[test]
    fn variants_without_a_valid_size_or_hash_are_skipped() {
        let mut no_hash = variant(ZSTD, "zst", 10, None);
        no_hash.sha256 = Some("not-a-hash".into());
        let mut no_size = variant(ZSTD_PATCH, "patch", 10, Some(RUNNING));
        no_size.size = None;
        let mut bad_base = variant(ZSTD_PATCH, "patch", 10, Some("aa"));
        bad_base.from_sha256 = Some("aa".into());
        assert_eq!(urls(&asset(Some(1000), Some(no_hash), vec![no_size, bad_base]), Some("aa")), ["raw"]);
    }
}
