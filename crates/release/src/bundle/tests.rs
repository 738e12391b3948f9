//! Bundles: written from a published, signed directory; read back entry by entry; refused when
//! they are not bundles or exceed their limits.

use super::*;
use crate::publish::{self, Artifact, Publish};
use crate::{keys, variants};

/// A release directory with version 1.2.0 for two platforms, signed; the directory and its
/// public key line.
fn published() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let (_, sk) = keys::keygen(&work.path().join("keys"), true, keys::Password::Unavailable).unwrap();
    let sk = keys::load_secret(&sk, keys::Password::Unavailable).unwrap();
    let dir = work.path().join("releases");
    let mut artifacts = vec![];
    for (platform, bytes) in [("linux-x86_64", b"x86 build".as_slice()), ("linux-armv7", b"armv7 build")] {
        let path = work.path().join(platform);
        std::fs::write(&path, bytes).unwrap();
        artifacts.push(Artifact { path, platform: Some(platform.into()) });
    }
    let p = Publish {
        dir: &dir,
        version: "1.2.0",
        name: "agent",
        artifacts: &artifacts,
        key: Some(&sk),
        variants: variants::Options { level: 1, patches: 0 },
    };
    publish::publish(p).unwrap();
    (work, dir)
}

#[test]
fn a_bundle_holds_the_manifest_assets_and_sidecars_and_reads_back() {
    let (work, dir) = published();
    let out = work.path().join("edge-agent-1.2.0.bundle");
    let written = write(&dir, &Version::new(1, 2, 0), &out).unwrap();
    let names: Vec<(&str, bool)> = written.assets.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    assert_eq!(names, [("agent-1.2.0-linux-x86_64", true), ("agent-1.2.0-linux-armv7", true)]);
    assert_eq!(written.bytes, std::fs::metadata(&out).unwrap().len());

    let b = Bundle::open(&out).unwrap();
    assert_eq!(b.manifest_name, "v1.2.0.json");
    assert_eq!(b.manifest, std::fs::read_to_string(dir.join("v1.2.0.json")).unwrap());
    let url = "download/v1.2.0/agent-1.2.0-linux-armv7";
    let mut got = Vec::new();
    assert_eq!(b.copy("agent-1.2.0-linux-armv7", url, 100, &mut got).unwrap(), 11);
    assert_eq!(got, b"armv7 build");
    let sig = b.small_file("sig", &format!("{url}.minisig")).unwrap().unwrap();
    assert!(sig.contains("file:agent-1.2.0-linux-armv7\tversion:1.2.0"), "{sig}");
    assert_eq!(b.small_file("none", "download/v1.2.0/nothing").unwrap(), None);

    // Limits hold whatever the bundle says.
    let e = b.copy("agent-1.2.0-linux-armv7", url, 10, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, BundleError::TooLarge { limit: 10, .. }), "{e}");
    for outside in ["../secret", "/etc/passwd", "https://elsewhere.example/x", "a/../../b"] {
        assert!(matches!(b.copy("x", outside, 100, &mut Vec::new()), Err(BundleError::NotLocal { .. })), "{outside}");
    }
}

#[test]
fn what_is_not_a_bundle_is_refused_with_its_reason() {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("not.bundle");
    std::fs::write(&path, b"plain text, not a tar file at all, and long enough to be read as a header or not").unwrap();
    let e = Bundle::open(&path).unwrap_err().to_string();
    assert!(e.contains("is not a release bundle"), "{e}");

    let tar_of = |entries: &[(&str, &[u8])]| {
        let mut t = tar::Builder::new(Vec::new());
        for (name, bytes) in entries {
            append(&mut t, name, bytes).unwrap();
        }
        std::fs::write(&path, t.into_inner().unwrap()).unwrap();
    };
    tar_of(&[("readme.txt", b"hello")]);
    assert!(Bundle::open(&path).unwrap_err().to_string().contains("holds no release manifest"));
    tar_of(&[("v1.0.0.json", b"{}"), ("v2.0.0.json", b"{}")]);
    assert!(Bundle::open(&path).unwrap_err().to_string().contains("two manifests"));
    let big = vec![b' '; SMALL_LIMIT as usize + 1];
    tar_of(&[("v1.0.0.json", &big)]);
    assert!(matches!(Bundle::open(&path), Err(BundleError::TooLarge { .. })));
    let many: Vec<(String, Vec<u8>)> = (0..=MAX_ENTRIES).map(|i| (format!("f{i}"), vec![])).collect();
    let many: Vec<(&str, &[u8])> = many.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    tar_of(&many);
    assert!(Bundle::open(&path).unwrap_err().to_string().contains("more than 512 entries"));
}

#[test]
fn a_manifest_naming_files_outside_the_directory_is_not_bundled() {
    let (work, dir) = published();
    let path = dir.join("v1.2.0.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"download/v1.2.0/agent-1.2.0-linux-x86_64\"", "\"../outside\"", 1)).unwrap();
    let out = work.path().join("b.tar");
    let e = write(&dir, &Version::new(1, 2, 0), &out).unwrap_err();
    assert!(matches!(e, BundleError::NotLocal { .. }), "{e}");
    assert!(!out.exists(), "nothing is left behind");
    let e = write(&dir, &Version::new(9, 9, 9), &out).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}
