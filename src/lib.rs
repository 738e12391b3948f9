//! edge-agent: a self-upgrading agent daemon and the control server that drives it, speaking the
//! Medplum agent protocol.
//!
//! # Layout
//! Imports point down this list, never up.
//! - `src/bin/`: the `agent` and `agent-server` binaries: flags, config, logging, one `run`.
//! - [`server`]: the control server: OAuth tokens, the agents' WebSocket, FHIR REST and operations,
//!   fleet rollouts, the operator's web page and `/metrics`, a store (SQLite or PostgreSQL) and a
//!   bus between nodes (in-process or Redis).
//! - [`publish`]: `agent release`: signing keys, the release directory layout, and the compressed
//!   copies and patches beside each asset.
//! - [`supervisor`]: `agent run`'s parent process: restarts into upgrades, rolls bad ones back,
//!   re-executes itself from the installed binary once a new version is confirmed.
//! - [`host`]: the operator's commands on the host: status, rollback, check-config, and the client
//!   side of `agent upgrade`.
//! - [`agent`]: the daemon: session (connect, handshake, heartbeats, reconnect), request handlers,
//!   its upgrades and its control socket.
//! - [`upgrade`]: the self-upgrade pipeline, one module per step, and its journal (a state machine
//!   with one writer).
//! - [`control`]: the messages of the daemon's control socket, shared by the daemon and the host.
//! - [`http`]: the one HTTP client, built from the configuration; [`tls`]: the one rustls client
//!   configuration.
//! - [`config`]: the agent's local configuration, from file, environment and flags, validated once.
//! - [`protocol`]: the wire messages, shared by agent and server so they cannot drift.
//! - [`backoff`], [`logbuf`], [`notify`], [`util`]: jittered backoff, the in-memory log buffer
//!   behind `agent:logs`, systemd notifications, small helpers.
//! - [`platform`]: what differs between operating systems (file swap, signals, control socket,
//!   processes, free space).
//! - [`state_dir`]: the names of the files in the agent's state directory.
//! - [`build_info`]: version, target and commit of this build.

// Unsafe code is denied crate-wide (Cargo.toml `[lints]`); two modules allow it in a few documented
// functions: `platform::windows::ffi` (Win32 calls) and `upgrade::mapped` (memory maps).

pub mod agent;
pub mod backoff;
pub mod build_info;
pub mod config;
pub mod control;
pub mod host;
pub mod http;
pub mod logbuf;
pub mod notify;
pub mod platform;
pub mod protocol;
pub mod publish;
#[cfg(feature = "server")]
pub mod server;
pub mod state_dir;
pub mod supervisor;
pub mod tls;
pub mod upgrade;
pub mod util;
