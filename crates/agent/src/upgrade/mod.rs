//! Self-upgrade, as a pipeline of small steps (protocol.md §3), each journaled
//! ([`journal`], written only through [`store`]) so that whatever process dies, the next one
//! resumes the upgrade or answers its callback:
//!
//! 1. [`runner::Runner::start`]: the checks that need no network (in progress, valid version),
//!    then the request is journaled (`accepted`) and runs in a task, so the connection keeps
//!    serving;
//! 2. [`resolve::resolve`] and [`resolve::select`]: the manifest of the wanted (or latest)
//!    version and this platform's asset, from the locally configured release source;
//! 3. [`decide::decide`]: same version, downgrade, rolled back before: a pure decision;
//! 4. [`edge_agent_release::source::plan`]: a patch made against the running binary, else the compressed copy, else
//!    the asset itself (a pure decision; each falls back to the next);
//!    [`download::fetch`] (`downloading`): into the version's staging file beside the installed
//!    binary, hashed on the way, resumed with `Range` (also by the next process after a crash);
//!    a patch or compressed copy is decoded as it arrives ([`sink`], [`decode`], [`mapped`]);
//! 5. [`verify`] (`verifying`): sha256 against the published checksum, and the signature
//!    (fetched and checked against the trusted keys before step 4; the asset's bytes hashed for
//!    it as they arrive, a decoded binary's once whole); [`install::self_check`]: the new binary
//!    runs and reports the target version;
//! 6. [`install::swap`] (`trial`): the old binary is kept, the swap journaled, the new one
//!    renamed into place;
//! 7. restart: the daemon exits and the supervisor starts the new binary ([`crate::supervisor`]);
//! 8. [`report`]: the new process, once connected, reports the result with the request's
//!    callback (`done`); the supervisor rolls a new version back (`rolled_back`) when it crashes
//!    or never confirms.
//!
//! From an offline bundle ([`bundle`], `agent upgrade --from-file`), steps 2 and 4 read the
//! bundle instead of the network; the rest is the same.
//!
//! [`pipeline`] strings steps 2–6 together; [`context::Context`] is all it needs from its caller
//! (the daemon, or `agent upgrade` on the host). Answers on the wire are written by [`wire`].

pub mod bundle;
pub mod context;
pub mod decide;
pub mod decode;
pub mod download;
pub mod error;
pub mod install;
pub mod journal;
pub mod mapped;
pub mod pipeline;
pub mod report;
pub mod resolve;
pub mod runner;
pub mod sink;
pub mod store;
pub mod verify;
pub mod wire;

/// Pauses the process at a named point when `EDGE_AGENT_FAILPOINT` names it, so that crash tests
/// can kill it exactly there; with `EDGE_AGENT_FAILPOINT_ONCE=<file>`, only the process that
/// creates that file pauses (the next one goes on). Unset in production; costs one environment
/// lookup per upgrade step.
pub fn failpoint(name: &str) {
    if !std::env::var("EDGE_AGENT_FAILPOINT").is_ok_and(|v| v == name) {
        return;
    }
    if let Ok(mark) = std::env::var("EDGE_AGENT_FAILPOINT_ONCE") {
        if std::fs::File::create_new(mark).is_err() {
            return;
        }
    }
    tracing::warn!(failpoint = name, "failpoint reached: pausing");
    std::thread::sleep(std::time::Duration::from_secs(3600));
}
