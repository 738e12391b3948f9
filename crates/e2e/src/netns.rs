//! A network namespace for a test, joined to this one by a veth pair on a /30 of its own: inside
//! it a process reaches only the host side's address (where the test puts a proxy) and its own
//! loopback; nothing else on this machine, so a direct route is really unavailable. Removed
//! when dropped; namespaces a killed test run left behind are removed by the next one.
//!
//! More pairs ([`Netns::link`]) give a process inside several ways out, each of which a test can
//! cut (`ip link set down`) and mend on its own: a network partition of one path.

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

/// One more veth pair into a namespace, on a /30 of its own.
pub struct Link {
    /// The interface on this side, which [`Link::cut`] takes down.
    outside_if: String,
    /// The address of this side of the pair.
    pub outside: String,
    /// The address of the namespace's side.
    pub inside: String,
}

impl Link {
    /// Takes the link down: packets either way are dropped, open connections hang (no reset).
    pub fn cut(&self) {
        ip(&["link", "set", &self.outside_if, "down"]).unwrap();
    }

    /// Brings it up again.
    pub fn mend(&self) {
        ip(&["link", "set", &self.outside_if, "up"]).unwrap();
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A /30 of its own for the `n`-th pair of this process: (outside, inside) addresses.
fn pair_addresses(pid: u32, n: u32) -> (String, String) {
    // The second octet from the pid, the third and fourth from the count (64 pairs a /24).
    let net = format!("10.{}.{}", 100 + pid % 150, (n / 64) % 256);
    let base = (n % 64) * 4;
    (format!("{net}.{}", base + 1), format!("{net}.{}", base + 2))
}

impl Netns {
    /// A new namespace; None when this process may not make one (not root, no `ip`), which
    /// fails the test under `CI=true`.
    pub fn create() -> Option<Netns> {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(remove_stale);
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let name = format!("ea-{pid}-{n}");
        let (outside, inside) = pair_addresses(pid, n);
        let ns = Netns { name, outside, inside };
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
        ip(&["netns", "add", &self.name])?;
        self.add_pair(pid, n, (&self.outside, &self.inside))?;
        self.inside(&["link", "set", "lo", "up"])
    }

    /// `ip <args>` inside the namespace.
    fn inside(&self, args: &[&str]) -> Result<(), String> {
        ip(&[&["netns", "exec", &self.name, "ip"][..], args].concat())
    }

    /// A veth pair `vo<pid>x<n>` (this side, `outside`) to `vi<pid>x<n>` (inside, `inside`);
    /// the name of this side's interface.
    fn add_pair(&self, pid: u32, n: u32, (outside, inside): (&str, &str)) -> Result<String, String> {
        let (outside_if, inside_if) = (format!("vo{pid}x{n}"), format!("vi{pid}x{n}"));
        ip(&["link", "add", &outside_if, "type", "veth", "peer", "name", &inside_if])?;
        ip(&["link", "set", &inside_if, "netns", &self.name])?;
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &outside_if])?;
        ip(&["link", "set", &outside_if, "up"])?;
        self.inside(&["addr", "add", &format!("{inside}/30"), "dev", &inside_if])?;
        self.inside(&["link", "set", &inside_if, "up"])?;
        Ok(outside_if)
    }

    /// Another way out of the namespace: a veth pair on a /30 of its own.
    pub fn link(&self) -> Link {
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (outside, inside) = pair_addresses(pid, n);
        let outside_if = self.add_pair(pid, n, (&outside, &inside)).unwrap_or_else(|e| panic!("a veth pair: {e}"));
        Link { outside_if, outside, inside }
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
