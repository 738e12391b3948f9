//! Running as a real service: the systemd units, the maintainer scripts and install.sh, the
//! Debian package, and the readiness and watchdog notifications the unit relies on.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;

use edge_agent_e2e::{agent_bin, next_build, next_version, server_bin, AgentHome, Server, FAST};

fn packaging() -> PathBuf {
    Path::new(edge_agent_e2e::WORKSPACE).join("packaging")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // The units as shipped, with ExecStart pointing at this build (verify checks the binary exists).
    for (unit, from, to) in [
        ("edge-agent.service", "/var/lib/edge-agent/bin/agent", agent_bin()),
        ("edge-agent-server.service", "/usr/bin/agent-server", server_bin()),
    ] {
        let text = std::fs::read_to_string(packaging().join("systemd").join(unit)).unwrap();
        assert!(text.contains(&format!("ExecStart={from} ")), "{unit} runs {from}");
        std::fs::write(dir.path().join(unit), text.replace(from, to)).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("edge-agent.service"))
        .arg(dir.path().join("edge-agent-server.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    let agent_unit = std::fs::read_to_string(packaging().join("systemd/edge-agent.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "User=edge-agent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/edge-agent",
        "ProtectHome=yes",
    ] {
        assert!(agent_unit.contains(line), "the agent unit has {line}");
    }
}

#[test]
fn the_shell_scripts_pass_shellcheck() {
    let scripts = ["install.sh", "build-deb.sh", "deb/postinst", "deb/prerm", "deb/postrm"];
    let (ok, out) = run(Command::new("shellcheck").args(scripts.iter().map(|s| packaging().join(s))));
    assert!(ok, "shellcheck:\n{out}");
}

/// Every file under `root`: path → (mode, contents or link target).
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let body = if meta.is_dir() {
                stack.push(e.path());
                vec![]
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(e.path()).unwrap().display().to_string().into_bytes()
            } else {
                std::fs::read(e.path()).unwrap()
            };
            out.insert(rel, (meta.permissions().mode() & 0o7777, body));
        }
    }
    out
}

fn install_sh(root: &Path, binary: &Path) -> (bool, String) {
    run(Command::new(packaging().join("install.sh"))
        .args(["--root"])
        .arg(root)
        .arg("--binary")
        .arg(binary)
        .args(["--base-url", "https://agents.example.org/", "--client-id", "c1", "--agent-id", "a1", "--no-start"])
        .env("EDGE_AGENT_CLIENT_SECRET", "s3cret"))
}

#[test]
fn install_sh_trusts_the_release_keys_given_and_refuses_a_release_source_without_one() {
    let root = tempfile::tempdir().unwrap();
    let install = |extra: &[&str]| {
        let mut cmd = Command::new(packaging().join("install.sh"));
        cmd.arg("--root").arg(root.path()).args(["--binary", agent_bin(), "--base-url", "https://a.example/"]);
        cmd.args([
            "--client-id",
            "c1",
            "--agent-id",
            "a1",
            "--no-start",
            "--releases-url",
            "https://a.example/releases/",
        ]);
        run(cmd.args(extra).env("EDGE_AGENT_CLIENT_SECRET", "s3cret"))
    };
    let (ok, out) = install(&[]);
    assert!(!ok && out.contains("--releases-url needs --trusted-key KEY"), "{out}");
    assert!(!root.path().join("etc/edge-agent/agent.toml").exists(), "nothing written");
    let (k1, k2) = (
        "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
        "RWTAPRW2qy9FjsBiMVggaqrSF5ikH0gbmaRC1i2BTkX6TZnSK9eUjqbD",
    );
    let (ok, out) = install(&["--trusted-key", k1, "--trusted-key", k2]);
    assert!(ok, "{out}");
    let config = root.path().join("etc/edge-agent/agent.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&format!("trusted_keys = [\"{k1}\", \"{k2}\"]\n")), "{text}");
    // What it wrote is a configuration the agent accepts, and that trusts both keys.
    let status = Command::new(agent_bin()).args(["status", "--json", "--config"]).arg(&config).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((status["releases"].as_str(), status["warnings"].as_array().map(Vec::len)), (Some("signed"), Some(0)));
    let (ok, out) = install(&["--allow-unsigned"]);
    assert!(ok && std::fs::read_to_string(&config).unwrap().contains("allow_unsigned = true\n"), "{out}");
    let (ok, out) = install(&["--allow-unsigned", "--trusted-key", k1]);
    assert!(!ok && out.contains("contradict each other"), "{out}");
}

