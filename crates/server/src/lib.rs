//! The control server of edge-agent: Medplum's agent protocol on `/ws/agent`, FHIR REST for
//! `Agent` with `$upgrade`, `$status` and the other operations, staged fleet rollouts, an
//! operator's web page and `/metrics`, on one node (SQLite) or several (PostgreSQL and Redis).
//! The `agent-server` binary (`main.rs`) parses flags and calls [`serve::run`] or a [`cli`]
//! command.
//!
//! # Layout
//! Imports point down this list, never up; of the workspace, the server imports
//! `edge-agent-release`, `edge-agent-wire` and `edge-agent-base`, and never the agent.
//! - [`cli`]: `agent-server client|agent|rollout|policy|audit`: administration on the store
//!   (clients and agents made, listed, taken back; the audit trail exported), and a client of the
//!   rollout and update policy APIs.
//! - [`serve`]: the server put together: every group's routes and state, background loops,
//!   listeners.
//! - [`operator`]: what the operator sees: the web page and `/metrics`.
//! - [`api`]: the REST API: routing, search, operations, outcomes, who may call (one table of
//!   rules per endpoint, its guard), the audit trail recorded and searched.
//! - [`fleet`]: staged rollouts, the update policy that drives them, upgrade results, the store's
//!   leases, the audit trail's retention.
//! - [`conn`]: the agents' sockets, the hub of live connections and callbacks, the bus between
//!   nodes, revocations applied on every node.
//! - [`identity`]: tokens, callers, the OAuth token endpoint, the page's sessions.
//! - [`config`]: the flags, validated once.
//! - [`limits`]: what keeps a peer without credentials from taking the server down: the accept
//!   loop and its caps, the header, body and idle deadlines, the throttles of the token endpoint
//!   and the sign-in.
//! - [`proxy`]: the client's address and the server's public origin, from forwarded headers only
//!   when a trusted proxy sent them.
//! - [`metrics`]: the counters `/metrics` shows, every label from a fixed set; [`releases`]: a
//!   release directory served at `/releases/`; [`params`]: operation parameters read one by one;
//!   [`quiet`]: log lines that would repeat, once per agent per period.
//! - [`store`]: what the server remembers, SQLite or PostgreSQL, every method written once.
//! - [`model`]: the records every layer reads, and the pure rules over them (the rollout's and
//!   its members' transitions, the maintenance window, the update policy and its retry schedule).

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod conn;
pub mod fleet;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod params;
pub mod proxy;
pub mod quiet;
pub mod releases;
pub mod serve;
pub mod store;
