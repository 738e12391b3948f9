//! Real parts for the end-to-end tests: the `agent` and `agent-server` binaries as processes
//! ([`bins`], [`process`], [`server`], [`home`]), an admin HTTP client, scripted fakes ([`fake`],
//! [`releases`], signed release directories included), real services ([`services`],
//! [`cluster`]), a throwaway root Debian packages install into ([`debroot`]), a real HTTP proxy ([`proxy`]) in front of a network namespace that can reach
//! nothing else ([`netns`]), a real browser ([`browser`]), Wine ([`wine`]), QEMU ([`qemu`]),
//! attacks on the server's limits and what they watch ([`attack`]), and polling with a bound
//! instead of sleeps.

#![allow(dead_code)]

pub mod attack;
pub mod bins;
pub mod browser;
pub mod cluster;
pub mod debroot;
pub mod fake;
pub mod faults;
pub mod handle;
pub mod home;
pub mod medplum;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod qemu;
pub mod releases;
pub mod rig;
pub mod server;
pub mod services;
pub mod sim;
pub mod tls;
pub mod wine;

pub use bins::{agent_bin, next_build, next_version, release_server_bin, scratch_dir, server_bin, WORKSPACE};
pub use home::{AgentHome, FAST};
pub use process::{children, eventually, signal, spawn_retrying, unread_from, Proc};
pub use server::{spawn_server, toml_value, Server};
