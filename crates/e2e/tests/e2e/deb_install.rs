//! The Debian package installed with `dpkg -i` into a throwaway root: a private mount namespace
//! in which `/usr` and `/etc` are overlays of the machine's own (so `adduser`, `getent` and the
//! shell are real, and what they write stays in the namespace) and `/var` is new. Maintainer
//! scripts run chrooted there, as on a host; the machine's own users and files are untouched.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use edge_agent_base::build_info::VERSION;

use crate::packaging::debian_package;

/// Mounts the throwaway root at `$1`, then waits for the test to end.
const SETUP: &str = r#"set -e
r=$1
mount -t tmpfs -o mode=0755 tmpfs "$r"
mkdir -p "$r/usr" "$r/etc" "$r/var/lib/dpkg/updates" "$r/var/lib/dpkg/info" "$r/var/log" "$r/proc" \
  "$r/dev" "$r/tmp" "$r/run" "$r/.o/u/usr" "$r/.o/w/usr" "$r/.o/u/etc" "$r/.o/w/etc"
chmod 1777 "$r/tmp"
: > "$r/var/lib/dpkg/status"
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$r/.o/u/usr,workdir=$r/.o/w/usr" "$r/usr"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$r/.o/u/etc,workdir=$r/.o/w/etc" "$r/etc"
for l in bin sbin lib lib64; do ln -s "usr/$l" "$r/$l"; done
mount --rbind /dev "$r/dev"
mount -t proc proc "$r/proc"
echo ready
exec sleep 600
"#;

/// The throwaway root, alive while its namespace's holder process runs.
struct Root {
    dir: tempfile::TempDir,
    holder: Child,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", SETUP, "setup"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the throwaway root could not be set up");
        Root { dir, holder }
    }

    /// Runs `args` in the namespace (chrooted when `chroot`): (success, stdout, stderr).
    fn run(&self, chroot: bool, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--mount", "--target", &self.holder.id().to_string(), "--"]);
        if chroot {
            cmd.arg("chroot").arg(self.dir.path());
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(true, args);
        assert!(ok, "{args:?}:\n{out}{err}");
        out
    }

    /// The mode and owner of a path in the root, as `stat` there sees them.
    fn stat(&self, path: &str) -> String {
        self.ok(&["stat", "-c", "%a %U", path]).trim().to_string()
    }

    /// Where `path` of the root is, for the namespace (the machine sees an empty directory).
    fn path(&self, path: &str) -> PathBuf {
        self.dir.path().join(path.trim_start_matches('/'))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn the_package_installed_with_dpkg_lets_an_operator_run_agent_and_keeps_the_state_private() {
    let deb = debian_package();
    let root = Root::new();
    let staged = root.path("/tmp/edge-agent.deb");
    let root_dir = root.dir.path().to_str().unwrap().to_string();
    let (ok, out, err) = root.run(false, &["cp", deb.to_str().unwrap(), staged.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    // Real dpkg, its scripts run chrooted; the throwaway root has no dpkg database of what the
    // machine has installed, hence --force-depends.
    let (ok, out, err) =
        root.run(false, &["dpkg", "--root", &root_dir, "--force-depends", "-i", staged.to_str().unwrap()]);
    assert!(ok, "dpkg -i:\n{out}{err}");
    let said = format!("{out}{err}");
    assert!(!said.to_lowercase().contains("home dir"), "adduser warned about the home directory:\n{said}");
    assert!(!said.contains("Warning"), "{said}");
    assert!(root.ok(&["getent", "passwd", "edge-agent"]).contains(":/var/lib/edge-agent:"));
    assert_eq!(
        Command::new("getent").args(["passwd", "edge-agent"]).output().unwrap().stdout,
        b"",
        "the machine's users are untouched"
    );

    // The binary is reachable by anyone; the state and the configuration are the agent's alone.
    assert_eq!(root.stat("/var/lib/edge-agent"), "755 edge-agent");
    assert_eq!(root.stat("/var/lib/edge-agent/bin"), "755 edge-agent");
    assert_eq!(root.stat("/var/lib/edge-agent/bin/agent"), "755 edge-agent");
    assert_eq!(root.stat("/var/lib/edge-agent/state"), "700 edge-agent");
    assert_eq!(root.stat("/etc/edge-agent/agent.toml"), "600 edge-agent");
    assert_eq!(root.ok(&["readlink", "/usr/bin/agent"]).trim(), "/var/lib/edge-agent/bin/agent");
    let config = root.ok(&["cat", "/etc/edge-agent/agent.toml"]);
    assert!(config.contains("\nstate_dir = \"/var/lib/edge-agent/state\"\n"), "{config}");

    // An operator who is not root.
    root.ok(&["useradd", "--no-create-home", "fleet-op"]);
    let version = root.ok(&["runuser", "-u", "fleet-op", "--", "/usr/bin/agent", "version"]);
    assert!(version.starts_with(&format!("agent {VERSION} ")), "{version}");
    let status = root.ok(&["runuser", "-u", "fleet-op", "--", "/usr/bin/agent", "status"]);
    assert!(status.contains(&format!("version:   {VERSION} (/var/lib/edge-agent/bin/agent)")), "{status}");
    assert!(
        status.contains("credentials: unknown: cannot read /etc/edge-agent/agent.toml (permission denied"),
        "{status}"
    );
    assert!(status.contains("state:     unknown"), "{status}");
    let (ok, _, err) = root.run(true, &["runuser", "-u", "fleet-op", "--", "ls", "/var/lib/edge-agent/state"]);
    assert!(!ok && err.contains("Permission denied"), "the state is private: {err}");
    // The agent's user sees everything.
    let status = root.ok(&["runuser", "-u", "edge-agent", "--", "/usr/bin/agent", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!((status["state"].is_null(), status["daemon"].is_null()), (true, true), "{status}");
    assert_eq!(status["credentials"]["missing"], serde_json::json!(["client_id", "client_secret", "agent_id"]));
}
