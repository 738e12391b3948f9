//! Where the binaries under test are: `agent` and `agent-server` live in other packages of the
//! workspace, so cargo does not hand their paths to these tests (`CARGO_BIN_EXE_*` is for a
//! package's own binaries). They are built into the same target directory, profile directory
//! included, as this crate: found from `OUT_DIR` (`<target>/<profile>/build/<crate>-<hash>/out`).

use std::path::Path;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let profile_dir = Path::new(&out).ancestors().nth(3).expect("OUT_DIR is inside the target directory");
    let target_dir = profile_dir.parent().expect("a profile directory is inside the target directory");
    println!("cargo:rustc-env=EDGE_AGENT_BIN_DIR={}", profile_dir.display());
    println!("cargo:rustc-env=EDGE_AGENT_TARGET_DIR={}", target_dir.display());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let workspace = Path::new(&manifest).join("../..").canonicalize().expect("the workspace root exists");
    println!("cargo:rustc-env=EDGE_AGENT_WORKSPACE={}", workspace.display());
    println!("cargo:rerun-if-changed=build.rs");
}
