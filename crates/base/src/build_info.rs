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

/// `linux-x86_64`, `macos-aarch64`, …: the platform this binary was built for, as release assets
/// name it.
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}