#[test]
fn install_sh_twice_leaves_the_same_files_and_never_downgrades() {
    let root = tempfile::tempdir().unwrap();
    let (ok, out) = install_sh(root.path(), Path::new(agent_bin()));
    assert!(ok, "{out}");
    let first = snapshot(root.path());
    let (ok, out) = install_sh(root.path(), Path::new(agent_bin()));
    assert!(ok, "{out}");
    assert_eq!(snapshot(root.path()), first, "a second run changes nothing");
    let live = root.path().join("var/lib/edge-agent/bin/agent");
    assert_eq!(std::fs::read(&live).unwrap(), std::fs::read(agent_bin()).unwrap());
    let config = root.path().join("etc/edge-agent/agent.toml");
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("client_secret = \"s3cret\"") && text.contains("agent_id = \"a1\""), "{text}");
    assert_eq!(
        std::fs::read_link(root.path().join("usr/local/bin/agent")).unwrap(),
        Path::new("/var/lib/edge-agent/bin/agent")
    );
    assert!(root.path().join("etc/systemd/system/edge-agent.service").is_file());

    // An agent that upgraded itself is newer than the binary being installed: it stays.
    std::fs::copy(next_build(), &live).unwrap();
    let (ok, out) = install_sh(root.path(), Path::new(agent_bin()));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("keeping the installed agent {}", next_version())), "{out}");
    assert_eq!(std::fs::read(&live).unwrap(), std::fs::read(next_build()).unwrap());

    let (ok, out) =
        run(Command::new(packaging().join("install.sh")).args(["--root", "/nonexistent", "--binary", agent_bin()]));
    assert!(!ok && out.contains("--base-url is required"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_status_and_watchdog_reach_systemd() {
    let server = Server::start(&[]).await;
    let (id, cfg) = server.add_agent("notify");
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let socket_path = home.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _agent = home.run_with(
        Path::new(agent_bin()),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m.starts_with("READY=1"))
        && seen.iter().any(|m| m.starts_with("STATUS=connected to ws://"))
        && seen.iter().any(|m| m == "WATCHDOG=1"))
    {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("notifications so far {seen:?}: {e}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = seen.iter().position(|m| m.starts_with("READY=1")).unwrap();
    let connected = seen.iter().position(|m| m.starts_with("STATUS=connected")).unwrap();
    assert!(ready < connected, "ready before the server answers: {seen:?}");
    server.wait_status(&id, "connected", SOURCE_VERSION, Duration::from_secs(15)).await;
}

/// The Debian package of the binaries cargo test built, made once for every test that needs it
/// (a build here would replace them under the running tests).
pub fn debian_package() -> &'static Path {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        // In the target directory, replaced at each run, so that no copy is left behind.
        let out_dir = edge_agent_e2e::scratch_dir().join("deb");
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir).unwrap();
        let (ok, out) = run(Command::new(packaging().join("build-deb.sh"))
            .env("PROFILE", "dev")
            .env("NO_BUILD", "1")
            .arg("--output")
            .arg(&out_dir));
        assert!(ok, "build-deb.sh:\n{out}");
        std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .unwrap()
    })
}

#[test]
fn the_debian_package_holds_the_binaries_units_and_config_with_the_right_modes() {
    let deb = debian_package();
    let (ok, listing) = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    assert!(ok, "{listing}");
    let mode_of = |path: &str| -> String {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("{path} not in\n{listing}"));
        line.split_whitespace().next().unwrap().to_string()
    };
    for (path, mode) in [
        ("/usr/lib/edge-agent/agent", "-rwxr-xr-x"),
        ("/usr/bin/agent-server", "-rwxr-xr-x"),
        ("/lib/systemd/system/edge-agent.service", "-rw-r--r--"),
        ("/lib/systemd/system/edge-agent-server.service", "-rw-r--r--"),
        ("/etc/edge-agent/agent.toml", "-rw-------"),
        ("/usr/share/bash-completion/completions/agent", "-rw-r--r--"),
        ("/usr/share/man/man1/agent.1.gz", "-rw-r--r--"),
    ] {
        assert_eq!(mode_of(path), mode, "{path}");
    }
    assert!(!listing.contains("/var/lib/edge-agent/bin/agent"), "the live binary is the agent's, not the package's");
    let control = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(control.path()));
    assert!(ok, "{out}");
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        assert!(control.path().join(script).is_file(), "{script} in the package");
    }
    assert_eq!(std::fs::read_to_string(control.path().join("conffiles")).unwrap().trim(), "/etc/edge-agent/agent.toml");
}
