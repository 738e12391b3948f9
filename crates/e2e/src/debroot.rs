//! A throwaway root that Debian packages are installed into with real `dpkg -i`: a private mount
//! namespace in which `/usr` and `/etc` are overlays of the machine's own (so `adduser`, `getent`
//! and the shell are real, and what they write stays in the namespace) and `/var` is new.
//! Maintainer scripts run chrooted there, as on a host; the machine's own users and files are
//! untouched. An ARM package is installed the same way, into a root that has that
//! architecture's C library where an ARM host has it, and its binaries run through QEMU
//! (binfmt_misc, which `.ci/arm` registers).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::qemu::Arm;

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
pub struct Root {
    pub dir: tempfile::TempDir,
    holder: Child,
}

impl Root {
    pub fn new() -> Root {
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

    /// A command in the namespace (chrooted when `chroot`).
    pub fn command(&self, chroot: bool, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--mount", "--target", &self.holder.id().to_string(), "--"]);
        if chroot {
            cmd.arg("chroot").arg(self.dir.path());
        }
        cmd.args(args);
        cmd
    }

    /// Runs `args` in the namespace (chrooted when `chroot`): (success, stdout, stderr).
    pub fn run(&self, chroot: bool, args: &[&str]) -> (bool, String, String) {
        let out = self.command(chroot, args).stdin(Stdio::null()).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// Runs `args` chrooted, and fails the test when they fail: their stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(true, args);
        assert!(ok, "{args:?}:\n{out}{err}");
        out
    }

    /// The mode and owner of a path in the root, as `stat` there sees them.
    pub fn stat(&self, path: &str) -> String {
        self.ok(&["stat", "-c", "%a %U", path]).trim().to_string()
    }

    /// Where `path` of the root is, for the namespace (the machine sees an empty directory).
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.path().join(path.trim_start_matches('/'))
    }

    /// Installs `deb` with `dpkg -i`, its scripts run chrooted: what dpkg said. The root has no
    /// dpkg database of what the machine has installed, hence `--force-depends`. For a package of
    /// another architecture (`arm`), the root is first made a host of that architecture: dpkg
    /// knows it (`--add-architecture`), and its C library (Debian's cross sysroot) is where that
    /// architecture's programs look for it: Debian's multiarch paths.
    pub fn install(&self, deb: &Path, arm: Option<&Arm>) -> String {
        let root = self.dir.path().to_str().unwrap();
        let staged = self.path("/tmp/package.deb");
        let (ok, out, err) = self.run(false, &["cp", deb.to_str().unwrap(), staged.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
        if let Some(arm) = arm {
            let (ok, out, err) = self.run(false, &["dpkg", "--root", root, "--add-architecture", arm.deb_arch]);
            assert!(ok, "dpkg --add-architecture {}:\n{out}{err}", arm.deb_arch);
            // Debian's multiarch layout: the C library in /usr/lib/<triplet>, its loader in /lib.
            let triplet = arm.sysroot.rsplit('/').next().unwrap();
            let script = format!(
                "set -e; d=$1/usr/lib/{triplet}; mkdir -p \"$d\"; for f in {sysroot}/lib/*.so*; do ln -sfn \"$f\" \"$d/\"; done; \
                 ln -sfn /usr/lib/{triplet}/{loader} \"$1/usr/lib/{loader}\"",
                sysroot = arm.sysroot,
                loader = arm.loader
            );
            let (ok, out, err) = self.run(false, &["sh", "-c", &script, "layout", root]);
            assert!(ok, "{out}{err}");
        }
        let (ok, out, err) =
            self.run(false, &["dpkg", "--root", root, "--force-depends", "-i", staged.to_str().unwrap()]);
        assert!(ok, "dpkg -i:\n{out}{err}");
        format!("{out}{err}")
    }
}

impl Default for Root {
    fn default() -> Root {
        Root::new()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
