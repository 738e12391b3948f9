//! The Debian package installed with `dpkg -i` into a throwaway root ([`Root`]): its scripts run
//! chrooted there, as on a host; the machine's own users and files are untouched.

use std::process::Command;

use edge_agent_base::build_info::SOURCE_VERSION;
use edge_agent_e2e::debroot::Root;

use crate::packaging::debian_package;

#[test]
fn the_package_installed_with_dpkg_lets_an_operator_run_agent_and_keeps_the_state_private() {
    let deb = debian_package();
    let root = Root::new();
    let said = root.install(deb, None);
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
    assert!(version.starts_with(&format!("agent {SOURCE_VERSION} ")), "{version}");
    let status = root.ok(&["runuser", "-u", "fleet-op", "--", "/usr/bin/agent", "status"]);
    assert!(status.contains(&format!("version:   {SOURCE_VERSION} (/var/lib/edge-agent/bin/agent)")), "{status}");
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
