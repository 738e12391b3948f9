//! The agent on ARM Linux under QEMU user mode: the builds `.ci/arm` leaves in `target/arm/e2e/`
//! (this version and the next, for aarch64 and armv7), run through binfmt_misc (which `.ci/arm`
//! registers) so that the agent's own re-executions run emulated too, with QEMU loading each
//! target's shared libraries from Debian's cross sysroot. Tests return early when the ARM job
//! has not run, except under CI (`CI=true`), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use edge_agent_base::build_info::SOURCE_VERSION;

use crate::bins::next_version;

/// One ARM target.
pub struct Arm {
    /// `aarch64` or `armv7`, as the build files are named.
    pub arch: &'static str,
    /// The Rust target triple.
    pub triple: &'static str,
    /// The platform its release assets are named for.
    pub platform: &'static str,
    /// Debian's package architecture.
    pub deb_arch: &'static str,
    /// Debian's cross sysroot, where QEMU finds the target's C library.
    pub sysroot: &'static str,
    /// The cross C compiler.
    pub gcc: &'static str,
    /// The C library's loader, as the target's programs name it (in `/lib`).
    pub loader: &'static str,
    /// `target/arm`.
    pub dir: PathBuf,
}

pub const TARGETS: [(&str, &str, &str, &str, &str, &str, &str); 2] = [
    (
        "aarch64",
        "aarch64-unknown-linux-gnu",
        "linux-aarch64",
        "arm64",
        "/usr/aarch64-linux-gnu",
        "aarch64-linux-gnu-gcc",
        "ld-linux-aarch64.so.1",
    ),
    (
        "armv7",
        "armv7-unknown-linux-gnueabihf",
        "linux-armv7",
        "armhf",
        "/usr/arm-linux-gnueabihf",
        "arm-linux-gnueabihf-gcc",
        "ld-linux-armhf.so.3",
    ),
];

impl Arm {
    /// The build of `version` (this one or [`next_version`]), stripped.
    pub fn build(&self, version: &str) -> PathBuf {
        self.dir.join("e2e").join(format!("agent-{version}-{}", self.arch))
    }

    /// What an emulated process needs in its environment: where its C library is.
    pub fn env(&self) -> [(&'static str, &'static str); 1] {
        [("QEMU_LD_PREFIX", self.sysroot)]
    }

    /// `program` (an ARM executable), run through binfmt_misc with [`Self::env`].
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env());
        cmd
    }

    /// A genuine ARM executable standing in for a broken build of `version`: it answers
    /// `version --json` as that version, and exits 1 when run as the agent.
    pub fn broken_build(&self, dir: &Path, version: &str) -> PathBuf {
        crate::rig::broken_c_build(self.gcc, &dir.join(format!("broken-{version}-{}", self.arch)), version)
    }
}

/// Whether binfmt_misc runs ARM executables of `arch` (`aarch64`, `arm`) through QEMU.
fn registered(arch: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/fs/binfmt_misc/qemu-{arch}")).is_ok_and(|s| s.starts_with("enabled"))
}

/// The two ARM targets with their builds, or None when the builds or QEMU are not there (the
/// test then returns).
pub fn arm() -> Option<&'static [Arm; 2]> {
    static FOUND: OnceLock<Option<[Arm; 2]>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let dir = Path::new(env!("EDGE_AGENT_TARGET_DIR")).join("arm");
            let targets = TARGETS.map(|(arch, triple, platform, deb_arch, sysroot, gcc, loader)| Arm {
                arch,
                triple,
                platform,
                deb_arch,
                sysroot,
                gcc,
                loader,
                dir: dir.clone(),
            });
            let mut missing: Vec<String> = targets
                .iter()
                .flat_map(|a| [a.build(SOURCE_VERSION), a.build(&next_version())])
                .filter(|p| !p.exists())
                .map(|p| p.display().to_string())
                .collect();
            for arch in ["aarch64", "arm"] {
                if !registered(arch) {
                    missing.push(format!("QEMU registered with binfmt_misc for {arch}"));
                }
            }
            if missing.is_empty() {
                return Some(targets);
            }
            let why = format!("missing {}: .ci/arm builds and registers them", missing.join(", "));
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and the ARM tests cannot run: {why}");
            eprintln!("skipping an ARM test: {why}");
            None
        })
        .as_ref()
}
