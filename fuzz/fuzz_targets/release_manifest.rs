//! A release manifest as the agent reads it (`upgrade/resolve.rs`): parsed and checked, the asset
//! for a platform chosen, its URL resolved against the manifest's, its checksum read, and the
//! download planned (patch, compressed copy, or the asset itself).
#![no_main]

use edge_agent_release::manifest::{self, digest_of};
use edge_agent_release::source::{plan, Kind};
use libfuzzer_sys::fuzz_target;

const PLATFORMS: &[&str] = &["linux-x86_64", "linux-aarch64", "macos-aarch64", "windows-x86_64", ""];
const MANIFEST_URL: &str = "https://releases.example/agent/v1.2.3/manifest.json";
const RUNNING_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the platform, whether a version was asked for, and whether the
    // running binary's sha256 is known.
    let Some((&pick, body)) = data.split_first() else { return };
    let Ok(body) = std::str::from_utf8(body) else { return };
    let platform = PLATFORMS[usize::from(pick) % PLATFORMS.len()];
    let wanted = (pick & 0x10 != 0).then(|| semver::Version::new(1, 2, 3));
    let running = (pick & 0x20 != 0).then_some(RUNNING_SHA256);
    let Ok((parsed, version)) = manifest::parse(body, wanted.as_ref()) else { return };
    if let Some(w) = &wanted {
        assert_eq!(&version, w);
    }
    let url = url::Url::parse(MANIFEST_URL).unwrap();
    let Ok(release) = manifest::select(parsed, version, url, platform) else { return };
    assert!(release.asset.name.ends_with(&manifest::asset_suffix(platform)));
    if let Some(sha) = &release.asset.sha256 {
        if let Ok(d) = digest_of(sha) {
            assert!(manifest::is_sha256(&d));
        }
    }
    let sources = plan(&release.asset, running);
    let (last, variants) = sources.split_last().expect("the asset itself is always planned");
    assert_eq!(last.kind, Kind::Raw);
    assert_eq!(last.url, release.asset.browser_download_url);
    for s in variants {
        // A variant is only ever smaller than the asset it decodes to, and has its own sha256.
        assert!(s.size.is_some() && s.size < release.asset.size);
        assert!(s.sha256.as_deref().is_some_and(manifest::is_sha256));
        if let Kind::Patch { .. } = s.kind {
            assert!(running.is_some());
        }
        let _ = release.manifest_url.join(&s.url);
    }
});
