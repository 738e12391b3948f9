//! The operator's commands on the host: `agent status`, `agent check-config`, `agent rollback`.
//! They read the agent's state directory (status file, journal, history, previous binary); none
//! needs the daemon to be running, and each says plainly when something is missing.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::agent::{STATUS_FILE, VERSION};
use crate::config::{Config, ConfigSource};
use crate::upgrade::install::{copy_atomic, previous_binary};
use crate::upgrade::journal::{self, Journal, Record, State};
use crate::upgrade::UpgradeError;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no previous binary at {0}: nothing to roll back to (one is kept by each upgrade)")]
    NoPrevious(PathBuf),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error("the token endpoint refused or failed: {0}")]
    Token(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{0}")]
    Refused(String),
    #[error("the daemon: {0}")]
    Daemon(String),
}

/// The version a binary reports, if it runs.
fn version_of(binary: &Path) -> Option<String> {
    let out = std::process::Command::new(binary).args(["version", "--json"]).output().ok()?;
    serde_json::from_slice::<Value>(&out.stdout).ok()?["version"].as_str().map(str::to_owned)
}

/// Whether the process runs (a zombie, exited but not yet reaped, does not).
fn alive(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// The daemon's status file, if the daemon that wrote it still runs.
fn daemon(state_dir: &Path) -> Option<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(state_dir.join(STATUS_FILE)).ok()?).ok()?;
    v["pid"].as_u64().filter(|p| alive(*p)).map(|_| v)
}

/// The pid of the running daemon, if one runs.
pub fn daemon_pid(state_dir: &Path) -> Option<u64> {
    daemon(state_dir).and_then(|d| d["pid"].as_u64())
}

/// The installed binary: as the running daemon reported it, else this command's own.
fn installed(state_dir: &Path) -> PathBuf {
    daemon(state_dir)
        .and_then(|d| d["binary"].as_str().map(PathBuf::from))
        .or_else(|| crate::upgrade::install::installed_path().ok())
        .unwrap_or_else(|| PathBuf::from("agent"))
}

/// Everything `agent status` shows, as JSON.
pub fn status(cfg: &Config) -> Value {
    let state = &cfg.state_dir;
    let binary = installed(state);
    let previous = previous_binary(state);
    let journal = Journal::load(state).filter(Journal::pending);
    let history: Vec<Record> = journal::history(state).into_iter().rev().take(5).collect();
    json!({
        "version": version_of(&binary).unwrap_or_else(|| VERSION.to_string()),
        "binary": binary,
        "daemon": daemon(state).map(|d| json!({
            "pid": d["pid"], "connected": d["connected"], "since": d["since"], "server": d["server"],
        })),
        "previous": previous.is_file().then(|| json!({"version": version_of(&previous), "binary": previous})),
        "upgradeInProgress": journal.map(|j| json!({
            "from": j.previous_version, "to": j.target_version, "state": j.state, "startedAt": j.started_at, "starts": j.starts,
        })),
        "lastUpgrades": history,
    })
}

/// `agent status` for a person.
pub fn status_text(s: &Value) -> String {
    let mut out =
        format!("version:   {} ({})\n", s["version"].as_str().unwrap_or("?"), s["binary"].as_str().unwrap_or("?"));
    out += &match &s["daemon"] {
        Value::Null => "daemon:    not running\n".to_string(),
        d => format!(
            "daemon:    running (pid {}), {} since {} ({})\n",
            d["pid"],
            if d["connected"] == true { "connected" } else { "disconnected" },
            d["since"].as_str().unwrap_or("?"),
            d["server"].as_str().unwrap_or("?")
        ),
    };
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

/// Validates the configuration and asks the token endpoint for a token with it.
pub async fn check_config(source: &ConfigSource) -> Result<String, LocalError> {
    let cfg = source.load()?;
    let (shared, _) = crate::agent::prepare(source.clone(), cfg.clone(), crate::logbuf::LogBuffer::new(1))
        .map_err(|e| LocalError::Client(e.to_string()))?;
    crate::agent::token::fetch(&shared.http, &cfg).await.map_err(|e| LocalError::Token(e.to_string()))?;
    Ok(format!(
        "configuration {} is valid; the server at {} issued a token for client {} (agent {})",
        source.path.display(),
        cfg.base_url,
        cfg.client_id,
        cfg.agent_id
    ))
}

/// Puts the previous binary back (the current one becomes the previous), and restarts a running
/// daemon into it.
pub fn rollback(cfg: &Config) -> Result<String, LocalError> {
    let state = &cfg.state_dir;
    let previous = previous_binary(state);
    if !previous.is_file() {
        return Err(LocalError::NoPrevious(previous));
    }
    let binary = installed(state);
    let (from, to) = (version_of(&binary).unwrap_or_else(|| "unknown".into()), version_of(&previous));
    let to =
        to.ok_or_else(|| UpgradeError::SelfCheck(format!("the previous binary {} does not run", previous.display())))?;
    let swap = previous.with_file_name("agent.rolled-back");
    copy_atomic(&binary, &swap, "the current binary")?;
    copy_atomic(&previous, &binary, "the installed binary")?;
    std::fs::rename(&swap, &previous).map_err(|e| UpgradeError::io("the previous binary", &previous, e))?;
    // A new version still on trial: its trial ends here, and the restarted daemon reports the
    // rollback to whoever asked for the upgrade.
    match Journal::load(state).filter(|j| j.state == State::Trial) {
        Some(mut j) => {
            j.state = State::RolledBack;
            j.reason = Some("rolled back by the operator (agent rollback)".into());
            j.save(state).map_err(|e| UpgradeError::io("the upgrade journal", state, e))?;
        }
        None => journal::record(
            state,
            Record::new(&from, &to, "manual_rollback", Some("agent rollback on the host".into())),
        ),
    }
    let mut said = format!(
        "rolled back {from} -> {to}: {} now holds {to}, {} holds {from}\n",
        binary.display(),
        previous.display()
    );
    match daemon(state).and_then(|d| d["pid"].as_i64()) {
        Some(pid) => {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::HUP);
            }
            said += &format!("the running daemon (pid {pid}) restarts into {to}\n");
        }
        None => said += "no daemon is running: the next `agent run` starts it\n",
    }
    Ok(said)
}
