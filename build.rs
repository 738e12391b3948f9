//! Stamps the build: the version the binary reports (overridable with `EDGE_AGENT_VERSION`, so a
//! release pipeline or a test can build a genuinely different version), the target triple and the
//! commit it was built from.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EDGE_AGENT_VERSION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    let version = std::env::var("EDGE_AGENT_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap());
    if semver::Version::parse(&version).is_err() {
        panic!("EDGE_AGENT_VERSION={version:?} is not a semantic version (X.Y.Z)");
    }
    println!("cargo:rustc-env=EDGE_AGENT_VERSION={version}");
    println!("cargo:rustc-env=EDGE_AGENT_TARGET={}", std::env::var("TARGET").unwrap());
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EDGE_AGENT_COMMIT={commit}");
}
