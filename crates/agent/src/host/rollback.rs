//! `agent rollback`: the previous binary back over the installed one (the current one becomes
//! the previous), and a running daemon restarted into it. A new version still on trial ends its
//! trial here, and the restarted daemon reports the rollback to whoever asked for the upgrade.

use edge_agent_wire::Target;
use semver::Version;

use super::{daemon_pid, installed, version_of, HostError};
use crate::config::Local;
use crate::state_dir::StateDir;
use crate::upgrade::error::UpgradeError;
use crate::upgrade::install::copy_atomic;
use crate::upgrade::journal::Event;
use crate::upgrade::store::{Outcome, Record, Store, StoreError};

/// Puts the previous binary back (the current one becomes the previous), and restarts a running
/// daemon into it.
pub fn rollback(cfg: &Local) -> Result<String, HostError> {
    let state = &StateDir::new(&cfg.state_dir);
    let store = Store::new(state.clone());
    let previous = state.previous_binary();
    if !previous.is_file() {
        return Err(HostError::NoPrevious(previous));
    }
    let binary = installed(state);
    let (from, to) = (version_of(&binary), version_of(&previous));
    let to =
        to.ok_or_else(|| UpgradeError::SelfCheck(format!("the previous binary {} does not run", previous.display())))?;
    let from_text = from.as_ref().map_or_else(|| "unknown".to_string(), Version::to_string);
    let swap = previous.with_file_name("agent.rolled-back");
    copy_atomic(&binary, &swap, "the current binary")?;
    copy_atomic(&previous, &binary, "the installed binary")?;
    std::fs::rename(&swap, &previous).map_err(|e| UpgradeError::io("the previous binary", &previous, e))?;
    // A new version still on trial: its trial ends here, and the restarted daemon reports the
    // rollback to whoever asked for the upgrade.
    match store.apply(Event::RollBack("rolled back by the operator (agent rollback)".into())) {
        Ok(_) => {}
        // Not on trial: a rollback of a confirmed version, recorded as such.
        Err(StoreError::Refused(_)) => {
            let why = Some("agent rollback on the host".into());
            store.record(Record::new(from, Target::Exact(to.clone()), Outcome::ManualRollback, why))?;
        }
        Err(e) => return Err(e.into()),
    }
    let mut said = format!(
        "rolled back {from_text} -> {to}: {} now holds {to}, {} holds {from_text}\n",
        binary.display(),
        previous.display()
    );
    match daemon_pid(state) {
        Some(pid) => {
            crate::platform::request_restart(pid);
            said += &format!("the running daemon (pid {pid}) restarts into {to}\n");
        }
        None => said += "no daemon is running: the next `agent run` starts it\n",
    }
    if let Some(problem) = cfg.credentials_problem() {
        said += &format!("credentials: {problem}\n");
    }
    Ok(said)
}
