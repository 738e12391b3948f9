//! The Windows agent under Wine: the two builds `.ci/windows` leaves in `target/windows/e2e/`
//! (this version and the next), its Wine prefix, Windows paths for files here, and an agent home
//! whose configuration a Windows process can read. Tests return early when the Windows job has
//! not run, except under CI (`CI=true`), where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use edge_agent_base::build_info::SOURCE_VERSION;

use crate::bins::next_version;
use crate::home::{AgentHome, FAST};
use crate::process::Proc;

pub struct Wine {
    /// `target/windows`.
    pub dir: PathBuf,
    /// Held for the whole test run (see [`KeepAlive`]).
    system_up: OnceLock<KeepAlive>,
}

impl Wine {
    /// The Windows build of `version` (this one or [`next_version`]).
    pub fn exe(&self, version: &str) -> PathBuf {
        self.dir.join("e2e").join(format!("agent-{version}.exe"))
    }
    pub fn prefix(&self) -> PathBuf {
        self.dir.join("wine")
    }
    /// `C:\` of the prefix, seen from here.
    pub fn drive_c(&self) -> PathBuf {
        self.prefix().join("drive_c")
    }
    /// `wine <program>` in the prefix, quiet.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("wine");
        cmd.arg(program)
            .env("WINEPREFIX", self.prefix())
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
        cmd
    }
    /// Runs `wine <program> args…` to its end: (success, stdout + stderr). The output goes through
    /// a file, not a pipe: Wine's own processes (the service manager, started by whichever Wine
    /// process comes first) inherit it and outlive the program.
    pub fn run(&self, program: &Path, args: &[&str]) -> (bool, String) {
        let out = tempfile::NamedTempFile::new().unwrap();
        let status = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.as_file().try_clone().unwrap())
            .stderr(out.as_file().try_clone().unwrap())
            .status()
            .unwrap();
        (status.success(), std::fs::read_to_string(out.path()).unwrap())
    }
}

/// A Windows process (`cmd`, reading its standard input) that idles in the prefix. Wine shuts its
/// own services down (the service manager included) about a second after the last ordinary
/// process exits, which Windows never does; a service stopped and started again, or a test
/// starting just then, would meet "shutdown in progress". Held for the whole test run: when the
/// test process exits, the pipe closes and `cmd` ends.
pub struct KeepAlive(#[allow(dead_code)] std::process::Child);

/// The Windows builds and Wine, or None when they are not there (the test then returns).
pub fn wine() -> Option<&'static Wine> {
    static FOUND: OnceLock<Option<Wine>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let dir = Path::new(env!("EDGE_AGENT_TARGET_DIR")).join("windows");
            let w = Wine { dir, system_up: OnceLock::new() };
            let mut missing: Vec<String> =
                [w.exe(SOURCE_VERSION), w.exe(&next_version()), w.prefix().join("system.reg")]
                    .iter()
                    .filter(|p| !p.exists())
                    .map(|p| p.display().to_string())
                    .collect();
            if Command::new("wine").arg("--version").output().is_err() {
                missing.push("wine".into());
            }
            if missing.is_empty() {
                let mut cmd = w.command(Path::new("cmd"));
                cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
                let _ = w.system_up.set(KeepAlive(cmd.spawn().unwrap()));
                return Some(w);
            }
            let why = format!("missing {}: .ci/windows builds them", missing.join(", "));
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and the Windows tests cannot run: {why}");
            eprintln!("skipping a Windows test: {why}");
            None
        })
        .as_ref()
}

/// The Windows name of a file here (Wine maps `/` to drive `Z:`).
pub fn winpath(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// A directory with a Windows agent's configuration, state and installed `bin\agent.exe`: an
/// [`AgentHome`] whose paths Wine reads.
pub struct WinHome(pub AgentHome);

impl std::ops::Deref for WinHome {
    type Target = AgentHome;
    fn deref(&self) -> &AgentHome {
        &self.0
    }
}

impl WinHome {
    /// `config` (from `agent-server agent add`) plus fast timings and a state directory here.
    pub fn new(config: &str) -> WinHome {
        WinHome(AgentHome::with_state(&format!("{config}\n{FAST}"), "agent.exe", |state| {
            format!("Z:{}", state.display())
        }))
    }
    /// `wine bin\agent.exe run --config …` in its own process group, stderr in `agent.log`.
    pub fn start(&self, wine: &Wine) -> Proc {
        self.spawn_run(wine.command(&self.bin()), winpath(&self.config()))
    }
}

/// A genuine Windows executable standing in for a broken build of `version`: it answers
/// `version --json` as that version, and exits 1 when run as the agent.
pub fn broken_build(dir: &Path, version: &str) -> PathBuf {
    crate::rig::broken_c_build("x86_64-w64-mingw32-gcc", &dir.join(format!("broken-{version}.exe")), version)
}
