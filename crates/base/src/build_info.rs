//! What this binary was built as: version, target triple, commit. Every crate that needs a build
//! fact reads it here. The target and the commit are stamped by `build.rs`; the version by the
//! binary itself ([`stamp_version!`], first thing in its `main`), so that building another version
//! (`EDGE_AGENT_VERSION`) compiles the binary again and none of the libraries.

use std::sync::OnceLock;

use semver::Version;

/// The version these sources build as, unless `EDGE_AGENT_VERSION` names another when a binary is
/// built. What a running binary reports is [`version_str`].
pub const SOURCE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The target triple this binary was built for.
pub const TARGET: &str = env!("EDGE_AGENT_TARGET");
/// The commit this binary was built from.
pub const COMMIT: &str = env!("EDGE_AGENT_COMMIT");

static STAMPED: OnceLock<&'static str> = OnceLock::new();

/// Records the version the binary was built as; [`stamp_version!`] calls it. The first call holds.
pub fn stamp(version: &'static str) {
    assert!(Version::parse(version).is_ok(), "{version:?} is not a semantic version");
    let _ = STAMPED.set(version);
}

/// The version this binary was built as: `EDGE_AGENT_VERSION` when it was built, else
/// [`SOURCE_VERSION`] (also in a library's own tests, which no binary stamps).
pub fn version_str() -> &'static str {
    STAMPED.get().copied().unwrap_or(SOURCE_VERSION)
}

/// [`version_str`], parsed once (only a semantic version is stamped).
pub fn version() -> &'static Version {
    static PARSED: OnceLock<Version> = OnceLock::new();
    PARSED.get_or_init(|| Version::parse(version_str()).expect("a stamped version is a semantic version"))
}

/// Stamps the binary this expands in with the version it is built as: `EDGE_AGENT_VERSION` at its
/// build (a build of another version fails to compile if it is not `X.Y.Z`, with an optional
/// `-pre` and `+build`), else [`SOURCE_VERSION`]. Call it first thing in `main`.
#[macro_export]
macro_rules! stamp_version {
    () => {{
        const VERSION: &str = match option_env!("EDGE_AGENT_VERSION") {
            Some(v) if !v.is_empty() => v,
            _ => $crate::build_info::SOURCE_VERSION,
        };
        const _: () =
            assert!($crate::build_info::is_semver(VERSION), "EDGE_AGENT_VERSION is not a semantic version (X.Y.Z)");
        $crate::build_info::stamp(VERSION)
    }};
}

/// Whether `v` is a semantic version as [`semver`] reads one (`X.Y.Z`, then an optional `-pre` and
/// `+build` of dot-separated `[0-9A-Za-z-]` identifiers), at compile time. Numbers of more than
/// 19 digits are refused (semver takes those up to `u64::MAX`).
pub const fn is_semver(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    // Three numbers, no leading zeros.
    let mut part = 0;
    while part < 3 {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || (b[start] == b'0' && i - start > 1) || i - start > 19 {
            return false;
        }
        part += 1;
        if part < 3 {
            if i >= b.len() || b[i] != b'.' {
                return false;
            }
            i += 1;
        }
    }
    // Then `-pre` and `+build`, each dot-separated non-empty identifiers.
    let mut section = 0;
    while i < b.len() {
        let sep = b[i];
        if (sep == b'-' && section == 0) || (sep == b'+' && section < 2) {
            section = if sep == b'-' { 1 } else { 2 };
        } else {
            return false;
        }
        i += 1;
        loop {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
                i += 1;
            }
            if i == start {
                return false;
            }
            // A numeric identifier of a pre-release has no leading zero either.
            let mut numeric = true;
            let mut j = start;
            while j < i {
                numeric &= b[j].is_ascii_digit();
                j += 1;
            }
            if section == 1 && numeric && b[start] == b'0' && i - start > 1 {
                return false;
            }
            if i < b.len() && b[i] == b'.' {
                i += 1;
                continue;
            }
            break;
        }
    }
    true
}

/// `linux-x86_64`, `linux-aarch64`, `linux-armv7`, `macos-aarch64`, …: the platform this binary
/// was built for, as release assets name it.
pub fn platform() -> String {
    platform_of(std::env::consts::OS, std::env::consts::ARCH, TARGET)
}

/// The platform name of an OS, an architecture (as Rust names them) and a target triple. Rust
/// calls every 32-bit ARM `arm`; ARMv7 with hardware floating point (Debian's armhf) is
/// `armv7`, so its assets are never taken by an ARMv6 or soft-float build, which stays `arm`.
pub fn platform_of(os: &str, arch: &str, target: &str) -> String {
    let arch = match arch {
        "arm" if target.starts_with("armv7-") && target.ends_with("hf") => "armv7",
        other => other,
    };
    format!("{os}-{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compile_time_check_agrees_with_semver() {
        let cases = [
            "0.1.0",
            "1.2.3",
            "10.20.30",
            "1.0.0-rc.1",
            "1.0.0-alpha-1",
            "1.0.0+build.5",
            "1.0.0-rc.1+b-2",
            "1.0.0-0",
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-a..b",
            "1.2.3-a.",
            "1.2.3 ",
            " 1.2.3",
            "1.2.3-é",
            "1.2.3+a+b",
            "1.2.3+a-b",
            "v1.2.3",
            "1.2.x",
            "1..3",
            "99999999999999999999.0.0",
            "1.0.0-01",
            "1.0.0-0a",
            "1.0.0+01",
            "1.0.0-rc.01",
        ];
        for v in cases {
            assert_eq!(is_semver(v), Version::parse(v).is_ok(), "{v:?}");
        }
    }

    #[test]
    fn an_unstamped_binary_is_the_source_version() {
        assert_eq!(version_str(), SOURCE_VERSION);
        assert_eq!(version().to_string(), SOURCE_VERSION);
    }

    #[test]
    fn platform_names() {
        let cases = [
            ("linux", "x86_64", "x86_64-unknown-linux-gnu", "linux-x86_64"),
            ("linux", "aarch64", "aarch64-unknown-linux-gnu", "linux-aarch64"),
            ("linux", "arm", "armv7-unknown-linux-gnueabihf", "linux-armv7"),
            ("linux", "arm", "armv7-unknown-linux-musleabihf", "linux-armv7"),
            ("linux", "arm", "armv7-unknown-linux-gnueabi", "linux-arm"),
            ("linux", "arm", "arm-unknown-linux-gnueabihf", "linux-arm"),
            ("windows", "x86_64", "x86_64-pc-windows-gnu", "windows-x86_64"),
        ];
        for (os, arch, target, want) in cases {
            assert_eq!(platform_of(os, arch, target), want, "{target}");
        }
    }
}
