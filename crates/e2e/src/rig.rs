//! The upgrade rig: a real server, a real release server publishing the current build and the
//! next one, and agents installed from either; with what every failed upgrade must leave behind.

use std::path::Path;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::Value;

use crate::bins::{agent_bin, next_build, next_version};
use crate::home::AgentHome;
use crate::home::FAST;
use crate::process::Proc;
use crate::releases::{sha256_hex, ReleaseServer};
use crate::server::Server;

pub const LIMIT: Duration = Duration::from_secs(30);

pub struct Rig {
    pub server: Server,
    pub releases: ReleaseServer,
}

pub async fn rig() -> Rig {
    rig_with(&["--heartbeat-interval", "0.3"]).await
}

/// [`rig`] with these flags for the server.
pub async fn rig_with(server_args: &[&str]) -> Rig {
    let server = Server::start(server_args).await;
    let releases = ReleaseServer::start().await;
    releases.publish_file(SOURCE_VERSION, Path::new(agent_bin()));
    releases.publish_file(&next_version(), next_build());
    releases.set_latest(&next_version());
    Rig { server, releases }
}

impl Rig {
    /// An agent installed from `binary`, running, connected.
    pub async fn agent(&self, name: &str, binary: &Path, extra: &str) -> (String, AgentHome, Proc) {
        let (id, cfg) = self.server.add_agent(name);
        // A short health window, unless the test sets its own.
        let window = if extra.contains("health_window") { "" } else { "health_window = 4\n" };
        let own_trust = extra.contains("allow_unsigned") || extra.contains("trusted_keys");
        let trust = if own_trust { String::new() } else { self.releases.trust() };
        let releases = format!("releases_url = \"{}\"\n{trust}", self.releases.url());
        let home = AgentHome::new(&format!("{cfg}{FAST}{releases}{window}{extra}"));
        home.install(binary);
        let proc = home.start(&[]);
        let version = Self::version_of(binary);
        self.server.wait_status(&id, "connected", &version, LIMIT).await;
        (id, home, proc)
    }

    /// The fakes' panics, raised in the test (see [`super::handle`]).
    pub fn join(self) {
        self.releases.handle.join();
    }

    pub fn version_of(binary: &Path) -> String {
        let out = std::process::Command::new(binary).args(["version", "--json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["version"].as_str().unwrap().to_string()
    }

    /// Publishes a shell script standing in for a broken build of `version`.
    pub fn publish_script(&self, version: &str, script: &str) {
        self.releases.publish(version, format!("#!/bin/sh\n{script}\n").as_bytes());
    }
}

pub fn same_bytes(a: &Path, b: &Path) -> bool {
    sha256_hex(&std::fs::read(a).unwrap()) == sha256_hex(&std::fs::read(b).unwrap())
}

/// What every failed upgrade must leave: the old binary, no partial files, a connected agent.
pub async fn assert_unharmed(rig: &Rig, id: &str, home: &AgentHome, original: &Path) {
    assert!(same_bytes(&home.bin(), original), "the installed binary is byte-for-byte what it was");
    assert_eq!(home.strays(), Vec::<String>::new(), "no temporary files beside the binary");
    rig.server.wait_status(id, "connected", &Rig::version_of(original), LIMIT).await;
}

/// A genuine executable, built by the C compiler `gcc` at `exe`, standing in for a broken build
/// of `version`: it answers `version --json` as that version, and exits 1 when run as the agent.
pub fn broken_c_build(gcc: &str, exe: &Path, version: &str) -> std::path::PathBuf {
    let source = std::path::PathBuf::from(format!("{}.c", exe.display()));
    std::fs::write(
        &source,
        format!(
            "#include <stdio.h>\n#include <string.h>\nint main(int argc, char **argv) {{\n\
             if (argc > 1 && strcmp(argv[1], \"version\") == 0) {{ puts(\"{{\\\"version\\\":\\\"{version}\\\"}}\"); return 0; }}\n\
             fputs(\"this build is broken\\n\", stderr); return 1;\n}}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(gcc).arg("-o").arg(exe).arg(&source).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    exe.to_path_buf()
}
