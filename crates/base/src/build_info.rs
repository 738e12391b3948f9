//! What this binary was built as: version, target triple, commit (stamped by `build.rs`). Every
//! crate that needs a build fact reads it here.

use std::sync::OnceLock;

use semver::Version;

/// The version this binary was built as (`EDGE_AGENT_VERSION` at build time, else the crate's).
pub const VERSION: &str = env!("EDGE_AGENT_VERSION");
/// The target triple this binary was built for.
pub const TARGET: &str = env!("EDGE_AGENT_TARGET");
/// The commit this binary was built from.
pub const COMMIT: &str = env!("EDGE_AGENT_COMMIT");

/// [`VERSION`], parsed once: the build script refuses a version that is not semver.
pub fn version() -> &'static Version {
    static PARSED: OnceLock<Version> = OnceLock::new();
    PARSED.get_or_init(|| Version::parse(VERSION).expect("the build script stamps a valid version"))
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
