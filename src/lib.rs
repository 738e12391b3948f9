//! edge-agent: a self-upgrading agent daemon and the control server that drives it, speaking the
//! Medplum agent protocol.
//!
//! # Layout
//! - [`notify`]: systemd readiness, status and watchdog.
//! - [`protocol`]: the wire messages, shared by agent and server so they cannot drift.
//! - [`config`]: the agent's local configuration, from file, environment and flags, validated once.
//! - [`agent`]: the daemon: session (connect, handshake, heartbeats, reconnect) and request handlers.
//! - [`control`]: `agent upgrade` on the host, through the daemon's control socket or alone.
//! - [`upgrade`]: the self-upgrade pipeline, one module per step.
//! - [`supervisor`]: `agent run`'s parent process: restarts into upgrades, rolls bad ones back.
//! - [`publish`]: `agent release`: signing keys and the release directory layout.
//! - [`server`]: the control server: OAuth tokens, the agents' WebSocket, FHIR REST and operations,
//!   the operator's web page and `/metrics`.
//! - [`backoff`]: jittered exponential backoff.
//! - [`local`]: the operator's commands on the host: status, check-config, rollback.
//! - [`logbuf`]: the bounded in-memory log buffer behind `agent:logs`.
//! - [`tls`]: the one rustls client configuration.
//! - [`util`]: random ids, ISO-8601 instants, durable atomic file writes.

#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod config;
pub mod control;
pub mod local;
pub mod logbuf;
pub mod notify;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod supervisor;
pub mod tls;
pub mod upgrade;
pub mod util;
