//! `agent status`: version and binary, daemon and connection, previous binary, the upgrade in
//! flight and the last results, as text or JSON.

use edge_agent_wire::AgentStatus;
use serde_json::{json, Value};

use super::{daemon, installed, version_of, HostError};
use crate::config::{ConfigSource, Local};
use crate::state_dir::StateDir;
use crate::upgrade::journal::State;
use crate::upgrade::store::{Record, Store};
use edge_agent_base::build_info::version_str;

/// `agent status [--json]`: what to print.
pub fn command(source: &ConfigSource, json: bool) -> Result<String, HostError> {
    let s = status(&source.load_local()?);
    Ok(if json { format!("{s:#}\n") } else { status_text(&s) })
}

/// Everything `agent status` shows, as JSON.
pub fn status(cfg: &Local) -> Value {
    let state = &StateDir::new(&cfg.state_dir);
    let store = Store::new(state.clone());
    let binary = installed(state);
    let previous = state.previous_binary();
    let journal = Some(store.load()).filter(|j| !matches!(j.state, State::Idle | State::Done));
    let history: Vec<Record> = store.history().into_iter().rev().take(5).collect();
    let route = cfg.ws_url.as_ref().map(|url| cfg.proxy.route(url));
    json!({
        "version": version_of(&binary).map_or_else(|| version_str().to_string(), |v| v.to_string()),
        "binary": binary,
        "daemon": daemon(state).map(|d| json!({
            "pid": d["pid"], "connected": d["connected"], "since": d["since"], "server": d["server"],
            "proxy": d["proxy"], "route": d["route"],
        })),
        "proxy": route.and_then(crate::proxy::in_use),
        "route": route.map_or_else(|| "unknown: no base_url".to_string(), |r| r.to_string()),
        "previous": previous.is_file().then(|| json!({"version": version_of(&previous).map(|v| v.to_string()), "binary": previous})),
        "upgradeInProgress": journal.map(|j| json!({
            "from": j.previous_version, "to": j.target(), "state": j.state, "startedAt": j.accepted_at, "starts": j.starts,
        })),
        "lastUpgrades": history,
        "state": unreadable_state(cfg, state).map(|problem| json!({"readable": false, "problem": problem})),
        "credentials": match cfg.credentials_problem() {
            None => json!({"ok": true}),
            Some(problem) => json!({
                "ok": false,
                "missing": cfg.unreadable.is_none().then_some(&cfg.missing_credentials),
                "problem": problem,
            }),
        },
        "releases": if cfg.unreadable.is_some() { "unknown" } else { cfg.trust.label() },
        "warnings": cfg.trust.warning().filter(|_| cfg.unreadable.is_none()).into_iter().collect::<Vec<_>>(),
    })
}

/// Why this user cannot read the state directory (an operator who is not the agent's user), if so.
fn unreadable_state(cfg: &Local, state: &StateDir) -> Option<String> {
    if cfg.unreadable.is_some() {
        return Some("unknown: the configuration that names the state directory cannot be read".into());
    }
    match std::fs::read_dir(state.path()) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
            "cannot read {} (permission denied: run as root or the agent's user for the daemon, previous binary \
             and upgrades)",
            state.path().display()
        )),
        _ => None,
    }
}

/// `agent status` for a person.
pub fn status_text(s: &Value) -> String {
    let mut out =
        format!("version:   {} ({})\n", s["version"].as_str().unwrap_or("?"), s["binary"].as_str().unwrap_or("?"));
    if let Some(problem) = s["state"]["problem"].as_str() {
        out += &format!("state:     {problem}\n");
        out += &credentials_and_releases(s);
        return out;
    }
    out += &match &s["daemon"] {
        Value::Null => "daemon:    not running\n".to_string(),
        d => format!(
            "daemon:    running (pid {}), {} since {} ({})\n",
            d["pid"],
            if d["connected"] == true { AgentStatus::Connected } else { AgentStatus::Disconnected },
            d["since"].as_str().unwrap_or("?"),
            d["server"].as_str().unwrap_or("?")
        ),
    };
    // The daemon's own route when one runs (its environment may differ from this shell's).
    let route = if s["daemon"]["route"].is_string() { &s["daemon"]["route"] } else { &s["route"] };
    out += &format!("route:     {}\n", route.as_str().unwrap_or("?"));
    out += &credentials_and_releases(s);
    out += &match &s["previous"] {
        Value::Null => "previous:  none kept\n".to_string(),
        p => format!("previous:  {} ({})\n", p["version"].as_str().unwrap_or("?"), p["binary"].as_str().unwrap_or("?")),
    };
    if let Some(u) = s["upgradeInProgress"].as_object() {
        out += &format!("upgrade:   {} -> {}: {} since {}\n", u["from"], u["to"], u["state"], u["startedAt"]);
    }
    let last = s["lastUpgrades"].as_array().cloned().unwrap_or_default();
    if last.is_empty() {
        out += "upgrades:  none yet\n";
    }
    for r in last {
        let reason = r["reason"].as_str().map(|w| format!(": {w}")).unwrap_or_default();
        out += &format!(
            "upgrade:   {} {} -> {} {}{reason}\n",
            r["at"].as_str().unwrap_or("?"),
            r["from"].as_str().unwrap_or("?"),
            r["to"].as_str().unwrap_or("?"),
            r["outcome"].as_str().unwrap_or("?")
        );
    }
    out
}

/// The lines the configuration gives: credentials, releases and warnings.
fn credentials_and_releases(s: &Value) -> String {
    let mut out = match s["credentials"]["problem"].as_str() {
        None => "credentials: set\n".to_string(),
        Some(problem) => format!("credentials: {problem}\n"),
    };
    out += &format!("releases:  {}\n", s["releases"].as_str().unwrap_or("?"));
    for w in s["warnings"].as_array().into_iter().flatten() {
        out += &format!("warning:   {}\n", w.as_str().unwrap_or("?"));
    }
    out
}
