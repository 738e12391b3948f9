//! Real parts for the end-to-end tests: the `agent` and `agent-server` binaries as processes
//! ([`bins`], [`process`], [`server`], [`home`]), an admin HTTP client, scripted fakes ([`fake`],
//! [`releases`]), real services ([`services`], [`cluster`]), a real browser ([`browser`]), Wine
//! ([`wine`]), and polling with a bound instead of sleeps.

#![allow(dead_code)]

pub mod bins;
pub mod browser;
pub mod cluster;
pub mod fake;
pub mod handle;
pub mod home;
pub mod medplum;
pub mod process;
pub mod releases;
pub mod rig;
pub mod server;
pub mod services;
pub mod sim;
pub mod tls;
pub mod wine;

pub use bins::{agent_bin, next_build, next_version, scratch_dir, server_bin, WORKSPACE};
pub use home::{AgentHome, FAST};
pub use process::{children, eventually, signal, spawn_retrying, unread_from, Proc};
pub use server::{spawn_server, toml_value, Server};
