//! The executable header reader behind `agent release publish` (`release/src/header.rs`): any
//! bytes give a platform the agent names, or none.
#![no_main]

use edge_agent_release::header::platform_of;
use libfuzzer_sys::fuzz_target;

const KNOWN: &[&str] = &[
    "linux-x86_64",
    "linux-aarch64",
    "linux-arm",
    "linux-riscv64",
    "linux-x86",
    "macos-x86_64",
    "macos-aarch64",
    "windows-x86_64",
    "windows-aarch64",
];

fuzz_target!(|data: &[u8]| {
    if let Some(platform) = platform_of(data) {
        assert!(KNOWN.contains(&platform.as_str()), "{platform}");
    }
});
