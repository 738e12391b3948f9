//! The exit codes the agent's processes tell each other with: the worker to its supervisor, and
//! `agent` to whoever runs it.

/// A configuration error (EX_USAGE of sysexits.h): fix the configuration, restarting will not help.
pub const CONFIG: i32 = 64;
/// The worker exits with this code to be started again at once, on the new binary (EX_TEMPFAIL).
pub const RESTART: i32 = 75;
