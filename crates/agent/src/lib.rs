//! The agent: a self-upgrading daemon that keeps a WebSocket to its control server (Medplum's
//! agent protocol), and the operator's commands on its host. The `agent` binary (`main.rs`)
//! parses flags and calls one function of [`start`] or [`host`].
//!
//! # Layout
//! Imports point down this list, never up; of the workspace, the agent imports
//! `edge-agent-release` (the release format), `edge-agent-wire` (the messages) and
//! `edge-agent-base`, and never the server.
//! - [`start`]: the processes `agent run` is made of (supervisor, worker, Windows service), each
//!   started with its logging ([`logging`]).
//! - [`host`]: the operator's commands on the host: status, rollback, check-config, the client
//!   side of `agent upgrade`, the Windows service, and `agent release`.
//! - [`supervisor`]: `agent run`'s parent process: restarts into upgrades, rolls bad ones back,
//!   re-executes itself from the installed binary once a new version is confirmed.
//! - [`daemon`]: the worker: session (connect, handshake, heartbeats, reconnect), request
//!   handlers, its upgrades and its control socket.
//! - [`upgrade`]: the self-upgrade pipeline, one module per step, and its journal (a state machine
//!   with one writer).
//! - [`http`]: the one HTTP client, built from the configuration; [`config`]: the local
//!   configuration, from file, environment and flags, validated once; [`proxy`]: which proxy, if
//!   any, each URL goes through (one pure decision), and the WebSocket's `CONNECT` tunnel.
//! - [`control`]: the messages of the daemon's control socket; [`logbuf`]: the in-memory log
//!   buffer behind `agent:logs`; [`notify`]: systemd readiness and watchdog; [`state_dir`]: the
//!   names of the files in the state directory.
//! - [`exit`]: the exit codes between the processes.
//! - [`platform`]: what differs between operating systems (file swap, signals, control socket,
//!   processes, free space, the service manager, default paths): every `cfg` is there.

// Unsafe code is denied (the workspace's `[lints]`); two modules allow it in a few documented
// functions: `platform::windows::ffi` (Win32 calls) and `upgrade::mapped` (memory maps).

pub mod config;
pub mod control;
pub mod daemon;
pub mod exit;
pub mod host;
pub mod http;
pub mod logbuf;
pub mod logging;
pub mod notify;
pub mod platform;
pub mod proxy;
pub mod start;
pub mod state_dir;
pub mod supervisor;
pub mod upgrade;
