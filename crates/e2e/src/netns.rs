//! A network namespace for a test, joined to this one by a veth pair on a /30 of its own: inside
//! it a process reaches only the host side's address (where the test puts a proxy) and its own
//! loopback; nothing else on this machine, so a direct route is really unavailable. Removed
//! when dropped; namespaces a killed test run left behind are removed by the next one.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace, its veth pair and their two addresses.
pub struct Netns {
    pub name: String,
    /// The address of this side of the pair (outside the namespace).
    pub outside: String,
    /// The address of the namespace's side.
    pub inside: String,
}

/// Runs `ip <args>`; its error output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Removes the namespaces (named `ea-<pid>-<n>`) of test processes that are gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("ea-").and_then(|r| r.split('-').next()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    /// A new namespace; None when this process may not make one (not root, no `ip`), which
    /// fails the test under `CI=true`.
    pub fn create() -> Option<Netns> {
        static ONCE: std::sync::Once = std::sync::Once::new();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        ONCE.call_once(remove_stale);
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let name = format!("ea-{pid}-{n}");
        // A /30 per namespace: the second octet from the pid, the third from the count.
        let net = format!("10.{}.{}", 100 + pid % 150, n % 256);
        let ns = Netns { name, outside: format!("{net}.1"), inside: format!("{net}.2") };
        match ns.set_up(pid, n) {
            Ok(()) => Some(ns),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("cannot make a network namespace: {e}"),
            Err(e) => {
                eprintln!("skipped: cannot make a network namespace (run as root): {e}");
                None
            }
        }
    }

    fn set_up(&self, pid: u32, n: u32) -> Result<(), String> {
        let (outside_if, inside_if) = (format!("vo{pid}x{n}"), format!("vi{pid}x{n}"));
        ip(&["netns", "add", &self.name])?;
        ip(&["link", "add", &outside_if, "type", "veth", "peer", "name", &inside_if])?;
        ip(&["link", "set", &inside_if, "netns", &self.name])?;
        ip(&["addr", "add", &format!("{}/30", self.outside), "dev", &outside_if])?;
        ip(&["link", "set", &outside_if, "up"])?;
        let inside = |args: &[&str]| ip(&[&["netns", "exec", &self.name, "ip"][..], args].concat());
        inside(&["addr", "add", &format!("{}/30", self.inside), "dev", &inside_if])?;
        inside(&["link", "set", &inside_if, "up"])?;
        inside(&["link", "set", "lo", "up"])
    }

    /// `program`, to be run inside the namespace (`ip netns exec` replaces itself with it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    /// Deleting the namespace deletes the veth pair with it.
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
